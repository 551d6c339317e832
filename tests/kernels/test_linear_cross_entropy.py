"""Linear cross-entropy with its gradient formed in the forward: the Triton path against float64 PyTorch.

Without CUDA the kernel runs on CPU tensors under TRITON_INTERPRET=1 (set by tests/conftest.py)."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (see conftest.py)

from kernels.cross_entropy import linear_cross_entropy, naive_linear_cross_entropy  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 3e-3)])
@pytest.mark.parametrize("N, V, chunk", [(37, 50, 16), (20, 300, 64), (5, 7, 1)])  # V over several BV blocks: 300
def test_linear_cross_entropy_matches_float64(dtype, tol, N, V, chunk):
    g = torch.Generator().manual_seed(N * V)
    h = torch.randn(N, 24, generator=g).to(DEVICE, dtype)
    w = (torch.randn(V, 24, generator=g) * 0.3).to(DEVICE)
    y = torch.randint(0, V, (N,), generator=g)
    y[::4] = -100  # ignored rows
    y = y.to(DEVICE)
    h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = linear_cross_entropy(h1, w1, y, chunk_size=chunk)
    (loss * 1.7).backward()
    h2, w2 = h.double().requires_grad_(), w.double().requires_grad_()
    ref = naive_linear_cross_entropy(h2, w2, y)
    (ref * 1.7).backward()
    assert loss.dtype == torch.float32 and w1.grad.dtype == torch.float32 and h1.grad.dtype == dtype
    assert abs(loss.item() - ref.item()) < tol * ref.item()
    assert rel_err(h1.grad, h2.grad) < tol and rel_err(w1.grad, w2.grad) < tol


def test_linear_cross_entropy_block_smaller_than_vocab(monkeypatch):
    """The online max / sum of exp across vocabulary blocks (BV < V) gives the one-block result."""
    import kernels.cross_entropy.fused_linear as mod
    torch.manual_seed(1)
    h = torch.randn(9, 16, device=DEVICE) * 3
    w = torch.randn(1000, 16, device=DEVICE)
    y = torch.randint(0, 1000, (9,), device=DEVICE)
    ref = naive_linear_cross_entropy(h.double(), w.double(), y)
    assert abs(linear_cross_entropy(h, w, y).item() - ref.item()) < 1e-5 * ref.item()  # BV = 1024 > V
    monkeypatch.setattr(mod, "MAX_BV", 64)
    assert abs(linear_cross_entropy(h, w, y).item() - ref.item()) < 1e-5 * ref.item()  # BV = 64: 16 blocks


def test_linear_cross_entropy_all_ignored_and_no_grad():
    h = torch.randn(4, 8, device=DEVICE, requires_grad=True)
    w = torch.randn(10, 8, device=DEVICE, requires_grad=True)
    loss = linear_cross_entropy(h, w, torch.full((4,), -100, device=DEVICE))
    loss.backward()
    assert loss.item() == 0.0 and h.grad.abs().max() == 0 and w.grad.abs().max() == 0
    with torch.no_grad():
        y = torch.tensor([1, 2, 3, 4], device=DEVICE)
        ref = naive_linear_cross_entropy(h.double(), w.double(), y)
        assert abs(linear_cross_entropy(h, w, y).item() - ref.item()) < 1e-5 * ref.item()


@pytest.mark.parametrize("bad, match", [
    (dict(h=torch.randn(2, 3, 8)), "h must be"),
    (dict(weight=torch.randn(10, 9)), "weight must be"),
    (dict(labels=torch.zeros(4, dtype=torch.int32)), "labels must be"),
    (dict(chunk_size=0), "chunk_size"),
])
def test_linear_cross_entropy_bad_input(bad, match):
    args = dict(h=torch.randn(4, 8), weight=torch.randn(10, 8), labels=torch.zeros(4, dtype=torch.long),
                chunk_size=2)
    args.update(bad)
    args = {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    with pytest.raises(ValueError, match=match):
        linear_cross_entropy(**args)
