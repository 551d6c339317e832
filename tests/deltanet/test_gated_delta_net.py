"""Gated DeltaNet layer on CPU: chunk == recurrent, cached state, Triton path == PyTorch path, Mamba2 decay init."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deltanet import DeltaNetConfig, DeltaNetForCausalLM
from deltanet.layers import Attention, GatedDeltaNet


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def tiny(**kw) -> DeltaNetConfig:
    base = dict(vocab_size=97, hidden_size=64, num_layers=2, num_heads=2, chunk_size=16, backend="torch",
                family="gated_deltanet")
    return DeltaNetConfig(**{**base, **kw})


@pytest.mark.parametrize("T", [1, 37, 80])
def test_chunk_equals_recurrent_fp32(T):
    torch.manual_seed(T)
    layer = GatedDeltaNet(tiny())
    x = torch.randn(2, T, 64, requires_grad=True)
    y_c, _ = layer(x, mode="chunk")
    y_r, _ = layer(x, mode="recurrent")
    assert rel_err(y_c, y_r) < 1e-5
    g = torch.randn_like(y_c)
    params = [x, layer.A_log, layer.dt_bias, layer.a_proj.weight]
    gc = torch.autograd.grad(y_c, params, g)
    gr = torch.autograd.grad(y_r, params, g)
    assert max(rel_err(a, b) for a, b in zip(gc, gr)) < 1e-4


def test_state_carries_across_calls():
    """[x1, x2] at once equals x1 then x2 with the cached conv and gated delta-rule states."""
    torch.manual_seed(1)
    layer = GatedDeltaNet(tiny()).eval()
    x = torch.randn(2, 45, 64)
    full, _ = layer(x, mode="chunk")
    y1, s = layer(x[:, :30], use_cache=True, mode="chunk")
    y2, _ = layer(x[:, 30:], state=s, use_cache=True, mode="recurrent")
    assert s["recurrent_state"].shape == (2, 2, 32, 32) and s["conv_q"].shape == (2, 64, 3)
    assert rel_err(torch.cat([y1, y2], 1), full) < 1e-5


def test_decay_init_is_mamba2():
    layer = GatedDeltaNet(tiny(num_heads=64, hidden_size=256))
    A = layer.A_log.exp()
    dt = F.softplus(layer.dt_bias)
    assert bool(((A >= 1) & (A <= 16)).all()) and A.max() - A.min() > 5
    assert bool(((dt >= 1e-3 * 0.999) & (dt <= 1e-1 * 1.001)).all()) and dt.max() / dt.min() > 10
    # the model's init (normal linears) leaves the decay parameters alone
    model = DeltaNetForCausalLM(tiny())
    assert bool(((model.model.layers[0].mixer.A_log.exp() >= 1)).all())


def test_triton_backend_matches_torch_backend(triton_runnable):
    """The layer's Triton path (interpreted on CPU, compiled on CUDA) equals its PyTorch path: chunk with gradients,
    the forward-only recurrent kernel under no_grad, varlen."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(6)
    ref = GatedDeltaNet(tiny(backend="torch")).to(device)
    tri = GatedDeltaNet(tiny(backend="triton")).to(device)
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
        a, sa = ref(x, mode="recurrent", use_cache=True)
        b, sb = tri(x, mode="recurrent", use_cache=True)
    assert rel_err(b, a) < 1e-5 and rel_err(sb["recurrent_state"], sa["recurrent_state"]) < 1e-5
    cu = torch.tensor([0, 5, 6, 21], device=device)
    a, _ = ref(x[:1], cu_seqlens=cu, mode="chunk")
    b, _ = tri(x[:1], cu_seqlens=cu, mode="chunk")
    assert rel_err(b, a) < 1e-5


def test_hybrid_swa_layers():
    model = DeltaNetForCausalLM(tiny(family="gated_deltanet_hybrid_swa", num_layers=4, attn_window=8))
    kinds = [type(b.mixer) for b in model.model.layers]
    assert kinds == [GatedDeltaNet, Attention, GatedDeltaNet, Attention]
    assert model.model.layers[1].mixer.window == 8
    with pytest.raises(ValueError, match="attn_layers must be empty for family 'gated_deltanet'"):
        tiny(attn_layers=[1])
