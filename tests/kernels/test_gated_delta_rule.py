"""chunk_gated_delta_rule and fused_recurrent_gated_delta_rule (Triton) against a float64 recurrence written here.

On CPU the Triton kernels run under TRITON_INTERPRET=1 (tests/kernels/conftest.py): float32 (relative error <= 2e-4
for o and the final state, <= 5e-4 for every gradient: q, k, v, g, beta, initial state) and float16; bfloat16 at
realistic shapes, and the comparison with fla's kernel, run on the GPU (marker `gpu`).
"""
import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (see conftest.py)

from kernels import (  # noqa: E402
    chunk_delta_rule,
    chunk_gated_delta_rule,
    chunk_settings,
    fused_recurrent_gated_delta_rule,
    naive_chunk_gated_delta_rule,
    naive_recurrent_gated_delta_rule,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.usefixtures("require_interpreter")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double().to(a.device)
    return ((a - b).norm() / b.norm()).item()


def reference(q, k, v, g, beta, scale, h0=None, cu_seqlens=None):
    """Float64 recurrence: S <- exp(g) S; S <- S + beta k (v - S^T k)^T; o = scale S^T q.  Returns (o, final)."""
    q, k, v, g, beta = (x.double() for x in (q, k, v, g, beta))
    B, T, H, K = q.shape
    V = v.shape[-1]
    if cu_seqlens is None:
        segs = [(slice(None), 0, T)]
        S0 = h0.double() if h0 is not None else q.new_zeros(B, H, K, V)
    else:
        cs = cu_seqlens.tolist()
        segs = [(slice(0, 1), cs[i], cs[i + 1]) for i in range(len(cs) - 1)]
        S0 = h0.double() if h0 is not None else q.new_zeros(len(segs), H, K, V)
    outs, finals = [], []
    for n, (rows, s, e) in enumerate(segs):
        S = S0 if cu_seqlens is None else S0[n:n + 1]
        for t in range(s, e):
            k_t, v_t, b_t = k[rows, t], v[rows, t], beta[rows, t]
            S = S * g[rows, t].exp()[..., None, None]
            S = S + b_t[..., None, None] * k_t[..., None] * (v_t - torch.einsum("bhkv,bhk->bhv", S, k_t))[..., None, :]
            outs.append(scale * torch.einsum("bhkv,bhk->bhv", S, q[rows, t]))
        finals.append(S)
    return torch.stack(outs, 1), torch.cat(finals, 0)


def make_inputs(seed, B, T, H, K, V, N, dtype, g_scale=1.0, device=DEVICE):
    """L2-normalised q, k; beta in (0, 1); g = -g_scale * softplus(randn) <= 0 (float32); random initial state."""
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, T, H, K, generator=gen, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen, dtype=torch.float64), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    g = -g_scale * F.softplus(torch.randn(B, T, H, generator=gen, dtype=torch.float64))
    beta = torch.rand(B, T, H, generator=gen, dtype=torch.float64).clamp(1e-3, 1 - 1e-3)
    h0 = torch.randn(N, H, K, V, generator=gen, dtype=torch.float64)
    ins = [x.to(device=device, dtype=dtype) for x in (q, k, v)]
    return ins + [g.to(device=device, dtype=torch.float32), beta.to(device=device, dtype=dtype),
                  h0.to(device=device, dtype=dtype)]


