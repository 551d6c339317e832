"""RetNet retention layer on CPU: chunk == recurrent, cached state, Triton path == PyTorch path, the fixed decays."""
from __future__ import annotations

import math

import torch

from deltanet import DeltaNetConfig
from deltanet.layers import MultiScaleRetention


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def tiny(**kw) -> DeltaNetConfig:
    base = dict(vocab_size=97, hidden_size=64, num_layers=2, num_heads=2, chunk_size=16, backend="torch",
                family="retnet")
    return DeltaNetConfig(**{**base, **kw})


def test_chunk_equals_recurrent_fp32():
    torch.manual_seed(3)
    layer = MultiScaleRetention(tiny())
    x = torch.randn(2, 37, 64, requires_grad=True)
    y_c, _ = layer(x, mode="chunk")
    y_r, _ = layer(x, mode="recurrent")
    assert rel_err(y_c, y_r) < 1e-5
    g = torch.randn_like(y_c)
    (gc,) = torch.autograd.grad(y_c, x, g)
    (gr,) = torch.autograd.grad(y_r, x, g)
    assert rel_err(gc, gr) < 1e-4


def test_state_and_positions_carry_across_calls():
    torch.manual_seed(1)
    layer = MultiScaleRetention(tiny()).eval()
    x = torch.randn(2, 45, 64)
    full, _ = layer(x, mode="chunk")
    y1, s = layer(x[:, :30], use_cache=True, mode="chunk")
    y2, _ = layer(x[:, 30:], state=s, use_cache=True, offset=30, mode="recurrent")
    assert s["recurrent_state"].shape == (2, 2, 32, 32)
    assert rel_err(torch.cat([y1, y2], 1), full) < 1e-5


def test_multi_scale_decays():
    layer = MultiScaleRetention(tiny(num_heads=4, hidden_size=128))
    assert torch.allclose(layer.log_gamma.exp(), torch.tensor([1 - 2.0 ** (-5 - h) for h in range(4)]))
    assert "log_gamma" not in layer.state_dict()  # fixed, not a parameter nor a checkpoint entry
    assert math.isclose(layer.log_gamma[0].exp().item(), 31 / 32, rel_tol=1e-6)


def test_triton_backend_matches_torch_backend(triton_runnable):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(6)
    ref = MultiScaleRetention(tiny(backend="torch")).to(device)
    tri = MultiScaleRetention(tiny(backend="triton")).to(device)
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
