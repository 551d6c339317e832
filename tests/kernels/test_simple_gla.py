"""chunk_simple_gla / fused_recurrent_simple_gla (Triton, scalar decay per token and head: RetNet, SSD) against a
float64 recurrence written here: o, final state and the gradients of q, k, v, g and the initial state."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (see conftest.py)

from kernels import chunk_settings, chunk_simple_gla, fused_recurrent_simple_gla  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.usefixtures("require_interpreter")


def rel(a, b):
    a, b = a.detach().double(), b.detach().double().to(a.device)
    return ((a - b).norm() / b.norm()).item()


def reference(q, k, v, g, scale, h0=None, cu_seqlens=None):
    """Float64: S <- exp(g) S + k v^T, o = scale S^T q."""
    q, k, v, g = (x.double() for x in (q, k, v, g))
    B, T, H, K = q.shape
    cs = [0, T] if cu_seqlens is None else cu_seqlens.tolist()
    segs = [(slice(None), 0, T)] if cu_seqlens is None else [(slice(0, 1), cs[i], cs[i + 1]) for i in range(len(cs) - 1)]
    N = B if cu_seqlens is None else len(segs)
    S0 = h0.double() if h0 is not None else q.new_zeros(N, H, K, v.shape[-1])
    outs, finals = [], []
    for n, (rows, s, e) in enumerate(segs):
        S = S0 if cu_seqlens is None else S0[n:n + 1]
        for t in range(s, e):
            S = S * g[rows, t].exp()[..., None, None] + k[rows, t][..., None] * v[rows, t][..., None, :]
            outs.append(scale * torch.einsum("bhkv,bhk->bhv", S, q[rows, t]))
        finals.append(S)
    return torch.stack(outs, 1), torch.cat(finals, 0)


def make_inputs(seed, B, T, H, K, V, N, dtype, retnet=False):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, K, generator=gen, dtype=torch.float64) * K ** -0.25 for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    if retnet:  # RetNet's fixed multi-scale decays, gamma_h = 1 - 2^(-5 - h)
        g = torch.tensor([math.log(1 - 2 ** (-5 - h)) for h in range(H)], dtype=torch.float64).expand(B, T, H)
    else:
        g = -F.softplus(torch.randn(B, T, H, generator=gen, dtype=torch.float64))
    h0 = torch.randn(N, H, K, V, generator=gen, dtype=torch.float64)
    return ([x.to(DEVICE, dtype) for x in (q, k, v)] + [g.to(DEVICE, torch.float32).contiguous()]
            + [h0.to(DEVICE, dtype)])


def check(seed, B, T, H, K, V, chunk_size, cu_seqlens=None, use_h0=True, dtype=torch.float32, retnet=False,
          tol_o=2e-4, tol_g=5e-4):
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    ins = make_inputs(seed, B, T, H, K, V, N, dtype, retnet)
    if not use_h0:
        ins[4] = None
    ours = [None if x is None else x.clone().requires_grad_() for x in ins]
    refs = [None if x is None else x.detach().double().requires_grad_() for x in ins]
    cu = None if cu_seqlens is None else cu_seqlens.to(DEVICE)
    o, s = chunk_simple_gla(*ours[:4], initial_state=ours[4], output_final_state=True, cu_seqlens=cu,
                            chunk_size=chunk_size)
    ro, rs = reference(*refs[:4], K ** -0.5, refs[4], cu)
    err = {"o": rel(o, ro), "final_state": rel(s, rs)}
    gen = torch.Generator().manual_seed(seed + 1)
    do = torch.randn(ro.shape, generator=gen, dtype=torch.float64).to(DEVICE)
    dht = torch.randn(rs.shape, generator=gen, dtype=torch.float64).to(DEVICE)
    torch.autograd.backward([o, s], [do.to(dtype), dht.float()])
    torch.autograd.backward([ro, rs], [do, dht])
    for name, a, b in zip(("dq", "dk", "dv", "dg", "dh0"), ours, refs):
        if a is not None:
            assert a.grad is not None and a.grad.dtype == a.dtype, name
            err[name] = rel(a.grad, b.grad)
    bad = {n: e for n, e in err.items() if not e <= (tol_o if n in ("o", "final_state") else tol_g)}
    assert not bad, f"relative errors over tolerance: {bad} (all: {err})"


@pytest.mark.parametrize("chunk_size,T", [(16, 37), (64, 70)])
def test_odd_lengths(chunk_size, T):
    check(seed=300 + chunk_size, B=2, T=T, H=2, K=32, V=16, chunk_size=chunk_size)


def test_retnet_decays_varlen_without_initial_state():
    cu = torch.tensor([0, 7, 7, 40], dtype=torch.int32)
    check(seed=303, B=1, T=40, H=3, K=16, V=32, chunk_size=16, cu_seqlens=cu, use_h0=False, retnet=True)


def test_wide_keys_kept_and_recomputed_states():
    cu = torch.tensor([0, 19, 50])
    check(seed=307, B=1, T=50, H=1, K=160, V=40, chunk_size=16, cu_seqlens=cu)
    with chunk_settings(keep_states=False):
        check(seed=309, B=1, T=50, H=1, K=160, V=40, chunk_size=16, cu_seqlens=cu)


def test_float16():
    check(seed=311, B=1, T=45, H=2, K=32, V=16, chunk_size=16, dtype=torch.float16, tol_o=4e-3, tol_g=8e-3)


def test_fused_recurrent_matches_float64():
    cu = torch.tensor([0, 13, 40], device=DEVICE)
    q, k, v, g, h0 = make_inputs(313, 1, 40, 2, 32, 24, 2, torch.float32)
    with torch.no_grad():
        o, s = fused_recurrent_simple_gla(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    ro, rs = reference(q, k, v, g, 32 ** -0.5, h0, cu)
    assert rel(o, ro) < 2e-5 and rel(s, rs) < 2e-5
    with pytest.raises(ValueError, match="forward-only"):
        fused_recurrent_simple_gla(q.requires_grad_(), k, v, g)


def test_bad_g_raises():
    q, k, v, g, _ = make_inputs(317, 1, 8, 2, 16, 16, 1, torch.float32)
    with pytest.raises(ValueError, match=r"g must be \[B, T, H\]"):
        chunk_simple_gla(q, k, v, g[:, :4])


@pytest.mark.gpu
# K = 64: see test_chunk's GPU shapes
@pytest.mark.parametrize("B,T,H,K,V", [(2, 1000, 4, 128, 128), (1, 400, 2, 256, 256), (2, 500, 3, 64, 64)])
def test_gpu_bfloat16_matches_float64(B, T, H, K, V):
    check(seed=T, B=B, T=T, H=H, K=K, V=V, chunk_size=64, dtype=torch.bfloat16, tol_o=1e-2, tol_g=2e-2)


@pytest.mark.gpu
def test_gpu_matches_fla():
    fla_sgla = pytest.importorskip("fla.ops.simple_gla")
    B, T, H, K, V = 2, 2048, 4, 128, 128
    q, k, v, g, h0 = make_inputs(331, B, T, H, K, V, B, torch.bfloat16)
    h0 = h0.float()
    gen = torch.Generator(device="cuda").manual_seed(337)
    do = torch.randn(B, T, H, V, generator=gen, device="cuda", dtype=torch.bfloat16)
    res = []
    for fn in (chunk_simple_gla, fla_sgla.chunk_simple_gla):
        xs = [x.clone().requires_grad_() for x in (q, k, v, g, h0)]
        o, _ = fn(xs[0], xs[1], xs[2], xs[3], initial_state=xs[4], output_final_state=True)
        o.backward(do)
        res.append([o] + [x.grad for x in xs])
    err = {n: rel(a, b) for n, a, b in zip(("o", "dq", "dk", "dv", "dg", "dh0"), *res)}
    assert all(e <= 2e-2 for e in err.values()), err
