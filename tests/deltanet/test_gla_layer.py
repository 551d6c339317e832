"""GLA layer on CPU: chunk == recurrent, cached state, Triton path == PyTorch path, the paper's gate and shapes."""
from __future__ import annotations

import pytest
import torch

from deltanet import DeltaNetConfig
from deltanet.layers import GatedLinearAttention


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def tiny(**kw) -> DeltaNetConfig:
    base = dict(vocab_size=97, hidden_size=64, num_layers=2, num_heads=2, chunk_size=16, backend="torch",
                family="gla")
    return DeltaNetConfig(**{**base, **kw})


def test_chunk_equals_recurrent_fp32():
    torch.manual_seed(3)
    layer = GatedLinearAttention(tiny())
    x = torch.randn(2, 37, 64, requires_grad=True)
    y_c, _ = layer(x, mode="chunk")
    y_r, _ = layer(x, mode="recurrent")
    assert rel_err(y_c, y_r) < 1e-5
    g = torch.randn_like(y_c)
    (gc,) = torch.autograd.grad(y_c, x, g)
    (gr,) = torch.autograd.grad(y_r, x, g)
    assert rel_err(gc, gr) < 1e-4


def test_state_carries_across_calls():
    torch.manual_seed(1)
    layer = GatedLinearAttention(tiny()).eval()
    x = torch.randn(2, 45, 64)
    full, _ = layer(x, mode="chunk")
    y1, s = layer(x[:, :30], use_cache=True, mode="chunk")
    y2, _ = layer(x[:, 30:], state=s, use_cache=True, mode="recurrent")
    assert s["recurrent_state"].shape == (2, 2, 16, 32)  # (B, H, K = head_dim / 2, V = head_dim)
    assert rel_err(torch.cat([y1, y2], 1), full) < 1e-5


def test_paper_shapes_and_gate():
    layer = GatedLinearAttention(tiny(hidden_size=128, num_heads=4))
    assert layer.q_proj.weight.shape == (64, 128) and layer.k_proj.weight.shape == (64, 128)  # expand_k 0.5
    assert layer.v_proj.weight.shape == (128, 128)
    assert [m.weight.shape for m in layer.gk_proj] == [(16, 128), (64, 16)]  # low rank 16
    x = torch.randn(1, 5, 128)
    g = torch.nn.functional.logsigmoid(layer.gk_proj(x)) / 16
    assert bool((g <= 0).all()) and bool((g >= -torch.log1p(torch.exp(-layer.gk_proj(x))) / 16 - 1e-6).all())


@pytest.mark.parametrize("num_heads", [2, 8])  # key dims 16, and 4 (head dim 8, expand_k 0.5): zero-padded to 16
def test_triton_backend_matches_torch_backend(triton_runnable, num_heads):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(6)
    ref = GatedLinearAttention(tiny(backend="torch", num_heads=num_heads)).to(device)
    tri = GatedLinearAttention(tiny(backend="triton", num_heads=num_heads)).to(device)
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(2, 21, 64, device=device, requires_grad=True)
    a, sa = ref(x, mode="chunk", use_cache=True)
    b, sb = tri(x, mode="chunk", use_cache=True)
    g = torch.randn_like(a)
    ga = torch.autograd.grad(a, [x, *ref.parameters()], g)
    gb = torch.autograd.grad(b, [x, *tri.parameters()], g)
    assert rel_err(b, a) < 1e-5 and rel_err(sb["recurrent_state"], sa["recurrent_state"]) < 1e-5
    assert max(rel_err(u, w) for u, w in zip(gb, ga)) < 1e-4
    with torch.no_grad():
        a, _ = ref(x, mode="recurrent")
        b, _ = tri(x, mode="recurrent")
    assert rel_err(b, a) < 1e-5
    cu = torch.tensor([0, 5, 6, 21], device=device)
    a, _ = ref(x[:1], cu_seqlens=cu, mode="chunk")
    b, _ = tri(x[:1], cu_seqlens=cu, mode="chunk")
    assert rel_err(b, a) < 1e-5
