"""kernels.decode_step (Triton, run under TRITON_INTERPRET=1 on CPU) against naive_decode_step in float64: several
tokens in a row (the conv caches shift), every option (delta rule with or without beta, decay, plain linear; convs,
feature maps, norms), head sizes that are not powers of two, and in-place updates of state and caches."""
from __future__ import annotations

import zlib

import pytest
import torch

from kernels import decode_step, naive_decode_step

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rel_err(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


CASES = {
    "deltanet": dict(delta=True, beta=True, g=False, conv=True, qk_activation="silu", qk_norm="l2", v_activation="silu"),
    "gated_deltanet": dict(delta=True, beta=True, g=True, conv=True, qk_activation="silu", qk_norm="l2",
                           v_activation="silu"),
    "retention": dict(delta=False, beta=False, g=True, conv=False, qk_activation="identity", qk_norm=None,
                      v_activation="identity"),
    "relu_l1_no_beta": dict(delta=True, beta=False, g=False, conv=True, qk_activation="relu", qk_norm="l1",
                            v_activation="silu"),
    "elu_l1": dict(delta=True, beta=True, g=False, conv=True, qk_activation="elu", qk_norm="l1", v_activation="silu"),
    "identity_l2_no_conv": dict(delta=True, beta=True, g=False, conv=False, qk_activation="identity", qk_norm="l2",
                                v_activation="identity"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("B,H,K,V,W", [(2, 3, 16, 16, 4), (1, 2, 12, 20, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])  # no tl.dot: bf16 interprets
def test_decode_step_matches_float64_reference(case, B, H, K, V, W, dtype):
    c = CASES[case]
    gen = torch.Generator().manual_seed(zlib.crc32(repr((case, B, H, K, V, W, dtype)).encode()))
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    S = (rnd(B, H, K, V) * 0.3).to(DEVICE)
    S_ref = S.double().cpu()
    convs = [(rnd(B, ch, W - 1)).to(DEVICE, dtype) for ch in (H * K, H * K, H * V)] if c["conv"] else None
    convs_ref = [t.double().cpu() for t in convs] if convs else None
    weights = [rnd(ch, 1, W) * 0.5 for ch in (H * K, H * K, H * V)] if c["conv"] else None
    for _ in range(3):  # tokens in a row
        qkv = rnd(B, 2 * H * K + H * V + 3).to(dtype)  # column slices of one projection: strided rows
        q, k, v = qkv[:, :H * K], qkv[:, H * K:2 * H * K], qkv[:, 2 * H * K:2 * H * K + H * V]
        beta = torch.rand(B, H, generator=gen).to(dtype) if c["beta"] else None
        g = -torch.rand(B, H, generator=gen) if c["g"] else None
        on = lambda t: t.to(DEVICE) if t is not None else None  # noqa: E731
        kw = dict(delta=c["delta"], qk_activation=c["qk_activation"], qk_norm=c["qk_norm"],
                  v_activation=c["v_activation"])
        o = decode_step(S, on(qkv)[:, :H * K], on(qkv)[:, H * K:2 * H * K], on(qkv)[:, 2 * H * K:2 * H * K + H * V],
                        beta=on(beta), g=on(g), conv_states=convs,
                        conv_weights=[w.to(DEVICE) for w in weights] if weights else None, **kw)
        o_ref = naive_decode_step(S_ref, q.double(), k.double(), v.double(),
                                  beta=beta.double() if beta is not None else None,
                                  g=g.double() if g is not None else None, conv_states=convs_ref,
                                  conv_weights=[w.double() for w in weights] if weights else None, **kw)
        tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
        assert o.dtype == dtype and o.shape == (B, H, V)
        assert rel_err(o, o_ref) < tol
        assert rel_err(S, S_ref) < tol
        if convs:
            for a, b in zip(convs, convs_ref):  # the caches hold raw inputs: exact
                assert torch.equal(a.double().cpu(), b)


@pytest.mark.parametrize("BV,num_warps", [(8, 4), (32, 8), (64, 2)])
def test_decode_step_beta_logits_and_blocks(BV, num_warps):
    """beta given as logits in a strided column slice of the projection (the layer's fused product), and other
    state blocks and warps: the same as the reference with beta = sigmoid(logits)."""
    gen = torch.Generator().manual_seed(11 + BV)
    B, H, K, V, W = 2, 3, 16, 24, 4
    S = (torch.randn(B, H, K, V, generator=gen) * 0.3).to(DEVICE)
    S_ref = S.double().cpu()
    convs = [torch.randn(B, ch, W - 1, generator=gen).to(DEVICE) for ch in (H * K, H * K, H * V)]
    convs_ref = [t.double().cpu() for t in convs]
    weights = [torch.randn(ch, W, generator=gen) * 0.5 for ch in (H * K, H * K, H * V)]
    kw = dict(qk_activation="silu", qk_norm="l2", v_activation="silu")
    for _ in range(2):
        proj = torch.randn(B, 2 * H * K + H * V + H + 5, generator=gen)
        c = [0, H * K, 2 * H * K, 2 * H * K + H * V, 2 * H * K + H * V + H]
        parts = [proj[:, a:b] for a, b in zip(c, c[1:])]  # q, k, v, beta logits: strided rows
        dev = [t.to(DEVICE) for t in parts]
        o = decode_step(S, *dev[:3], beta=dev[3], beta_logits=True, conv_states=convs,
                        conv_weights=[w.to(DEVICE) for w in weights], BV=BV, num_warps=num_warps, **kw)
        o_naive_logits = naive_decode_step(S_ref.clone(), *(t.double() for t in parts[:3]), beta=parts[3].double(),
                                           beta_logits=True, conv_states=[t.clone() for t in convs_ref],
                                           conv_weights=[w.double() for w in weights], **kw)
        o_ref = naive_decode_step(S_ref, *(t.double() for t in parts[:3]), beta=torch.sigmoid(parts[3].double()),
                                  conv_states=convs_ref, conv_weights=[w.double() for w in weights], **kw)
        assert rel_err(o, o_ref) < 1e-5 and rel_err(S, S_ref) < 1e-5
        assert torch.allclose(o_naive_logits, o_ref)


@pytest.mark.parametrize("with_gate", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_decode_step_output_norm_and_gate(with_gate, dtype):
    """The per-head output RMSNorm [* silu(gate)] inside the kernel, against the float64 reference and against the
    plain RMSNorm module applied to the kernel's unnormalised output."""
    from deltanet.layers.norm import RMSNorm
    gen = torch.Generator().manual_seed(21 + with_gate)
    B, H, K, V, W = 2, 2, 16, 20, 4
    S = (torch.randn(B, H, K, V, generator=gen) * 0.3).to(DEVICE)
    convs = [torch.randn(B, ch, W - 1, generator=gen).to(DEVICE, dtype) for ch in (H * K, H * K, H * V)]
    weights = [(torch.randn(ch, W, generator=gen) * 0.5).to(DEVICE) for ch in (H * K, H * K, H * V)]
    proj = torch.randn(B, 2 * H * K + 2 * H * V + 3, generator=gen).to(DEVICE, dtype)
    q, k, v = proj[:, :H * K], proj[:, H * K:2 * H * K], proj[:, 2 * H * K:2 * H * K + H * V]
    gate = proj[:, 2 * H * K + H * V:2 * H * K + 2 * H * V] if with_gate else None  # strided rows
    norm = RMSNorm(V).to(DEVICE)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(V, generator=gen) + 0.5)
    kw = dict(qk_activation="silu", qk_norm="l2", v_activation="silu")
    S2, convs2 = S.clone(), [c.clone() for c in convs]
    o = decode_step(S, q, k, v, conv_states=convs, conv_weights=weights, o_norm_weight=norm.weight, gate=gate, **kw)
    o_ref = naive_decode_step(S2.double().cpu(), q.double().cpu(), k.double().cpu(),
                              v.double().cpu(), conv_states=[c.double().cpu() for c in convs2],
                              conv_weights=[w.double().cpu() for w in weights],
                              o_norm_weight=norm.weight.detach().double().cpu(),
                              gate=gate.double().cpu() if gate is not None else None, **kw)
    raw = decode_step(S2, q, k, v, conv_states=convs2, conv_weights=weights, **kw).float()  # (B, H, V)
    plain = norm(raw, gate=gate.float().view(B, H, V) if gate is not None else None)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3}[dtype]
    assert o.dtype == dtype and rel_err(o, o_ref) < tol and rel_err(o.float(), plain) < 2 * tol
    with pytest.raises(ValueError, match="BV >= 20"):
        decode_step(S, q, k, v, o_norm_weight=norm.weight, BV=16, **kw)
    with pytest.raises(ValueError, match="gate is only applied"):
        decode_step(S, q, k, v, gate=proj[:, :H * V], **kw)


def test_naive_decode_step_equals_the_recurrent_delta_rule():
    """The reference itself: one step of naive_decode_step == one token of kernels.naive_recurrent_delta_rule."""
    from kernels import naive_recurrent_delta_rule
    torch.manual_seed(0)
    B, H, K = 2, 2, 8
    q, k, v = (torch.randn(B, 1, H, K, dtype=torch.float64) for _ in range(3))
    k = torch.nn.functional.normalize(k, dim=-1)
    beta = torch.rand(B, 1, H, dtype=torch.float64)
    S0 = torch.randn(B, H, K, K, dtype=torch.float64)
    o_ref, S_ref = naive_recurrent_delta_rule(q, k, v, beta, initial_state=S0, output_final_state=True)
    S = S0.clone()
    o = naive_decode_step(S, q.reshape(B, -1), k.reshape(B, -1), v.reshape(B, -1), beta=beta[:, 0])
    assert rel_err(o, o_ref[:, 0]) < 1e-12 and rel_err(S, S_ref) < 1e-12


def test_decode_step_rejects_bad_input():
    S = torch.zeros(1, 2, 4, 4, device=DEVICE)
    q = torch.zeros(1, 8, device=DEVICE)
    with pytest.raises(ValueError, match="float32"):
        decode_step(S.half(), q, q, q)
    with pytest.raises(ValueError, match="k must be"):
        decode_step(S, q, torch.zeros(1, 6, device=DEVICE), q)
    with pytest.raises(ValueError, match="qk_norm"):
        decode_step(S, q, q, q, qk_norm="l3")
    with pytest.raises(ValueError, match="conv state q"):
        decode_step(S, q, q, q, conv_states=[torch.zeros(1, 8, 2, device=DEVICE)] * 3,
                    conv_weights=[torch.zeros(8, 4, device=DEVICE)] * 3)
    with pytest.raises(ValueError, match="only used by the delta rule"):
        decode_step(S, q, q, q, beta=torch.zeros(1, 2, device=DEVICE), delta=False)
