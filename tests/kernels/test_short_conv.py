"""Fused short convolution (conv + activation + per-head L2 norm): the Triton kernels against the float64 PyTorch form.

Without CUDA the kernels run on CPU tensors under TRITON_INTERPRET=1 (set by tests/conftest.py)."""
from __future__ import annotations

import importlib
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (see conftest.py)

from kernels.conv import naive_short_conv, short_conv, short_conv_multi  # noqa: E402

short_conv_module = importlib.import_module("kernels.conv.short_conv")  # the package exports a function of that name

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _check(B, T, D, W, act, norm_dim, dtype, cu=None, seed=0, tol=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g).to(DEVICE, dtype)
    w = (torch.randn(D, 1, W, generator=g) * 0.5).to(DEVICE)
    do = torch.randn(B, T, D, generator=g).to(DEVICE, dtype)
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32, device=DEVICE)
    x1, w1 = x.clone().requires_grad_(), w.clone().requires_grad_()
    o = short_conv(x1, w1, act, norm_dim, cu_t)
    o.backward(do)
    x2, w2 = x.double().requires_grad_(), w.double().requires_grad_()
    ref, _ = naive_short_conv(x2, w2[:, 0], act, norm_dim, cu_t)
    ref.backward(do.double())
    tol = tol or (2e-6 if dtype == torch.float32 else 2e-3)
    assert o.dtype == dtype and o.shape == (B, T, D)
    for name, a, b in (("o", o, ref), ("dx", x1.grad, x2.grad), ("dw", w1.grad, w2.grad)):
        err = rel_err(a, b)
        assert err < tol, f"{name}: rel err {err:.2e} >= {tol:.0e}"


@pytest.mark.parametrize("act", ["silu", "identity", "relu", "elu"])
@pytest.mark.parametrize("norm_dim", [None, 16])
def test_short_conv_matches_float64(act, norm_dim):
    _check(2, 37, 48, 4, act, norm_dim, torch.float32, seed=hash((act, norm_dim)) % 1000)


@pytest.mark.parametrize("T", [1, 3, 70])
def test_short_conv_odd_lengths_and_kernel_sizes(T):
    _check(1, T, 32, 4, "silu", 32, torch.float32, seed=T)
    _check(2, T, 24, 3, "silu", None, torch.float32, seed=T + 1)


@pytest.mark.parametrize("W", [1, 2, 8])
def test_short_conv_kernel_sizes_up_to_max(W, monkeypatch):
    # the dx kernel keeps one weight-gradient sum per tap, MAX_W of them, over a span of token blocks: 4 blocks of
    # 16 here (at these sizes the launch rule would pick 1), so T = 150 is three spans, the last one partial
    monkeypatch.setattr(short_conv_module, "_dx_span", lambda *a: 4)
    _check(2, 150, 32, W, "silu", 16, torch.float32, seed=10 + W)


def test_short_conv_non_power_of_two_head():
    _check(2, 45, 60, 4, "silu", 20, torch.float32, seed=5)  # G = 20 channels inside a 32-wide block


def test_short_conv_float16():
    _check(2, 41, 64, 4, "silu", 32, torch.float16, seed=6)
    _check(2, 41, 64, 4, "silu", None, torch.float16, seed=7)


@pytest.mark.parametrize("norm_dim", [None, 16])
def test_short_conv_varlen(norm_dim):
    cu = [0, 5, 5, 6, 40, 77]  # an empty and a length-1 sequence, boundaries off any block edge
    _check(1, 77, 32, 4, "silu", norm_dim, torch.float32, cu=cu, seed=8)


def test_short_conv_varlen_equals_separate_sequences():
    torch.manual_seed(9)
    lens = [7, 33, 2]
    x = torch.randn(1, sum(lens), 32, device=DEVICE)
    w = torch.randn(32, 4, device=DEVICE)
    cu = torch.tensor([0, 7, 40, 42], device=DEVICE)
    packed = short_conv(x, w, "silu", 16, cu)
    parts = [short_conv(p, w, "silu", 16) for p in x.split(lens, 1)]
    assert rel_err(packed, torch.cat(parts, 1)) < 1e-6


