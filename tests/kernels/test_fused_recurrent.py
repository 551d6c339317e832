"""fused_recurrent_delta_rule (Triton, forward + backward) against a float64 recurrence.

On CPU the Triton kernels themselves run under TRITON_INTERPRET=1 (no PyTorch fallback exists on that path).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the kernels' @triton.jit decoration

import kernels.delta_rule.fused_recurrent as fr  # noqa: E402
from kernels import fused_recurrent_delta_rule, naive_recurrent_delta_rule  # noqa: E402

# triton must be imported with TRITON_INTERPRET=1 (its own tl.* helpers are decorated at import); if an earlier
# test module imported kernels/ first, the interpreter path is broken: say so instead of failing obscurely.
INTERPRETED = type(fr.fused_recurrent_fwd_kernel).__name__ == "InterpretedFunction"


@pytest.fixture(autouse=True)
def _triton_can_run():
    if not torch.cuda.is_available() and not INTERPRETED:
        pytest.fail("triton was imported before TRITON_INTERPRET=1 was set: set it in tests/conftest.py when CUDA "
                    "is unavailable, before anything imports kernels/ or triton")


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return ((a - b).norm() / b.norm()).item()


def make_inputs(seed, B, T, H, K, V, N=None, dtype=torch.float32, device=DEVICE):
    """L2-normalised q, k; beta in (0, 1); float64 master copies cast to `dtype`."""
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g, dtype=torch.float64), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    beta = torch.rand(B, T, H, generator=g, dtype=torch.float64).clamp_min(1e-3)
    h0 = torch.randn(N or B, H, K, V, generator=g, dtype=torch.float64)
    return [x.to(device=device, dtype=dtype) for x in (q, k, v, beta, h0)]


def check_against_float64(seed, B, T, H, K, V, cu_seqlens=None, use_h0=True, dtype=torch.float32,
                          tol_o=2e-4, tol_g=5e-4):
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    ins = make_inputs(seed, B, T, H, K, V, N, dtype)
    if not use_h0:
        ins[4] = None
    ours = [None if x is None else x.clone().requires_grad_() for x in ins]
    ref = [None if x is None else x.detach().double().requires_grad_() for x in ins]  # float64 on the same device
    cu = None if cu_seqlens is None else cu_seqlens.to(DEVICE)
    o, s = fused_recurrent_delta_rule(*ours[:4], initial_state=ours[4], output_final_state=True, cu_seqlens=cu)
    ro, rs = naive_recurrent_delta_rule(*ref[:4], initial_state=ref[4], output_final_state=True, cu_seqlens=cu)
    assert o.dtype == dtype and o.shape == (B, T, H, V)
    assert s.dtype == torch.float32 and s.shape == (N, H, K, V)
    assert rel(o, ro) <= tol_o, f"o rel err {rel(o, ro)}"
    assert rel(s, rs) <= tol_o, f"final_state rel err {rel(s, rs)}"
    g = torch.Generator().manual_seed(seed + 1)
    do = torch.randn(ro.shape, generator=g, dtype=torch.float64).to(DEVICE)
    ds = torch.randn(rs.shape, generator=g, dtype=torch.float64).to(DEVICE)
    torch.autograd.backward([o, s], [do.to(dtype), ds.float()])
    torch.autograd.backward([ro, rs], [do, ds])
    for name, a, b in zip(("dq", "dk", "dv", "dbeta", "dh0"), ours, ref):
        if a is None:
            continue
        assert a.grad is not None and a.grad.dtype == a.dtype, name
        assert rel(a.grad, b.grad) <= tol_g, f"{name} rel err {rel(a.grad, b.grad)}"


@pytest.mark.parametrize("use_h0", [True, False])
def test_fp32_odd_length_matches_float64(use_h0):
    B, T, H = (2, 21, 1) if use_h0 else (1, 37, 2)
    check_against_float64(seed=10 + use_h0, B=B, T=T, H=H, K=16, V=32, use_h0=use_h0)


def test_fp32_non_power_of_two_dims_k_ne_v():
    check_against_float64(seed=20, B=1, T=19, H=1, K=48, V=100)


@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
def test_fp32_varlen_matches_float64(idx_dtype):
    # includes an empty sequence: its final state is its initial state and d initial_state is d final_state
    cu = torch.tensor([0, 7, 7, 30, 41], dtype=idx_dtype)
    check_against_float64(seed=30, B=1, T=41, H=2, K=32, V=16, cu_seqlens=cu)


def test_varlen_equals_separate_calls():
    cu = [0, 9, 25]
    q, k, v, beta, h0 = make_inputs(40, 1, 25, 2, 16, 16, N=2)
    o, s = fused_recurrent_delta_rule(q, k, v, beta, initial_state=h0, output_final_state=True,
                                      cu_seqlens=torch.tensor(cu, device=DEVICE))
    for i in range(2):
        a, b = cu[i], cu[i + 1]
        oi, si = fused_recurrent_delta_rule(q[:, a:b], k[:, a:b], v[:, a:b], beta[:, a:b],
                                            initial_state=h0[i:i + 1], output_final_state=True)
        torch.testing.assert_close(o[:, a:b], oi, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(s[i:i + 1], si, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    check_against_float64(seed=50, B=1, T=24, H=2, K=16, V=16, dtype=dtype, tol_o=1e-2, tol_g=2e-2)


def test_no_grad_forward_and_custom_scale():
    q, k, v, beta, _ = make_inputs(60, 1, 12, 1, 16, 16)
    with torch.no_grad():
        o, s = fused_recurrent_delta_rule(q, k, v, beta, scale=0.3)
    ro, _ = naive_recurrent_delta_rule(q.cpu().double(), k.cpu().double(), v.cpu().double(), beta.cpu().double(),
                                       scale=0.3)
    assert s is None
    assert rel(o, ro) <= 2e-4


def test_bad_inputs_raise_value_error():
    q, k, v, beta, h0 = make_inputs(70, 2, 8, 1, 16, 16)
    with pytest.raises(ValueError, match="beta"):
        fused_recurrent_delta_rule(q, k, v, beta[:, :4])
    with pytest.raises(ValueError, match="initial_state"):
        fused_recurrent_delta_rule(q, k, v, beta, initial_state=h0[:1])
    with pytest.raises(ValueError, match="cu_seqlens"):
        fused_recurrent_delta_rule(q[:1], k[:1], v[:1], beta[:1], cu_seqlens=torch.tensor([0, 5, 3, 8], device=DEVICE))


# ----------------------------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.parametrize("K,V", [(128, 128), (64, 64), (256, 256), (48, 100)])
def test_gpu_bf16_matches_float64(K, V):
    cu = torch.tensor([0, 300, 301, 1000, 2049])
    check_against_float64(seed=80, B=1, T=2049, H=4, K=K, V=V, cu_seqlens=cu, dtype=torch.bfloat16,
                          tol_o=1e-2, tol_g=2e-2)


@pytest.mark.gpu
def test_gpu_matches_fla_fused_recurrent():
    fla_ops = pytest.importorskip("fla.ops.delta_rule")
    q, k, v, beta, h0 = make_inputs(90, 2, 1000, 4, 64, 64, dtype=torch.bfloat16)
    h0 = h0.float()
    o, s = fused_recurrent_delta_rule(q, k, v, beta, initial_state=h0, output_final_state=True)
    fo, fs = fla_ops.fused_recurrent_delta_rule(q, k, v, beta, initial_state=h0, output_final_state=True)
    assert rel(o, fo) <= 1e-2 and rel(s, fs) <= 1e-2


@pytest.mark.gpu
def test_gpu_64bit_offsets_and_large_grid():
    # B*T*H*K = 2^17 * 130 * 128 > 2^31 and N*H = 131072 > 65535 programs on grid axis 0.
    B, T, H, D = 2 ** 17, 130, 1, 128
    g = torch.Generator(device="cuda").manual_seed(100)
    q = torch.nn.functional.normalize(torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, generator=g), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, generator=g), dim=-1)
    v = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, generator=g)
    beta = torch.rand(B, T, H, device="cuda", dtype=torch.bfloat16, generator=g)
    with torch.no_grad():
        o, s = fused_recurrent_delta_rule(q, k, v, beta, output_final_state=True)
    for b in (0, B // 2, B - 1):  # the last sequence sits past the 2^31 element offset
        ro, rs = naive_recurrent_delta_rule(*(x[b:b + 1].double() for x in (q, k, v, beta)), output_final_state=True)
        assert rel(o[b:b + 1], ro) <= 1e-2 and rel(s[b:b + 1], rs) <= 1e-2