def check(seed, B, T, H, K, V, chunk_size, cu_seqlens=None, use_h0=True, final_grad=True, dtype=torch.float32,
          g_scale=1.0, scale=None, tol_o=2e-4, tol_g=5e-4, fn=chunk_gated_delta_rule, ins=None):
    """Forward (o, final state) and gradients of q, k, v, g, beta, initial_state against the float64 recurrence."""
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    ins = make_inputs(seed, B, T, H, K, V, N, dtype, g_scale) if ins is None else ins
    if not use_h0:
        ins[5] = None
    ours = [None if x is None else x.clone().requires_grad_() for x in ins]
    refs = [None if x is None else x.detach().double().requires_grad_() for x in ins]
    cu = None if cu_seqlens is None else cu_seqlens.to(DEVICE)
    o, s = fn(*ours[:5], scale=scale, initial_state=ours[5], output_final_state=final_grad, cu_seqlens=cu,
              chunk_size=chunk_size)
    ro, rs = reference(*refs[:5], K ** -0.5 if scale is None else scale, refs[5], cu)
    assert o.shape == (B, T, H, V) and o.dtype == dtype
    err = {"o": rel(o, ro)}
    if final_grad:
        assert s.shape == (N, H, K, V) and s.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        err["final_state"] = rel(s, rs)
    else:
        assert s is None
    gen = torch.Generator().manual_seed(seed + 1)
    do = torch.randn(ro.shape, generator=gen, dtype=torch.float64).to(DEVICE)
    dht = torch.randn(rs.shape, generator=gen, dtype=torch.float64).to(DEVICE)
    if final_grad:
        torch.autograd.backward([o, s], [do.to(dtype), dht.to(s.dtype)])
        torch.autograd.backward([ro, rs], [do, dht])
    else:
        o.backward(do.to(dtype))
        ro.backward(do)
    for name, a, b in zip(("dq", "dk", "dv", "dg", "dbeta", "dh0"), ours, refs):
        if a is not None:
            assert a.grad is not None and a.grad.dtype == a.dtype and a.grad.shape == a.shape, name
            err[name] = rel(a.grad, b.grad)
    bad = {n: e for n, e in err.items() if not e <= (tol_o if n in ("o", "final_state") else tol_g)}
    assert not bad, f"relative errors over tolerance: {bad} (all: {err})"
    return err


# ---------------------------------------------------------------------------------------------------------------------
# float32 / float16 through the interpreter on CPU (compiled on GPU)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size,T", [(16, 37), (32, 45), (64, 70)])
def test_odd_lengths_every_chunk_size(chunk_size, T):
    check(seed=200 + chunk_size, B=2, T=T, H=1, K=32, V=16, chunk_size=chunk_size)


def test_no_initial_state_no_final_state_custom_scale():
    check(seed=17, B=1, T=40, H=2, K=16, V=32, chunk_size=16, use_h0=False, final_grad=False, scale=0.3)


def test_varlen_packed_sequences():
    """Packed sequences (one empty, one shorter than a chunk), each from its own initial state."""
    cu = torch.tensor([0, 5, 5, 37, 60], dtype=torch.int32)
    check(seed=23, B=1, T=60, H=2, K=32, V=16, chunk_size=16, cu_seqlens=cu)


def test_wide_keys_varlen_kept_and_recomputed_states():
    """K > 128: four 64-row state blocks, the separate dv_local kernel, folded grids and (by default) kept states;
    then the same with the states recomputed in the backward."""
    cu = torch.tensor([0, 19, 50], dtype=torch.int64)
    check(seed=29, B=1, T=50, H=1, K=160, V=40, chunk_size=16, cu_seqlens=cu)
    with chunk_settings(keep_states=False):
        check(seed=31, B=1, T=50, H=1, K=160, V=40, chunk_size=16, cu_seqlens=cu, use_h0=False)


def test_float16_inputs():
    check(seed=37, B=2, T=45, H=1, K=32, V=16, chunk_size=16, dtype=torch.float16, tol_o=4e-3, tol_g=8e-3)


def test_g_in_q_dtype():
    """g may come in q's dtype; dg is returned in it."""
    ins = make_inputs(41, 1, 33, 2, 16, 16, 1, torch.float16)
    ins[3] = ins[3].half()
    check(seed=41, B=1, T=33, H=2, K=16, V=16, chunk_size=16, dtype=torch.float16, tol_o=4e-3, tol_g=8e-3, ins=ins)


