"""Fused RMSNorm (with residual add, with output gate): the Triton kernels against the float64 PyTorch form.

Without CUDA the kernels run on CPU tensors under TRITON_INTERPRET=1 (set by tests/conftest.py)."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (see conftest.py)

from kernels.norm import naive_rms_norm, rms_norm  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _check(shape, mode, dtype, rdtype=None, seed=0, tol=None):
    """mode: 'plain' | 'residual' | 'gate'. Compares y (and s), dx, dw (and dresidual / dgate) with float64."""
    g = torch.Generator().manual_seed(seed)
    C = shape[-1]
    x = torch.randn(*shape, generator=g).to(DEVICE, dtype)
    w = (1 + 0.3 * torch.randn(C, generator=g)).to(DEVICE)
    extra = torch.randn(*shape, generator=g).to(DEVICE, rdtype or dtype)
    dy = torch.randn(*shape, generator=g).to(DEVICE)
    ds = torch.randn(*shape, generator=g).to(DEVICE)

    def run(xx, ww, ee):
        k = {} if mode == "plain" else {mode: ee}
        return (naive_rms_norm if xx.dtype == torch.float64 else rms_norm)(xx, ww, 1e-6, **k)

    ins = [x.clone().requires_grad_(), w.clone().requires_grad_(), extra.clone().requires_grad_()]
    ref_ins = [t.detach().double().requires_grad_() for t in ins]
    outs, refs = run(*ins), run(*ref_ins)
    if mode == "residual":
        (outs[0].float() * dy + outs[1].float() * ds).sum().backward()
        (refs[0] * dy.double() + refs[1] * ds.double()).sum().backward()
        pairs = [("y", outs[0], refs[0]), ("s", outs[1], refs[1])]
        assert outs[1].dtype == torch.promote_types(x.dtype, extra.dtype)
    else:
        (outs.float() * dy).sum().backward()
        (refs * dy.double()).sum().backward()
        pairs = [("y", outs, refs)]
        assert outs.dtype == dtype
    pairs += [("dx", ins[0].grad, ref_ins[0].grad), ("dw", ins[1].grad, ref_ins[1].grad)]
    if mode != "plain":
        pairs.append(("d" + mode, ins[2].grad, ref_ins[2].grad))
    tol = tol or (1e-5 if dtype == torch.float32 and (rdtype or dtype) == torch.float32 else 3e-3)
    for name, a, b in pairs:
        err = rel_err(a, b)
        assert err < tol, f"{name}: rel err {err:.2e} >= {tol:.0e}"


@pytest.mark.parametrize("mode", ["plain", "residual", "gate"])
@pytest.mark.parametrize("shape", [(3, 7, 64), (5, 48), (2, 11, 4, 32)])
def test_rms_norm_matches_float64(mode, shape):
    _check(shape, mode, torch.float32, seed=len(shape) * 10 + ["plain", "residual", "gate"].index(mode))


@pytest.mark.parametrize("mode", ["plain", "residual", "gate"])
def test_rms_norm_float16(mode):
    _check((4, 9, 96), mode, torch.float16, seed=3)


def test_rms_norm_residual_stream_float32_with_half_branch():
    """The model's case under autocast: float32 residual stream plus a half-precision branch output."""
    _check((2, 13, 64), "residual", torch.float32, rdtype=torch.float16, seed=4)


def test_rms_norm_out_dtype_is_the_cast_of_the_float32_output():
    """out_dtype=float16 gives exactly the float32 result cast to float16 (what autocast's next matmul would see)."""
    torch.manual_seed(6)
    x, r = torch.randn(6, 64, device=DEVICE), torch.randn(6, 64, device=DEVICE)
    w = torch.randn(64, device=DEVICE)
    y32, s32 = rms_norm(x, w, residual=r)
    y16, s16 = rms_norm(x, w, residual=r, out_dtype=torch.float16)
    assert y16.dtype == torch.float16 and s16.dtype == torch.float32
    assert torch.equal(y16, y32.half()) and torch.equal(s16, s32)


def test_rms_norm_many_rows_walk():
    """More row blocks than backward programs: each program sums dw over several blocks."""
    _check((700, 32), "plain", torch.float32, seed=5)


@pytest.mark.parametrize("bad, match", [
    (dict(weight=torch.ones(5)), "weight must be"),
    (dict(residual=torch.randn(3, 8)), "residual must match"),
    (dict(gate=torch.randn(4, 9)), "gate must match"),
    (dict(x=torch.randn(4, 8).double()), "dtype"),
    (dict(residual=torch.randn(4, 8), gate=torch.randn(4, 8)), "together"),
])
def test_rms_norm_bad_input(bad, match):
    args = dict(x=torch.randn(4, 8), weight=torch.ones(8), eps=1e-6, residual=None, gate=None)
    args.update(bad)
    args = {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    with pytest.raises(ValueError, match=match):
        rms_norm(**args)
