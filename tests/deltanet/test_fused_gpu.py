"""The fused glue on the GPU: each Triton piece in bfloat16 against its float64 PyTorch form (values and gradients),
at the model's sizes; the fused 340M-width model against the plain one under bf16 autocast.  Marked `gpu`."""
from __future__ import annotations

import pytest
import torch

from deltanet import DeltaNetConfig, DeltaNetForCausalLM
from kernels.conv import naive_short_conv, short_conv
from kernels.cross_entropy import linear_cross_entropy, naive_linear_cross_entropy
from kernels.mlp import naive_swiglu_linear, swiglu_linear
from kernels.norm import naive_rms_norm, rms_norm

pytestmark = pytest.mark.gpu
DEV = "cuda"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _compare(fn, ref_fn, inputs, tol, n_out=1):
    """fn on bf16 / fp32 inputs vs ref_fn on their float64 copies: outputs and every input gradient."""
    ins = [t.clone().requires_grad_() for t in inputs]
    refs = [t.detach().double().requires_grad_() for t in inputs]
    outs, routs = fn(*ins), ref_fn(*refs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    routs = routs if isinstance(routs, tuple) else (routs,)
    gs = [torch.randn_like(o, dtype=torch.float32) for o in outs[:n_out]]
    sum((o.float() * g).sum() for o, g in zip(outs[:n_out], gs)).backward()
    sum((o * g.double()).sum() for o, g in zip(routs[:n_out], gs)).backward()
    for i, (o, r) in enumerate(zip(outs[:n_out], routs[:n_out])):
        assert rel_err(o, r) < tol, f"output {i}: {rel_err(o, r):.2e}"
    for i, (a, b) in enumerate(zip(ins, refs)):
        assert rel_err(a.grad, b.grad) < 2 * tol, f"grad {i}: {rel_err(a.grad, b.grad):.2e}"


@pytest.mark.parametrize("norm_dim, act", [(128, "silu"), (None, "silu"), (128, "relu")])
@pytest.mark.parametrize("varlen", [False, True])
def test_short_conv_bf16(norm_dim, act, varlen):
    torch.manual_seed(0)
    B, T = (1, 3001) if varlen else (2, 1999)
    x = torch.randn(B, T, 1024, device=DEV, dtype=torch.bfloat16)
    w = torch.randn(1024, 4, device=DEV) * 0.5
    cu = torch.tensor([0, 17, 1000, 1001, 3001], device=DEV) if varlen else None
    _compare(lambda x, w: short_conv(x, w, act, norm_dim, cu),
             lambda x, w: naive_short_conv(x, w, act, norm_dim, cu)[0], [x, w], 1e-2)


@pytest.mark.parametrize("mode", ["plain", "residual", "gate"])
def test_rms_norm_bf16(mode):
    torch.manual_seed(1)
    C = 128 if mode == "gate" else 1024
    x = torch.randn(2, 1999, C, device=DEV, dtype=torch.float32 if mode == "residual" else torch.bfloat16)
    w = 1 + 0.1 * torch.randn(C, device=DEV)
    e = torch.randn(2, 1999, C, device=DEV, dtype=torch.bfloat16)
    if mode == "plain":
        _compare(lambda x, w: rms_norm(x, w), lambda x, w: naive_rms_norm(x, w), [x, w], 1e-2)
    else:
        _compare(lambda x, w, e: rms_norm(x, w, **{mode: e}), lambda x, w, e: naive_rms_norm(x, w, **{mode: e}),
                 [x, w, e], 1e-2, n_out=2 if mode == "residual" else 1)


def test_swiglu_linear_bf16():
    torch.manual_seed(2)
    g = torch.randn(2, 999, 2816, device=DEV, dtype=torch.bfloat16)
    u = torch.randn(2, 999, 2816, device=DEV, dtype=torch.bfloat16)
    w = torch.randn(1024, 2816, device=DEV) * 0.02
    _compare(swiglu_linear, naive_swiglu_linear, [g, u, w], 1e-2)


def test_linear_cross_entropy_bf16():
    """The model's sizes: vocabulary 32000, two chunks and a remainder, a quarter of the labels ignored."""
    torch.manual_seed(4)
    h = torch.randn(9000, 1024, device=DEV, dtype=torch.bfloat16)
    w = torch.randn(32000, 1024, device=DEV) * 0.02
    y = torch.randint(0, 32000, (9000,), device=DEV)
    y[::4] = -100
    _compare(lambda h, w: linear_cross_entropy(h, w, y), lambda h, w: naive_linear_cross_entropy(h, w, y), [h, w],
             1e-2)


@pytest.mark.parametrize("gate, recompute", [(False, True), (True, True), (False, False)])
def test_model_fused_equals_plain_bf16(gate, recompute):
    """Fused vs plain glue in the same model at 340M width (4 layers), bf16 autocast: loss and gradients."""
    torch.manual_seed(3)
    kw = dict(hidden_size=1024, num_heads=8, num_layers=4, use_output_gate=gate, recompute_conv=recompute)
    plain = DeltaNetForCausalLM(DeltaNetConfig(fused=False, **kw)).to(DEV)
    fused = DeltaNetForCausalLM(DeltaNetConfig(fused=True, **kw)).to(DEV)
    fused.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 32000, (2, 2047), device=DEV)
    losses, grads = [], []
    for m in (plain, fused):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = m(ids, labels=ids).loss
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad for n, p in m.named_parameters()})
    assert abs(losses[0] - losses[1]) < 2e-3 * losses[0]
    for n, g in grads[0].items():
        assert rel_err(grads[1][n], g) < 5e-2, n