def test_strong_decay_long_chunk_is_finite_and_exact():
    """g ~ -30 per token over a 64-token chunk: G reaches ~ -2000; exp(-G) would overflow, the masked exp(G_i - G_j)
    forms do not."""
    err = check(seed=43, B=1, T=64, H=1, K=16, V=16, chunk_size=64, g_scale=30.0)
    assert all(e == e for e in err.values())  # no NaN


def test_zero_decay_equals_delta_rule():
    """With g = 0 the gated kernels compute the plain delta rule."""
    q, k, v, g, beta, h0 = make_inputs(47, 2, 37, 2, 32, 16, 2, torch.float32)
    outs = []
    for gated in (True, False):
        xs = [x.clone().requires_grad_() for x in (q, k, v, beta, h0)]
        if gated:
            o, s = chunk_gated_delta_rule(xs[0], xs[1], xs[2], torch.zeros_like(g), xs[3], initial_state=xs[4],
                                          output_final_state=True, chunk_size=16)
        else:
            o, s = chunk_delta_rule(xs[0], xs[1], xs[2], xs[3], initial_state=xs[4], output_final_state=True,
                                    chunk_size=16)
        (o.square().sum() + s.square().sum()).backward()
        outs.append([o, s] + [x.grad for x in xs])
    for name, a, b in zip(("o", "s", "dq", "dk", "dv", "dbeta", "dh0"), *outs):
        assert rel(a, b) < 1e-6, name


def test_naive_chunk_equals_recurrence():
    """The PyTorch chunk form (float64) against the recurrence of this file, values and gradients."""
    cu = torch.tensor([0, 21, 50])
    ins = make_inputs(53, 1, 50, 2, 16, 8, 2, torch.float64)
    ins[3] = ins[3].double()
    check(seed=53, B=1, T=50, H=2, K=16, V=8, chunk_size=16, cu_seqlens=cu, dtype=torch.float64, tol_o=1e-12,
          tol_g=1e-11, fn=naive_chunk_gated_delta_rule, ins=ins)

    def rec(*a, chunk_size, **kw):
        return naive_recurrent_gated_delta_rule(*a, **kw)
    ins = make_inputs(59, 2, 20, 1, 16, 8, 2, torch.float64)
    ins[3] = ins[3].double()
    check(seed=59, B=2, T=20, H=1, K=16, V=8, chunk_size=16, dtype=torch.float64, tol_o=1e-12, tol_g=1e-11,
          fn=rec, ins=ins)


# ---------------------------------------------------------------------------------------------------------------------
# fused recurrent (forward only)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("varlen", [False, True])
def test_fused_recurrent_matches_float64_and_chunk(varlen):
    B, T, H, K, V = (1, 40, 2, 32, 24) if varlen else (2, 21, 2, 32, 24)
    cu = torch.tensor([0, 13, 40], device=DEVICE) if varlen else None
    N = 2 if varlen else B
    q, k, v, g, beta, h0 = make_inputs(61, B, T, H, K, V, N, torch.float32)
    with torch.no_grad():
        o, s = fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                                cu_seqlens=cu)
        oc, sc = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu,
                                        chunk_size=16)
    ro, rs = reference(q, k, v, g, beta, K ** -0.5, h0, cu)
    assert rel(o, ro) < 2e-5 and rel(s, rs) < 2e-5
    assert rel(o, oc) < 2e-4 and rel(s, sc) < 2e-4


def test_fused_recurrent_refuses_gradients():
    q, k, v, g, beta, _ = make_inputs(67, 1, 4, 1, 16, 16, 1, torch.float32)
    with pytest.raises(ValueError, match="forward-only"):
        fused_recurrent_gated_delta_rule(q.requires_grad_(), k, v, g, beta)


