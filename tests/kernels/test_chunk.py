"""chunk_delta_rule (Triton, forward + backward) against a float64 recurrence written here.

On CPU the Triton kernels themselves run under TRITON_INTERPRET=1 (set by tests/kernels/conftest.py): float32 only
(relative error <= 2e-4 for o and the final state, <= 5e-4 for every gradient) plus one float16 check; the CPU
interpreter's bfloat16 tl.dot returns garbage in triton 3.9 (a fault of the interpreter, not of the kernels), so
bfloat16 is tested on the GPU (marker `gpu`): <= 1e-2 / 2e-2 against float64, agreement with fla, 64-bit offsets and
a grid with N*H > 65535.
"""
import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (see conftest.py)

from kernels import KernelSettings, chunk_settings  # noqa: E402
from kernels.delta_rule.chunk import chunk_delta_rule  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.usefixtures("require_interpreter")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double().to(a.device)
    return ((a - b).norm() / b.norm()).item()


def reference(q, k, v, beta, scale, h0=None, cu_seqlens=None):
    """Float64 recurrence, token by token: S <- S + beta k (v - S^T k)^T, o = scale S^T q. Returns (o, final)."""
    q, k, v, beta = (x.double() for x in (q, k, v, beta))
    B, T, H, K = q.shape
    V = v.shape[-1]
    if cu_seqlens is None:
        segs = [(slice(None), 0, T)]  # all batch rows at once
        S0 = h0.double() if h0 is not None else q.new_zeros(B, H, K, V)
    else:
        cs = cu_seqlens.tolist()
        segs = [(slice(0, 1), cs[i], cs[i + 1]) for i in range(len(cs) - 1)]
        S0 = h0.double() if h0 is not None else q.new_zeros(len(segs), H, K, V)
    outs, finals = [], []
    for n, (rows, s, e) in enumerate(segs):
        S = S0 if cu_seqlens is None else S0[n:n + 1]
        for t in range(s, e):
            k_t, v_t, b_t = k[rows, t], v[rows, t], beta[rows, t]  # (b, H, K), (b, H, V), (b, H)
            S = S + b_t[..., None, None] * k_t[..., None] * (v_t - torch.einsum("bhkv,bhk->bhv", S, k_t))[..., None, :]
            outs.append(scale * torch.einsum("bhkv,bhk->bhv", S, q[rows, t]))
        finals.append(S)
    o = torch.stack(outs, 1) if cu_seqlens is None else torch.stack(outs, 1)  # (b, T, H, V)
    return o, torch.cat(finals, 0)


