"""SwiGLU tail that recomputes its product in the backward: Triton elementwise kernels against float64 PyTorch.

Without CUDA the kernels run on CPU tensors under TRITON_INTERPRET=1 (set by tests/conftest.py)."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (see conftest.py)

from kernels.mlp import naive_swiglu_linear, swiglu_linear  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 3e-3)])
@pytest.mark.parametrize("shape", [(3, 7, 40), (1100, 24)])  # the second spans two elementwise blocks
def test_swiglu_linear_matches_float64(dtype, tol, shape):
    g_ = torch.Generator().manual_seed(shape[0])
    g = torch.randn(*shape, generator=g_).to(DEVICE, dtype)
    u = torch.randn(*shape, generator=g_).to(DEVICE, dtype)
    w = (torch.randn(16, shape[-1], generator=g_) * 0.2).to(DEVICE)  # float32 master weight
    dy = torch.randn(*shape[:-1], 16, generator=g_).to(DEVICE, dtype)
    ins = [g.clone().requires_grad_(), u.clone().requires_grad_(), w.clone().requires_grad_()]
    refs = [t.detach().double().requires_grad_() for t in ins]
    y = swiglu_linear(*ins)
    y.backward(dy)
    r = naive_swiglu_linear(*refs)
    r.backward(dy.double())
    assert y.dtype == dtype and ins[2].grad.dtype == torch.float32
    for name, a, b in (("y", y, r), ("dg", ins[0].grad, refs[0].grad), ("du", ins[1].grad, refs[1].grad),
                       ("dw", ins[2].grad, refs[2].grad)):
        err = rel_err(a, b)
        assert err < tol, f"{name}: rel err {err:.2e} >= {tol:.0e}"


def test_swiglu_linear_saves_only_its_inputs():
    """The graph keeps g, u and the weight: no (N, I) intermediate beyond the two inputs."""
    g = torch.randn(4, 64, device=DEVICE, requires_grad=True)
    u = torch.randn(4, 64, device=DEVICE, requires_grad=True)
    w = torch.randn(8, 64, device=DEVICE, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        swiglu_linear(g, u, w)
    assert len(saved) == 3 and {t.data_ptr() for t in saved} == {g.data_ptr(), u.data_ptr(), w.data_ptr()}


@pytest.mark.parametrize("bad, match", [
    (dict(u=torch.randn(4, 9)), "one shape"),
    (dict(weight=torch.randn(8, 9)), "weight must be"),
    (dict(u=torch.randn(4, 8).half()), "dtype"),
])
def test_swiglu_linear_bad_input(bad, match):
    args = dict(g=torch.randn(4, 8), u=torch.randn(4, 8), weight=torch.randn(3, 8))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        swiglu_linear(**{k: v.to(DEVICE) for k, v in args.items()})