# ---------------------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [chunk_gated_delta_rule, fused_recurrent_gated_delta_rule])
def test_bad_g_raises(fn):
    q, k, v, g, beta, _ = make_inputs(71, 1, 8, 2, 16, 16, 1, torch.float32)
    with pytest.raises(ValueError, match=r"g must be \[B, T, H\] = \[1, 8, 2\].*\[1, 8, 1\]"):
        fn(q, k, v, g[..., :1], beta)
    with pytest.raises(ValueError, match="g dtype torch.float64"):
        fn(q, k, v, g.double(), beta)
    with pytest.raises(ValueError, match="beta must be"):
        fn(q, k, v, g, beta[:, :4])


# ---------------------------------------------------------------------------------------------------------------------
# GPU: bfloat16 at realistic shapes, fla as a comparison peer
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("B,T,H,K,V,chunk_size", [(2, 1000, 4, 128, 128, 64), (2, 300, 2, 48, 100, 32),
                                                  (1, 400, 2, 256, 256, 64), (2, 257, 2, 16, 16, 16),
                                                  (2, 500, 3, 64, 64, 64)])  # K = 64: see test_chunk
def test_gpu_bfloat16_matches_float64(B, T, H, K, V, chunk_size):
    check(seed=T + K, B=B, T=T, H=H, K=K, V=V, chunk_size=chunk_size, dtype=torch.bfloat16, tol_o=1e-2, tol_g=2e-2)


@pytest.mark.gpu
def test_gpu_bfloat16_varlen_strong_decay_matches_float64():
    cu = torch.tensor([0, 1, 64, 64, 300, 777], dtype=torch.int32)
    check(seed=5, B=1, T=777, H=4, K=128, V=128, chunk_size=64, cu_seqlens=cu, dtype=torch.bfloat16, g_scale=4.0,
          tol_o=1e-2, tol_g=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol_o,tol_g", [(torch.float32, 2e-4, 5e-4), (torch.float16, 4e-3, 8e-3)])
def test_gpu_float32_float16_match_float64(dtype, tol_o, tol_g):
    check(seed=13, B=2, T=333, H=2, K=128, V=100, chunk_size=64, dtype=dtype, tol_o=tol_o, tol_g=tol_g)


@pytest.mark.gpu
def test_gpu_fused_recurrent_bfloat16():
    q, k, v, g, beta, h0 = make_inputs(73, 2, 300, 4, 128, 128, 2, torch.bfloat16)
    with torch.no_grad():
        o, s = fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    ro, rs = reference(q, k, v, g, beta, 128 ** -0.5, h0)
    assert rel(o, ro) < 1e-2 and rel(s, rs) < 1e-2


@pytest.mark.gpu
def test_gpu_matches_fla():
    fla_gdn = pytest.importorskip("fla.ops.gated_delta_rule")
    B, T, H, K, V = 2, 2048, 4, 128, 128
    ins = make_inputs(79, B, T, H, K, V, B, torch.bfloat16)
    ins[5] = ins[5].float()
    gen = torch.Generator(device="cuda").manual_seed(83)
    do = torch.randn(B, T, H, V, generator=gen, device="cuda", dtype=torch.bfloat16)
    dht = torch.randn(B, H, K, V, generator=gen, device="cuda")
    res = []
    for fn in (chunk_gated_delta_rule, fla_gdn.chunk_gated_delta_rule):
        xs = [x.clone().requires_grad_() for x in ins]
        o, s = fn(xs[0], xs[1], xs[2], xs[3], xs[4], initial_state=xs[5], output_final_state=True)
        torch.autograd.backward([o, s], [do, dht])
        res.append([o, s] + [x.grad for x in xs])
    names = ("o", "final_state", "dq", "dk", "dv", "dg", "dbeta", "dh0")
    err = {n: rel(a, b) for n, a, b in zip(names, *res)}
    bad = {n: e for n, e in err.items() if not e <= (1e-2 if n in ("o", "final_state") else 2e-2)}
    assert not bad, f"ours vs fla over tolerance: {bad} (all: {err})"