def make_inputs(seed, B, T, H, K, V, N, dtype, device=DEVICE):
    """L2-normalised q, k; beta in (0, 1); random initial state. Float64 masters, cast to dtype on device."""
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, T, H, K, generator=g, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(B, T, H, K, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    beta = torch.rand(B, T, H, generator=g, dtype=torch.float64).clamp(1e-3, 1 - 1e-3)
    h0 = torch.randn(N, H, K, V, generator=g, dtype=torch.float64)
    return [x.to(device=device, dtype=dtype) for x in (q, k, v, beta)] + [h0.to(device=device, dtype=dtype)]


def check(seed, B, T, H, K, V, chunk_size, cu_seqlens=None, use_h0=True, final_grad=True, dtype=torch.float32,
          scale=None, tol_o=2e-4, tol_g=5e-4):
    """Forward (o, final state) and gradients of q, k, v, beta, initial_state against the float64 recurrence."""
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    ins = make_inputs(seed, B, T, H, K, V, N, dtype)
    if not use_h0:
        ins[4] = None
    ours = [None if x is None else x.clone().requires_grad_() for x in ins]
    refs = [None if x is None else x.detach().double().requires_grad_() for x in ins]
    cu = None if cu_seqlens is None else cu_seqlens.to(DEVICE)
    o, s = chunk_delta_rule(*ours[:4], scale=scale, initial_state=ours[4], output_final_state=final_grad,
                            cu_seqlens=cu, chunk_size=chunk_size)
    ro, rs = reference(*refs[:4], K ** -0.5 if scale is None else scale, refs[4], cu)
    assert o.shape == (B, T, H, V) and o.dtype == dtype
    err = {"o": rel(o, ro)}
    if final_grad:
        assert s.shape == (N, H, K, V) and s.dtype == torch.float32
        err["final_state"] = rel(s, rs)
    else:
        assert s is None
    g = torch.Generator().manual_seed(seed + 1)
    do = torch.randn(ro.shape, generator=g, dtype=torch.float64).to(DEVICE)
    dht = torch.randn(rs.shape, generator=g, dtype=torch.float64).to(DEVICE)
    if final_grad:
        torch.autograd.backward([o, s], [do.to(dtype), dht.float()])
        torch.autograd.backward([ro, rs], [do, dht])
    else:
        o.backward(do.to(dtype))
        ro.backward(do)
    for name, a, b in zip(("dq", "dk", "dv", "dbeta", "dh0"), ours, refs):
        if a is not None:
            assert a.grad is not None and a.grad.dtype == a.dtype and a.grad.shape == a.shape, name
            err[name] = rel(a.grad, b.grad)
    bad = {n: e for n, e in err.items() if not e <= (tol_o if n in ("o", "final_state") else tol_g)}
    assert not bad, f"relative errors over tolerance: {bad} (all: {err})"
    return err


# ---------------------------------------------------------------------------------------------------------------------
# float32 through the interpreter on CPU (compiled on GPU)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size,T", [(16, 37), (32, 45), (64, 70)])
def test_odd_lengths_every_chunk_size(chunk_size, T):
    check(seed=100 + chunk_size, B=2, T=T, H=1, K=32, V=16, chunk_size=chunk_size)


def test_no_initial_state_no_final_state_custom_scale():
    check(seed=7, B=1, T=40, H=2, K=16, V=32, chunk_size=16, use_h0=False, final_grad=False, scale=0.3)


def test_shorter_than_one_chunk():
    check(seed=8, B=2, T=5, H=1, K=16, V=16, chunk_size=64)


@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
def test_varlen_packed_sequences(idx_dtype):
    # an empty sequence, lengths that are not multiples of the chunk, a sequence spanning several chunks
    cu = torch.tensor([0, 9, 9, 30, 47], dtype=idx_dtype)
    check(seed=30 + (idx_dtype == torch.int64), B=1, T=47, H=2, K=16, V=16, chunk_size=16, cu_seqlens=cu)


@pytest.mark.parametrize("K,V", [(48, 100), (100, 48)])
def test_non_power_of_two_head_dims(K, V):
    check(seed=K + V, B=1, T=21, H=1, K=K, V=V, chunk_size=16)


def test_largest_key_dim():
    """K = 256: the sequential kernels hold the state as four 64-row blocks, dv_local runs as its own kernel, and
    the backward reuses the forward's chunk states (under "auto" as under the default)."""
    check(seed=256, B=1, T=20, H=1, K=256, V=16, chunk_size=16)


@pytest.mark.parametrize("keep", [True, False])
def test_kept_states_equal_recomputed(keep):  # "auto" recomputes here (K = 32)
    """The backward gives the same gradients whether it reuses the forward's h, V' or recomputes them."""
    ins = make_inputs(7, 1, 37, 2, 32, 16, 1, torch.float32)
    grads = []
    for mode in (keep, "auto"):
        with chunk_settings(keep_states=mode):
            xs = [x.clone().requires_grad_() for x in ins]
            o, s = chunk_delta_rule(*xs[:4], initial_state=xs[4], output_final_state=True, chunk_size=16)
        (o.square().sum() + s.sum()).backward()  # outside the block: the backward keeps the forward's settings
        grads.append([x.grad for x in xs])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_folded_block_grid_equals_2d_grid():
    """fwd_o and bwd_dqkw give the same results on the folded 1-D grid as on the 2-D grid (K = V = 128: two blocks
    each), and folded runs (dv_local too, at K = 256) match float64."""
    ins = make_inputs(8, 1, 21, 1, 128, 128, 1, torch.float32)
    res = []
    for fold in (True, False):
        with chunk_settings(fold_blocks=fold, keep_states=False):  # K = 128: dv_local inline; the usual path
            xs = [x.clone().requires_grad_() for x in ins]
            o, s = chunk_delta_rule(*xs[:4], initial_state=xs[4], output_final_state=True, chunk_size=16)
            (o.square().sum() + s.sum()).backward()
        res.append([o, s] + [x.grad for x in xs])
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    with chunk_settings(fold_blocks=True):
        check(seed=9, B=1, T=21, H=1, K=128, V=128, chunk_size=16)
        check(seed=10, B=1, T=20, H=1, K=256, V=16, chunk_size=16)  # dv_local (K > 128) on the folded grid too


@pytest.mark.parametrize("K,V,tile", [(128, 100, (32, 128)), (160, 100, (128, 32))], ids=["bk32-bv128", "bk128-bv32"])
def test_tile_overrides_match_float64(K, V, tile):
    """Other (BK, BV) tiles of the chunk-parallel kernels, with more or fewer blocks per chunk than the default
    64 x 64 and a partial last block (V = 100), still match float64; a tile giving more than four blocks per chunk
    is refused."""
    names = ("wy_fwd", "fwd_o", "bwd_dv_local", "bwd_dqkw", "wy_bwd")
    with chunk_settings(**{n: KernelSettings(tile=tile) for n in names}):
        check(seed=11, B=1, T=21, H=1, K=K, V=V, chunk_size=16)
    q = torch.randn(1, 16, 1, 160, device=DEVICE)
    with chunk_settings(fwd_o=KernelSettings(tile=(32, 64))):
        with pytest.raises(ValueError, match="more than 4 blocks per chunk at K=160"):
            chunk_delta_rule(q, q, q[..., :64], torch.rand(1, 16, 1, device=DEVICE))


def test_row_by_row_inverse_matches_float64():
    """The row-by-row form of (I + L)^-1 (blocked_inv=False) matches float64 too."""
    with chunk_settings(blocked_inv=False):
        check(seed=12, B=1, T=45, H=1, K=32, V=16, chunk_size=32)


def test_float16_inputs():
    check(seed=16, B=1, T=40, H=1, K=32, V=32, chunk_size=32, dtype=torch.float16, tol_o=4e-3, tol_g=8e-3)


def test_varlen_equals_separate_calls():
    """Packing sequences with cu_seqlens gives exactly what each sequence gives alone (per-sequence states)."""
    lens = [13, 20]
    ins = make_inputs(5, 1, sum(lens), 1, 16, 16, len(lens), torch.float32)
    cu = torch.tensor([0, lens[0], sum(lens)], device=DEVICE)
    o, s = chunk_delta_rule(*ins[:4], initial_state=ins[4], output_final_state=True, cu_seqlens=cu, chunk_size=16)
    for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        o_n, s_n = chunk_delta_rule(*(x[:, a:b] for x in ins[:4]), initial_state=ins[4][n:n + 1],
                                    output_final_state=True, chunk_size=16)
        torch.testing.assert_close(o[:, a:b], o_n, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(s[n:n + 1], s_n, rtol=1e-5, atol=1e-6)


def test_cpu_path_is_the_triton_interpreter():
    """On CPU the chunk kernels are Triton-interpreted functions: nothing falls back to PyTorch silently."""
    if DEVICE != "cpu":
        pytest.skip("CPU-only check")
    from kernels.common import chunk_h, chunk_o, wy

    for mod, name in ((wy, "wy_fwd_kernel"), (chunk_h, "fwd_h_kernel"), (chunk_o, "fwd_o_kernel"),
                      (chunk_h, "bwd_dv_local_kernel"), (chunk_h, "bwd_dhu_kernel"), (chunk_o, "bwd_dqkw_kernel"),
                      (wy, "wy_bwd_kernel")):
        assert type(getattr(mod, name)).__name__ == "InterpretedFunction", name


# ---------------------------------------------------------------------------------------------------------------------
# GPU (compiled Triton on CUDA)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize(
    "B,T,H,K,V,chunk_size",
    # K = 64 at 64-token chunks: 64-wide blocks, where Triton 3.4 to 3.7.0 is known to miscompile transposed
    # products of dot results on Hopper; only a GPU run can catch that
    [(2, 1000, 4, 128, 128, 64), (2, 300, 2, 48, 100, 32), (1, 400, 2, 256, 256, 64), (2, 257, 2, 16, 16, 16),
     (2, 500, 3, 64, 64, 64)],
)
def test_gpu_bfloat16_matches_float64(B, T, H, K, V, chunk_size):
    check(seed=T + K, B=B, T=T, H=H, K=K, V=V, chunk_size=chunk_size, dtype=torch.bfloat16, tol_o=1e-2, tol_g=2e-2)


@pytest.mark.gpu
def test_gpu_bfloat16_varlen_matches_float64():
    cu = torch.tensor([0, 1, 64, 64, 300, 777], dtype=torch.int32)
    check(seed=3, B=1, T=777, H=4, K=128, V=64, chunk_size=64, cu_seqlens=cu, dtype=torch.bfloat16, tol_o=1e-2,
          tol_g=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol_o,tol_g", [(torch.bfloat16, 1e-2, 2e-2), (torch.float32, 2e-4, 5e-4)])
def test_gpu_wide_heads_varlen_match_float64(dtype, tol_o, tol_g):
    """K, V > 128 take their own launch settings (launch_wide), kept chunk states and folded grids: check them with
    packed sequences, a K that is not a power of two (200: a partial last 64-row state block) and both precisions."""
    cu = torch.tensor([0, 70, 70, 333, 450], dtype=torch.int32)
    check(seed=21, B=1, T=450, H=2, K=200, V=256, chunk_size=64, cu_seqlens=cu, dtype=dtype, tol_o=tol_o,
          tol_g=tol_g)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol_o,tol_g", [(torch.float32, 2e-4, 5e-4), (torch.float16, 4e-3, 8e-3)])
def test_gpu_float32_float16_match_float64(dtype, tol_o, tol_g):
    check(seed=11, B=2, T=333, H=2, K=128, V=100, chunk_size=64, dtype=dtype, tol_o=tol_o, tol_g=tol_g)


@pytest.mark.gpu
def test_gpu_matches_fla():
    fla_delta = pytest.importorskip("fla.ops.delta_rule")
    B, T, H, K, V = 2, 2048, 4, 128, 128
    ins = make_inputs(42, B, T, H, K, V, B, torch.bfloat16)
    ins[4] = ins[4].float()
    g = torch.Generator(device="cuda").manual_seed(43)
    do = torch.randn(B, T, H, V, generator=g, device="cuda", dtype=torch.bfloat16)
    dht = torch.randn(B, H, K, V, generator=g, device="cuda")
    res = []
    for fn in (chunk_delta_rule, fla_delta.chunk_delta_rule):
        xs = [x.clone().requires_grad_() for x in ins]
        o, s = fn(xs[0], xs[1], xs[2], xs[3], initial_state=xs[4], output_final_state=True)
        torch.autograd.backward([o, s], [do, dht])
        res.append([o, s] + [x.grad for x in xs])
    names = ("o", "final_state", "dq", "dk", "dv", "dbeta", "dh0")
    err = {n: rel(a, b) for n, a, b in zip(names, *res)}
    bad = {n: e for n, e in err.items() if not e <= (1e-2 if n in ("o", "final_state") else 2e-2)}
    assert not bad, f"ours vs fla over tolerance: {bad} (all: {err})"


@pytest.mark.gpu
@pytest.mark.parametrize("varlen", [False, True])
def test_gpu_64bit_offsets(varlen):
    """More than 2^31 elements per input: rows/sequences beyond element 2^31 must equal a run on that slice alone."""
    H, K = 16, 64
    if varlen:
        B, T = 1, 2 ** 31 // (H * K) + 700
        cu = torch.tensor([0, 300, T - 400, T], device="cuda")
        slices = [(0, 300), (T - 400, T)]
    else:
        B, T = 2 ** 31 // (512 * H * K) + 2, 512
        cu = None
    assert B * T * H * K > 2 ** 31
    torch.manual_seed(0)
    q = F.normalize(torch.randn(B, T, H, K, device="cuda", dtype=torch.bfloat16), dim=-1)
    k = F.normalize(torch.randn(B, T, H, K, device="cuda", dtype=torch.bfloat16), dim=-1)
    v = torch.randn(B, T, H, K, device="cuda", dtype=torch.bfloat16)
    beta = torch.rand(B, T, H, device="cuda", dtype=torch.bfloat16)
    xs = [x.requires_grad_() for x in (q, k, v, beta)]
    o, s = chunk_delta_rule(*xs, output_final_state=True, cu_seqlens=cu)
    do = torch.randn_like(o)
    o.backward(do)
    if varlen:
        pieces = [(n, (slice(None), slice(a, b))) for n, (a, b) in zip((0, 2), slices)]
    else:
        pieces = [(0, (slice(0, 1),)), (B - 1, (slice(B - 1, B),))]
    for n, idx in pieces:
        ys = [x.detach()[idx].clone().requires_grad_() for x in (q, k, v, beta)]
        o_n, s_n = chunk_delta_rule(*ys, output_final_state=True)
        o_n.backward(do[idx])
        assert rel(o[idx], o_n) < 1e-3 and rel(s[n:n + 1], s_n) < 1e-3, (n, rel(o[idx], o_n), rel(s[n:n + 1], s_n))
        for x, y in zip(xs, ys):
            assert rel(x.grad[idx], y.grad) < 1e-3, (n, rel(x.grad[idx], y.grad))
        ro, rs = reference(*[y.detach() for y in ys], K ** -0.5)
        assert rel(o_n, ro) < 1e-2 and rel(s_n, rs) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("varlen", [False, True])
def test_gpu_more_than_65535_sequence_heads(varlen):
    """N*H = 67200 programs on the sequential kernels' grid axis 0 (axes 1/2 stop at 65535)."""
    N, T, H = 4200, 20, 16
    cu = torch.arange(0, N + 1, device="cuda") * T if varlen else None
    B, Tt = (1, N * T) if varlen else (N, T)
    ins = make_inputs(9, N, T, H, 16, 16, N, torch.bfloat16)
    xs = [x.reshape(B, Tt, *x.shape[2:]).clone().requires_grad_() for x in ins[:4]] + [ins[4].clone().requires_grad_()]
    o, s = chunk_delta_rule(*xs[:4], initial_state=xs[4], output_final_state=True, cu_seqlens=cu, chunk_size=16)
    ys = [x.detach().double().requires_grad_() for x in ins]
    ro, rs = reference(*ys[:4], 16 ** -0.5, ys[4])
    assert rel(o.reshape(ro.shape), ro) < 1e-2 and rel(s, rs) < 1e-2
    do = torch.randn_like(ro)
    o.backward(do.reshape(o.shape).to(o.dtype))
    ro.backward(do)
    for x, y in zip(xs, ys):
        assert rel(x.grad.reshape(y.shape), y.grad) < 2e-2
