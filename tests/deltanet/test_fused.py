"""The fused glue (kernels/conv, kernels/norm, kernels/mlp) inside the layers and the model equals the plain PyTorch
layers: values and every gradient, on CPU with the Triton kernels under the interpreter (backend='triton')."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import deltanet.layers.delta_net as dn_mod
from deltanet import DeltaNetConfig, DeltaNetForCausalLM
from deltanet.layers import RMSNorm, ShortConvolution, SwiGLU

pytestmark = pytest.mark.usefixtures("triton_runnable")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def tiny(**kw) -> DeltaNetConfig:
    base = dict(vocab_size=97, hidden_size=64, num_layers=2, num_heads=2, chunk_size=16, backend="triton")
    return DeltaNetConfig(**{**base, **kw})


def _grads(module, loss):
    loss.backward()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["plain", "residual", "gate"])
def test_rms_norm_layer_fused_equals_plain(mode):
    torch.manual_seed(1)
    norm = RMSNorm(32)
    with torch.no_grad():
        norm.weight.add_(0.1 * torch.randn(32))
    x = torch.randn(3, 5, 32, requires_grad=True)
    e = torch.randn(3, 5, 32, requires_grad=True)
    kw = {} if mode == "plain" else {mode: e}
    outs = []
    for fused in (False, True):
        norm.zero_grad()
        x.grad = e.grad = None
        y = norm(x, fused=fused, **kw)
        y = y if mode != "residual" else y[0] + 2 * y[1]
        (y * torch.linspace(-1, 1, 32)).sum().backward()
        outs.append([y, x.grad, norm.weight.grad] + ([e.grad] if mode != "plain" else []))
    for a, b in zip(*outs[::-1]):
        assert rel_err(a, b) < 1e-6


def test_swiglu_layer_fused_equals_plain():
    torch.manual_seed(2)
    mlp = SwiGLU(16, 40)
    x = torch.randn(2, 7, 16, requires_grad=True)
    res = []
    for fused in (False, True):
        mlp.zero_grad()
        x.grad = None
        y = mlp(x, fused=fused)
        g = _grads(mlp, (y * y).sum())
        res.append((y, x.grad, g))
    assert rel_err(res[1][0], res[0][0]) < 1e-6 and rel_err(res[1][1], res[0][1]) < 1e-6
    for n in res[0][2]:
        assert rel_err(res[1][2][n], res[0][2][n]) < 1e-6, n


@pytest.mark.parametrize("act", ["silu", "relu"])
@pytest.mark.parametrize("varlen", [False, True])
def test_short_conv_layer_fused_equals_plain(act, varlen):
    """ShortConvolution.fused == the plain layer, then the feature map and F.normalize per head of 16."""
    torch.manual_seed(3)
    conv = ShortConvolution(32, 4)
    T = 29
    x = torch.randn(1 if varlen else 2, T, 32, requires_grad=True)
    cu = torch.tensor([0, 4, 17, T]) if varlen else None
    y_ref, _ = conv(x, cu_seqlens=cu)
    y_ref = F.normalize(getattr(F, act)(y_ref).view(*x.shape[:2], 2, 16), dim=-1, eps=1e-6).view_as(x)
    y = conv.fused(x, act, 16, cu)
    g = torch.randn_like(y)
    ga = torch.autograd.grad(y_ref, (x, conv.weight), g)
    gb = torch.autograd.grad(y, (x, conv.weight), g)
    assert rel_err(y, y_ref) < 1e-6
    for a, b in zip(gb, ga):
        assert rel_err(a, b) < 1e-5


FUSED_CASES = {
    "deltanet": dict(family="deltanet"),
    "gate": dict(family="deltanet", use_output_gate=True),
    "no_conv": dict(family="deltanet", use_short_conv=False),
    "keep_conv": dict(family="deltanet", recompute_conv=False),
    "elu_l1": dict(family="deltanet", qk_activation="elu", qk_norm="l1"),  # the plain qk path inside a fused model
    "hybrid_swa": dict(family="deltanet_hybrid_swa", attn_window=8),
    "transformer": dict(family="transformer"),
    "gated_deltanet": dict(family="gated_deltanet"),
    # the fused norms only: the first block's residual add in the second block's norm
    "mamba": dict(family="mamba", num_layers=1, hidden_size=32),
}


@pytest.mark.parametrize("case, varlen", [(c, False) for c in sorted(FUSED_CASES)] + [("deltanet", True),
                                                                                     ("gate", True),
                                                                                     ("gated_deltanet", True)])
def test_model_fused_equals_plain(case, varlen):
    """Loss, logits and every parameter gradient of the fused model equal the plain model's (same weights)."""
    torch.manual_seed(4)
    plain = DeltaNetForCausalLM(tiny(fused=False, **FUSED_CASES[case]))
    fused = DeltaNetForCausalLM(tiny(fused=True, **FUSED_CASES[case]))
    fused.load_state_dict(plain.state_dict())
    B, T = (1, 45) if varlen else (2, 37)
    ids = torch.randint(0, 97, (B, T))
    cu = torch.tensor([0, 11, 30, 45]) if varlen else None
    res = []
    for m in (plain, fused):
        out = m(ids, labels=ids, cu_seqlens=cu, return_logits=True)
        res.append((out.loss, out.logits, _grads(m, out.loss)))
    assert rel_err(res[1][0], res[0][0]) < 1e-6
    assert rel_err(res[1][1], res[0][1]) < 1e-5
    assert res[0][2].keys() == res[1][2].keys()
    for n, g in res[0][2].items():
        assert rel_err(res[1][2][n], g) < 1e-4, n


