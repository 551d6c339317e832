"""conv_chunk_delta_rule (fused short convs + chunk delta rule, conv outputs recomputed in the backward) against the
float64 PyTorch forms of both, under TRITON_INTERPRET=1 on CPU."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (see conftest.py)

from kernels import naive_recurrent_delta_rule  # noqa: E402
from kernels.conv import conv_chunk_delta_rule, naive_short_conv  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("T, cu", [(45, None), (50, [0, 7, 8, 50])])
def test_conv_chunk_delta_rule_matches_float64(T, cu):
    g = torch.Generator().manual_seed(T)
    H, K = 2, 16
    B = 1 if cu else 2
    qkv = torch.randn(B, T, 3 * H * K, generator=g).to(DEVICE)
    beta = torch.rand(B, T, H, generator=g).to(DEVICE)
    ws = [(torch.randn(H * K, 1, 4, generator=g) * 0.5).to(DEVICE) for _ in range(3)]
    do = torch.randn(B, T, H, K, generator=g).to(DEVICE)
    cu_t = None if cu is None else torch.tensor(cu, device=DEVICE)
    acts, nds = ["silu", "silu", "silu"], [K, K, None]

    ins = [qkv.clone().requires_grad_(), beta.clone().requires_grad_()] + [w.clone().requires_grad_() for w in ws]
    o = conv_chunk_delta_rule(ins[0], ins[1], ins[2:], acts, nds, H, cu_t, chunk_size=16)
    o.backward(do)

    refs = [t.detach().double().requires_grad_() for t in ins]
    parts = [naive_short_conv(x, w[:, 0], a, nd, cu_t)[0].view(B, T, H, K)
             for x, w, a, nd in zip(refs[0].split(H * K, -1), refs[2:], acts, nds)]
    r, _ = naive_recurrent_delta_rule(*parts, refs[1], cu_seqlens=cu_t)
    r.backward(do.double())
    assert rel_err(o, r) < 2e-4
    for i, (a, b) in enumerate(zip(ins, refs)):
        assert rel_err(a.grad, b.grad) < 5e-4, f"input {i}"


def test_conv_chunk_delta_rule_beta_logits_in_qkv():
    """beta=None: the last H columns of qkv are beta's logits (one fused projection for q, k, v and beta)."""
    g = torch.Generator().manual_seed(3)
    B, T, H, K = 2, 37, 2, 16
    qkvb = torch.randn(B, T, 3 * H * K + H, generator=g).to(DEVICE)
    ws = [(torch.randn(H * K, 4, generator=g) * 0.5).to(DEVICE) for _ in range(3)]
    do = torch.randn(B, T, H, K, generator=g).to(DEVICE)
    acts, nds = ["silu", "silu", "silu"], [K, K, None]
    x1 = qkvb.clone().requires_grad_()
    o = conv_chunk_delta_rule(x1, None, ws, acts, nds, H, chunk_size=16)
    o.backward(do)
    x2 = qkvb.double().requires_grad_()
    parts = [naive_short_conv(x, w.double(), a, nd)[0].view(B, T, H, K)
             for x, w, a, nd in zip(x2[..., :3 * H * K].split(H * K, -1), ws, acts, nds)]
    r, _ = naive_recurrent_delta_rule(*parts, torch.sigmoid(x2[..., 3 * H * K:]))
    r.backward(do.double())
    assert rel_err(o, r) < 2e-4 and rel_err(x1.grad, x2.grad) < 5e-4
    assert rel_err(x1.grad[..., 3 * H * K:], x2.grad[..., 3 * H * K:]) < 5e-4  # the beta columns alone


def test_conv_chunk_delta_rule_padding_columns_are_ignored():
    """beta=None with padding columns after beta's logits (the layer pads the row to a multiple of 16): the same
    output and gradients as without them, and a zero gradient on the padding."""
    g = torch.Generator().manual_seed(4)
    B, T, H, K, P = 1, 21, 2, 16, 6
    qkvb = torch.randn(B, T, 3 * H * K + H, generator=g).to(DEVICE)
    ws = [(torch.randn(H * K, 4, generator=g) * 0.5).to(DEVICE) for _ in range(3)]
    do = torch.randn(B, T, H, K, generator=g).to(DEVICE)
    acts, nds = ["silu", "silu", "silu"], [K, K, None]
    x1 = qkvb.clone().requires_grad_()
    o1 = conv_chunk_delta_rule(x1, None, ws, acts, nds, H, chunk_size=16)
    o1.backward(do)
    x2 = torch.cat([qkvb, torch.randn(B, T, P, generator=g).to(DEVICE)], -1).requires_grad_()
    o2 = conv_chunk_delta_rule(x2, None, ws, acts, nds, H, chunk_size=16)
    o2.backward(do)
    assert torch.equal(o1, o2) and torch.equal(x1.grad, x2.grad[..., :-P])
    assert torch.equal(x2.grad[..., -P:], torch.zeros_like(x2.grad[..., -P:]))
    with pytest.raises(ValueError, match="beta logits"):
        conv_chunk_delta_rule(qkvb[..., :3 * H * K + 1], None, ws, acts, nds, H, chunk_size=16)


def test_conv_chunk_delta_rule_bad_input():
    qkv = torch.randn(1, 8, 96, device=DEVICE)
    ws = [torch.randn(32, 4, device=DEVICE) for _ in range(3)]
    with pytest.raises(ValueError, match="H=3"):
        conv_chunk_delta_rule(qkv, torch.rand(1, 8, 3, device=DEVICE), ws, ["silu"] * 3, [None] * 3, 3)
    with pytest.raises(ValueError, match="three conv weights"):
        conv_chunk_delta_rule(qkv, torch.rand(1, 8, 2, device=DEVICE), ws[:2], ["silu"] * 2, [None] * 2, 2)
    with pytest.raises(ValueError, match="beta"):
        conv_chunk_delta_rule(qkv, torch.rand(1, 8, 3, device=DEVICE), ws, ["silu"] * 3, [16, 16, None], 2)
