"""RetNet retention layer on CPU: chunk == recurrent, cached state, Triton path == PyTorch path, the fixed decays, the
paper's GroupNorm and doubled value width, the config fields and the paper-size parameter counts."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from deltanet import DeltaNetConfig, DeltaNetForCausalLM
from deltanet.layers import MultiScaleRetention
from deltanet.layers.norm import HeadGroupNorm, RMSNorm
from tests.deltanet.test_generation_static import static_logits

ROOT = Path(__file__).resolve().parents[2]
# (retnet_norm, retnet_value_factor): the paper's design (the default) and fla's (today's RMSNorm, V = K)
VARIANTS = [("group", 2), ("rms", 1), ("group", 1), ("rms", 2)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def tiny(**kw) -> DeltaNetConfig:
    base = dict(vocab_size=97, hidden_size=64, num_layers=2, num_heads=2, chunk_size=16, backend="torch",
                family="retnet")
    return DeltaNetConfig(**{**base, **kw})


@pytest.mark.parametrize("norm,factor", VARIANTS)
def test_chunk_equals_recurrent_fp32(norm, factor):
    torch.manual_seed(3)
    layer = MultiScaleRetention(tiny(retnet_norm=norm, retnet_value_factor=factor))
    with torch.no_grad():  # a non-trivial affine, so the norm's weight and bias are exercised
        layer.o_norm.weight.uniform_(0.5, 1.5)
        if norm == "group":
            layer.o_norm.bias.normal_(0, 0.5)
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
    assert s["recurrent_state"].shape == (2, 2, 32, 64)  # [B, H, K, V], V = 2 K
    assert rel_err(torch.cat([y1, y2], 1), full) < 1e-5


def test_multi_scale_decays():
    layer = MultiScaleRetention(tiny(num_heads=4, hidden_size=128))
    assert torch.allclose(layer.log_gamma.exp(), torch.tensor([1 - 2.0 ** (-5 - h) for h in range(4)]))
    assert "log_gamma" not in layer.state_dict()  # fixed, not a parameter nor a checkpoint entry
    assert math.isclose(layer.log_gamma[0].exp().item(), 31 / 32, rel_tol=1e-6)


@pytest.mark.parametrize("norm,factor", [("group", 2), ("rms", 1)])
def test_triton_backend_matches_torch_backend(norm, factor, triton_runnable):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(6)
    kw = dict(retnet_norm=norm, retnet_value_factor=factor)
    ref = MultiScaleRetention(tiny(backend="torch", **kw)).to(device)
    tri = MultiScaleRetention(tiny(backend="triton", **kw)).to(device)
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


def test_head_group_norm_equals_the_per_head_formula():
    torch.manual_seed(7)
    H, D, eps = 3, 16, 1e-5
    norm = HeadGroupNorm(H, D, eps=eps)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 5, H, D) * 3 + 1
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    ref = (x - mean) / torch.sqrt(var + eps) * norm.weight.view(H, D) + norm.bias.view(H, D)
    assert rel_err(norm(x), ref) < 1e-6
    # the same as torch's GroupNorm module with one group per head over the H * D channels
    gn = torch.nn.GroupNorm(H, H * D, eps=eps)
    gn.load_state_dict(norm.state_dict())
    assert rel_err(norm(x), gn(x.reshape(10, H * D)).view_as(x)) < 1e-6
    # a per-head affine-free result: mean 0 and variance 1 in every head (a RMSNorm has no such mean)
    plain = HeadGroupNorm(H, D, eps=0.0 + 1e-12)(x)
    assert plain.mean(-1).abs().max() < 1e-5 and (plain.var(-1, unbiased=False) - 1).abs().max() < 1e-4
    xb = x.to(torch.bfloat16)
    assert norm(xb).dtype == torch.bfloat16 and rel_err(norm(xb), norm(xb.float())) < 1e-2
    with pytest.raises(ValueError, match="HeadGroupNorm"):
        norm(torch.randn(2, H, D + 1))


def test_layer_uses_the_papers_group_norm_by_default():
    layer = MultiScaleRetention(tiny())
    assert isinstance(layer.o_norm, HeadGroupNorm) and layer.o_norm.weight.shape == (2 * 64,)
    assert layer.o_norm.bias.shape == (2 * 64,)
    assert layer.o_norm.eps == tiny().norm_eps
    assert isinstance(MultiScaleRetention(tiny(retnet_norm="rms")).o_norm, RMSNorm)
    torch.manual_seed(8)
    x = torch.randn(2, 9, 64)
    # the output before W_o is GroupNorm_h(retention) * silu(W_g x): recompute it from the layer's own pieces
    seen = {}  # the hooks return None: they only look
    layer.o_proj.register_forward_pre_hook(lambda m, a: seen.update(o_proj=a[0]) and None)
    layer.o_norm.register_forward_pre_hook(lambda m, a: seen.update(o=a[0]) and None)
    layer(x, mode="chunk")
    o = seen["o"]  # (B, T, H, DV), the retention output
    mean, var = o.mean(-1, keepdim=True), o.var(-1, unbiased=False, keepdim=True)
    ref = (o - mean) / torch.sqrt(var + layer.config.norm_eps) * F.silu(layer.g_proj(x).view(2, 9, 2, 64))
    assert rel_err(seen["o_proj"], ref.reshape(2, 9, 128)) < 1e-5


@pytest.mark.parametrize("factor", [1, 2])
def test_value_factor_sets_the_value_shapes(factor):
    cfg = tiny(retnet_value_factor=factor)  # hidden 64, 2 heads of 32
    layer = MultiScaleRetention(cfg)
    DV = factor * 32
    assert layer.value_dim == DV
    assert layer.q_proj.weight.shape == layer.k_proj.weight.shape == (2 * 32, 64)
    assert layer.v_proj.weight.shape == layer.g_proj.weight.shape == (2 * DV, 64)
    assert layer.o_proj.weight.shape == (64, 2 * DV)
    assert layer.o_norm.weight.shape == (2 * DV,)
    x = torch.randn(3, 11, 64)
    y, s = layer(x, use_cache=True, mode="chunk")
    assert y.shape == x.shape and s["recurrent_state"].shape == (3, 2, 32, DV)
    assert layer.init_static_state(3, 20, "cpu", torch.float32)["recurrent_state"].shape == (3, 2, 32, DV)
    # the FFN gives back the wider value path's weights: a paper-sized default keeps its parameter count
    assert cfg.intermediate_size == 256 - (factor - 1) * 64  # Llama width of 64: 256


@pytest.mark.parametrize("norm,factor", VARIANTS[:2])
def test_cached_generation_and_static_step_equal_the_full_forward(norm, factor):
    torch.manual_seed(9)
    model = DeltaNetForCausalLM(tiny(retnet_norm=norm, retnet_value_factor=factor)).eval()
    ids = torch.randint(0, 97, (2, 80))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :70], use_cache=True)  # chunk prefill
        logits = [out.logits]
        cache = out.cache
        for t in range(70, 80):  # recurrent steps through the Cache
            out = model(ids[:, t:t + 1], cache=cache, use_cache=True)
            logits.append(out.logits)
            cache = out.cache
    assert rel_err(torch.cat(logits, 1), full) < 1e-5
    assert rel_err(static_logits(model, ids, 5), full[:, 5:]) < 1e-5
    assert rel_err(static_logits(model, ids, 70), full[:, 70:]) < 1e-5
    ref = model.generate(ids[:, :12], 6, temperature=0.0, fast=False)
    assert torch.equal(model.generate(ids[:, :12], 6, temperature=0.0), ref)


def test_padding_and_cu_seqlens_with_the_group_norm():
    torch.manual_seed(10)
    layer = MultiScaleRetention(tiny()).eval()
    x = torch.randn(1, 21, 64)
    cu = torch.tensor([0, 5, 6, 21])
    y, _ = layer(x, cu_seqlens=cu, mode="chunk")
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):  # every sequence alone
        alone, _ = layer(x[:, a:b], mode="chunk")
        assert rel_err(y[:, a:b], alone) < 1e-5
    pad = torch.zeros(1, 25, dtype=torch.bool)
    pad[:, :4] = True
    xp = torch.cat([torch.randn(1, 4, 64), x], 1)
    yp, _ = layer(xp, pad=pad, mode="chunk")
    ref, _ = layer(x, mode="chunk")
    assert rel_err(yp[:, 4:], ref) < 1e-5 and torch.isfinite(yp).all()


@pytest.mark.parametrize("field,value,match", [
    ("retnet_norm", "layer", "retnet_norm must be 'group' or 'rms'"),
    ("retnet_norm", None, "retnet_norm must be 'group' or 'rms'"),
    ("retnet_value_factor", 3, "retnet_value_factor must be 1 or 2"),
    ("retnet_value_factor", 0, "retnet_value_factor must be 1 or 2"),
    ("retnet_value_factor", True, "retnet_value_factor must be 1 or 2"),
    ("retnet_value_factor", 2.0, "retnet_value_factor must be 1 or 2"),
    ("retnet_value_factor", "2", "retnet_value_factor must be 1 or 2"),
])
def test_bad_retnet_fields_raise(field, value, match):
    with pytest.raises(ValueError, match=match):
        tiny(**{field: value})


def test_retnet_default_ffn_width():
    assert DeltaNetConfig(family="retnet").intermediate_size == 768 - 256  # Llama width less H * D
    assert DeltaNetConfig(family="retnet", retnet_value_factor=1).intermediate_size == 768
    assert DeltaNetConfig(family="retnet", intermediate_size=1000).intermediate_size == 1000  # given: kept
    assert DeltaNetConfig(family="deltanet").intermediate_size == 768  # other families: unchanged
    with pytest.raises(ValueError, match="intermediate_size.*not positive"):
        DeltaNetConfig(family="retnet", hidden_size=64, num_heads=1, head_dim=512)
    d = DeltaNetConfig(family="retnet").to_dict()
    assert DeltaNetConfig(**d) == DeltaNetConfig(family="retnet")  # the derived width round-trips


# The paper sizes of family retnet (conf/model/retnet.yaml's comment): (total, without the input embedding).
PAPER_COUNTS = {"340M": (399_131_648, 366_363_648, "399.1M", "366.4M"),
                "1.3B": (1_465_157_632, 1_399_621_632, "1.465B", "1.400B")}


@pytest.mark.parametrize("preset", sorted(PAPER_COUNTS))
def test_paper_size_parameter_counts(preset):
    """Value factor 2 adds 3 * hidden^2 weights per layer (W_v, W_g, W_o at H * head_dim = hidden) and the FFN
    width hidden less takes them back; the GroupNorm's bias and wider weight add 2 * 2 * hidden - head_dim."""
    total, body, total_s, body_s = PAPER_COUNTS[preset]
    cfg = DeltaNetConfig.from_preset(preset, family="retnet")
    with torch.device("meta"):
        model = DeltaNetForCausalLM(cfg)
        rms = DeltaNetForCausalLM(DeltaNetConfig.from_preset(preset, family="retnet", retnet_norm="rms",
                                                             retnet_value_factor=1))
    assert (model.num_parameters(), model.num_parameters(exclude_embeddings=True)) == (total, body)
    C, D = cfg.hidden_size, cfg.head_dim
    assert cfg.intermediate_size == rms.config.intermediate_size - C
    assert total - rms.num_parameters() == cfg.num_layers * (4 * C - D)
    for path in ("conf/model/retnet.yaml", "deltanet/README.md"):
        text = " ".join((ROOT / path).read_text().split())
        assert re.search(rf"{re.escape(preset)}\S*(?: preset)? {re.escape(total_s)} \({re.escape(body_s)}", text), \
            f"{path} does not state the {preset} count {total_s} ({body_s} without embeddings)"