def test_fused_path_is_taken_on_triton_and_not_on_cpu_auto(monkeypatch):
    calls = []
    real = dn_mod.short_conv_multi
    monkeypatch.setattr(dn_mod, "short_conv_multi", lambda *a, **k: calls.append("conv") or real(*a, **k))
    real_joint = dn_mod.conv_chunk_delta_rule
    monkeypatch.setattr(dn_mod, "conv_chunk_delta_rule", lambda *a, **k: calls.append("joint") or real_joint(*a, **k))
    ids = torch.randint(0, 97, (1, 20))
    DeltaNetForCausalLM(tiny(backend="auto"))(ids, labels=ids)  # CPU: plain
    assert calls == []
    DeltaNetForCausalLM(tiny(backend="triton"))(ids, labels=ids)
    assert calls == ["joint", "joint"]  # q, k, v convs inside the delta rule's function, in both layers
    calls.clear()
    DeltaNetForCausalLM(tiny(backend="triton", recompute_conv=False))(ids, labels=ids)
    assert calls == ["conv", "conv"]
    assert not tiny(backend="auto").use_fused(on_cuda=False) and tiny(backend="auto").use_fused(on_cuda=True)
    assert not tiny(backend="auto", fused=False).use_fused(on_cuda=True)


def test_fused_flag_must_be_bool():
    with pytest.raises(ValueError, match="fused"):
        tiny(fused="yes")


def test_joint_projection_is_padded_to_aligned_rows(monkeypatch):
    """The fused q/k/v/beta projection is padded with zero rows to a width divisible by ROW_ALIGN (the conv kernels'
    vectorised loads), and the padding changes nothing: the loss equals that of the unpadded width, and the gradients
    to rounding."""
    widths = []
    real_joint = dn_mod.conv_chunk_delta_rule
    monkeypatch.setattr(dn_mod, "conv_chunk_delta_rule",
                        lambda qkv, *a, **k: widths.append(qkv.shape[-1]) or real_joint(qkv, *a, **k))
    ids = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(5))
    res = []
    for align in (dn_mod.ROW_ALIGN, 1):
        monkeypatch.setattr(dn_mod, "ROW_ALIGN", align)
        torch.manual_seed(6)
        m = DeltaNetForCausalLM(tiny(backend="triton"))
        out = m(ids, labels=ids)
        res.append((out.loss, _grads(m, out.loss)))
    H, D = tiny().num_heads, tiny().head_dim
    assert widths[0] % dn_mod.ROW_ALIGN == 0 and widths[0] > 3 * H * D + H  # padded
    assert widths[-1] == 3 * H * D + H  # unpadded
    assert torch.equal(res[0][0], res[1][0])
    for n, g in res[1][1].items():  # the input gradient's product runs over a wider matrix: rounding only
        assert rel_err(res[0][1][n], g) < 1e-6, n