def test_short_conv_zero_head_gets_eps_gradient():
    """A head whose activations are all 0 (norm below eps) passes do / eps back, as F.normalize does."""
    x = torch.zeros(1, 5, 16, device=DEVICE)
    _check_x = x.clone().requires_grad_()
    w = torch.randn(16, 4, device=DEVICE)
    o = short_conv(_check_x, w, "silu", 16)
    do = torch.randn_like(o)
    o.backward(do)
    x2 = x.double().requires_grad_()
    ref, _ = naive_short_conv(x2, w.double(), "silu", 16)
    ref.backward(do.double())
    assert torch.equal(o, torch.zeros_like(o))
    assert rel_err(_check_x.grad, x2.grad) < 1e-6


@pytest.mark.parametrize("cu", [None, [0, 9, 10, 33]])
def test_short_conv_multi_equals_parts(cu):
    """Three ranges of one fused projection (q, k: silu + norm; v: silu) = three separate float64 convolutions, for
    the outputs, the single input gradient and every weight gradient."""
    g = torch.Generator().manual_seed(10)
    B, T = (1, 33) if cu else (2, 33)
    x = torch.randn(B, T, 32 + 32 + 48, generator=g).to(DEVICE)
    ws = [torch.randn(d, 1, 4, generator=g).to(DEVICE) for d in (32, 32, 48)]
    dos = [torch.randn(B, T, d, generator=g).to(DEVICE) for d in (32, 32, 48)]
    cu_t = None if cu is None else torch.tensor(cu, device=DEVICE)
    acts, nds = ["silu", "silu", "silu"], [16, 16, None]
    x1, ws1 = x.clone().requires_grad_(), [w.clone().requires_grad_() for w in ws]
    outs = short_conv_multi(x1, ws1, acts, nds, cu_t)
    sum((o * d).sum() for o, d in zip(outs, dos)).backward()
    x2, ws2 = x.double().requires_grad_(), [w.double().requires_grad_() for w in ws]
    refs = [naive_short_conv(xp, w[:, 0], a, nd, cu_t)[0] for xp, w, a, nd in
            zip(x2.split([32, 32, 48], -1), ws2, acts, nds)]
    sum((r * d.double()).sum() for r, d in zip(refs, dos)).backward()
    assert all(o.is_contiguous() for o in outs)
    for o, r in zip(outs, refs):
        assert rel_err(o, r) < 2e-6
    assert rel_err(x1.grad, x2.grad) < 2e-6
    for a, b in zip(ws1, ws2):
        assert rel_err(a.grad, b.grad) < 2e-6


@pytest.mark.parametrize("bad, match", [
    (dict(x=torch.randn(2, 5)), "x must be"),
    (dict(weight=torch.randn(7, 4)), "weight must be"),
    (dict(activation="gelu"), "activation"),
    (dict(norm_dim=5), "norm_dim"),
    (dict(weight=torch.randn(16, 9)), "kernel size 9 > 8"),
    (dict(cu_seqlens=torch.tensor([0, 3, 2, 8])), "cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([0, 3, 9])), "cu_seqlens"),
])
def test_short_conv_bad_input(bad, match):
    args = dict(x=torch.randn(1, 8, 16), weight=torch.randn(16, 4), activation="silu", norm_dim=None, cu_seqlens=None)
    args.update(bad)
    args = {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    with pytest.raises(ValueError, match=match):
        short_conv(**args)


def test_dx_span_keeps_two_programs_per_sm():
    # the 340M layer's part (1024 channels: 8 channel blocks); sm_count is 132 on CPU tensors, an H100/H200's
    x = torch.empty(1, 16384, 1024)
    assert short_conv_module._dx_span(x, 16384, 16, 8) == 16  # 64 spans x 8 blocks = 512 programs
    assert short_conv_module._dx_span(x[:, :2048], 2048, 16, 8) == 2  # 64 x 8 = 512 >= 264 only at span 2
    assert short_conv_module._dx_span(x[:, :16], 16, 16, 8) == 1
