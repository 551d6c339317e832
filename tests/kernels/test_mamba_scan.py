"""selective_scan (Triton chunked scan, forward + backward) and selective_scan_step against a float64 recurrence.

On CPU the Triton kernels themselves run under TRITON_INTERPRET=1 (no PyTorch fallback exists on that path), so
shapes stay tiny; the `gpu` tests run realistic shapes (D = 2048, N = 16, T up to 8192) in bf16 and fp32.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the kernels' @triton.jit decoration

import kernels.mamba.scan as scan_mod  # noqa: E402
from kernels.mamba import (  # noqa: E402
    ScanTuning,
    naive_selective_scan,
    naive_selective_scan_step,
    selective_scan,
    selective_scan_step,
)

INTERPRETED = type(scan_mod._selective_scan_fwd_kernel).__name__ == "InterpretedFunction"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("x", "dt", "A", "B", "C", "D", "z", "initial_state", "dt_bias")


@pytest.fixture(autouse=True)
def _triton_can_run():
    if not torch.cuda.is_available() and not INTERPRETED:
        pytest.fail("triton was imported before TRITON_INTERPRET=1 was set: set it in tests/conftest.py when CUDA "
                    "is unavailable, before anything imports kernels/ or triton")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(seed, Bsz, T, D, N, S=None, dtype=torch.float32, device=DEVICE):
    """Mamba-like inputs: dt = softplus(.) in about (0.005, 1), A = -exp(A_log) with S4D-real magnitudes 1..N
    (scaled), unit-variance x, B, C, z, D; float64 masters cast to `dtype` (A, D and the state stay float32)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x = r(Bsz, T, D)
    dt = torch.nn.functional.softplus(r(Bsz, T, D) - 2.0)
    A = -torch.arange(1, N + 1, dtype=torch.float64).repeat(D, 1) * torch.rand(D, 1, generator=g,
                                                                               dtype=torch.float64).add(0.2)
    B, C = r(Bsz, T, N), r(Bsz, T, N)
    Dk = r(D)
    z = r(Bsz, T, D)
    h0 = r(S or Bsz, D, N)
    low = [t.to(device=device, dtype=dtype) for t in (x, dt)]
    mid = [A.to(device=device, dtype=torch.float32)]
    rest = [B.to(device=device, dtype=dtype), C.to(device=device, dtype=dtype), Dk.to(device=device, dtype=torch.float32),
            z.to(device=device, dtype=dtype), h0.to(device=device, dtype=torch.float32)]
    return low + mid + rest


def check_against_float64(seed, Bsz, T, D, N, *, dtype=torch.float32, use_D=True, use_z=True, use_h0=True,
                          final_state=True, cu_seqlens=None, tol_o=1e-5, tol_g=1e-5, tuning=None, fused_dt=False):
    """fused_dt: dt is passed raw (about N(-4, 1)) with a float32 dt_bias, softplus applied inside the kernel."""
    S = Bsz if cu_seqlens is None else len(cu_seqlens) - 1
    ins = make_inputs(seed, Bsz, T, D, N, S, dtype)
    g = torch.Generator().manual_seed(seed + 2)
    if fused_dt:
        ins[1] = torch.randn(Bsz, T, D, generator=g).to(device=DEVICE, dtype=dtype)
    ins.append(torch.randn(D, generator=g).sub(4.0).to(DEVICE) if fused_dt else None)
    for i, use in ((5, use_D), (6, use_z), (7, use_h0)):
        if not use:
            ins[i] = None
    ours = [None if t is None else t.clone().requires_grad_() for t in ins]
    ref = [None if t is None else t.detach().double().requires_grad_() for t in ins]
    cu = None if cu_seqlens is None else torch.tensor(cu_seqlens, device=DEVICE)
    kw = {} if tuning is None else {"tuning": tuning}
    o, h = selective_scan(*ours[:7], initial_state=ours[7], output_final_state=final_state, cu_seqlens=cu,
                          dt_bias=ours[8], dt_softplus=fused_dt, **kw)
    ro, rh = naive_selective_scan(*ref[:7], initial_state=ref[7], output_final_state=final_state, cu_seqlens=cu,
                                  dt_bias=ref[8], dt_softplus=fused_dt)
    assert o.dtype == dtype and o.shape == (Bsz, T, D)
    assert rel(o, ro) <= tol_o, f"out rel err {rel(o, ro)}"
    if final_state:
        assert h.dtype == torch.float32 and h.shape == (S, D, N)
        assert rel(h, rh) <= tol_o, f"final_state rel err {rel(h, rh)}"
    else:
        assert h is None
    g = torch.Generator().manual_seed(seed + 1)
    do = torch.randn(ro.shape, generator=g, dtype=torch.float64).to(DEVICE)
    outs, grads, routs, rgrads = [o], [do.to(dtype)], [ro], [do]
    if final_state:  # the final state's gradient flows back into everything, the initial state included
        dh = torch.randn(rh.shape, generator=g, dtype=torch.float64).to(DEVICE)
        outs, grads, routs, rgrads = outs + [h], grads + [dh.float()], routs + [rh], rgrads + [dh]
    torch.autograd.backward(outs, grads)
    torch.autograd.backward(routs, rgrads)
    for name, a, b in zip(NAMES, ours, ref):
        if a is None:
            continue
        assert a.grad is not None and a.grad.dtype == a.dtype and a.grad.shape == a.shape, name
        assert rel(a.grad, b.grad) <= tol_g, f"d{name} rel err {rel(a.grad, b.grad)}"


@pytest.mark.parametrize("use_h0", [True, False])
def test_fp32_odd_length_matches_float64(use_h0):
    """T = 37 and 21 are not multiples of the 16-token chunk; D = 20 is not a multiple of the channel block."""
    Bsz, T = (2, 37) if use_h0 else (1, 21)
    check_against_float64(seed=1 + use_h0, Bsz=Bsz, T=T, D=20, N=5, use_h0=use_h0)


def test_fp32_without_D_z_or_final_state():
    check_against_float64(seed=3, Bsz=2, T=19, D=16, N=4, use_D=False, use_z=False, final_state=False)


def test_fp32_other_block_sizes_and_one_token():
    check_against_float64(seed=4, Bsz=1, T=45, D=24, N=16, tuning=ScanTuning(BT=8, BD=8, bwd_BD=32))
    check_against_float64(seed=5, Bsz=2, T=1, D=8, N=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_dt_bias_and_softplus_match_float64(dtype):
    """softplus(dt + dt_bias) inside the kernel: the gradients of raw dt and of the bias, odd length, varlen."""
    tol = 1e-5 if dtype == torch.float32 else 4e-3
    check_against_float64(seed=14, Bsz=2, T=23, D=12, N=4, dtype=dtype, fused_dt=True, tol_o=tol, tol_g=tol)
    if dtype == torch.float32:
        check_against_float64(seed=15, Bsz=1, T=30, D=8, N=4, fused_dt=True, cu_seqlens=[0, 7, 7, 30])


SPLIT = [ScanTuning(bwd_split=True), ScanTuning(BT=8, BD=8, bwd_BD=8, bwd_split=True, bwd_chunks=3)]


@pytest.mark.parametrize("tuning", SPLIT, ids=["split", "split_small_blocks"])
def test_split_backward_matches_float64(tuning):
    """The two-kernel backward (reverse adjoint walk, then the chunks in parallel, bwd_chunks per program): odd
    lengths, partial chunk groups, with and without D, z, the initial and the final state, fused dt, and varlen
    with an empty sequence and more chunk groups than chunks of any one sequence."""
    check_against_float64(seed=21, Bsz=2, T=37, D=20, N=5, tuning=tuning)
    check_against_float64(seed=22, Bsz=1, T=19, D=16, N=4, use_D=False, use_z=False, use_h0=False,
                          final_state=False, tuning=tuning)
    check_against_float64(seed=23, Bsz=2, T=23, D=12, N=4, fused_dt=True, tuning=tuning)
    check_against_float64(seed=24, Bsz=1, T=50, D=8, N=4, cu_seqlens=[0, 7, 7, 30, 31, 50], fused_dt=True,
                          tuning=tuning)
    check_against_float64(seed=25, Bsz=1, T=1, D=8, N=3, tuning=tuning)


def test_bad_tuning_raises_value_error():
    with pytest.raises(ValueError, match="ScanTuning.BT must be a power of two"):
        ScanTuning(BT=12)
    with pytest.raises(ValueError, match="ScanTuning.bwd_chunks must be a positive int"):
        ScanTuning(bwd_chunks=0)


def test_fp16_matches_float64():
    # half inputs and outputs, float32 arithmetic inside: the error is the rounding of inputs and results
    check_against_float64(seed=6, Bsz=2, T=33, D=16, N=8, dtype=torch.float16, tol_o=2e-3, tol_g=4e-3)


@pytest.mark.parametrize("use_h0", [True, False])
def test_varlen_matches_float64(use_h0):
    """Packed sequences of 13, 1, 0, 30 and 6 tokens (an empty one too): each restarts from its own state."""
    check_against_float64(seed=7 + use_h0, Bsz=1, T=50, D=12, N=4, cu_seqlens=[0, 13, 14, 14, 44, 50],
                          use_h0=use_h0)


def test_varlen_equals_separate_calls():
    x, dt, A, B, C, Dk, z, h0 = make_inputs(9, 1, 40, 8, 4, S=3)
    cu = [0, 17, 18, 40]
    o, h = selective_scan(x, dt, A, B, C, Dk, z, initial_state=h0, output_final_state=True,
                          cu_seqlens=torch.tensor(cu, device=DEVICE))
    for i, (s, e) in enumerate(zip(cu[:-1], cu[1:])):
        oi, hi = selective_scan(x[:, s:e], dt[:, s:e], A, B[:, s:e], C[:, s:e], Dk, z[:, s:e],
                                initial_state=h0[i:i + 1], output_final_state=True)
        assert rel(o[:, s:e], oi) < 1e-6 and rel(h[i:i + 1], hi) < 1e-6


def test_state_carries_across_calls():
    """Scanning 30 tokens then 17 from the returned state equals one scan of 47 tokens."""
    x, dt, A, B, C, Dk, z, h0 = make_inputs(10, 2, 47, 8, 4)
    full, hf = selective_scan(x, dt, A, B, C, Dk, z, initial_state=h0, output_final_state=True)
    a, ha = selective_scan(x[:, :30], dt[:, :30], A, B[:, :30], C[:, :30], Dk, z[:, :30], initial_state=h0,
                           output_final_state=True)
    b, hb = selective_scan(x[:, 30:], dt[:, 30:], A, B[:, 30:], C[:, 30:], Dk, z[:, 30:], initial_state=ha,
                           output_final_state=True)
    assert rel(torch.cat([a, b], 1), full) < 1e-6 and rel(hb, hf) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_step_matches_float64_and_the_scan(dtype):
    """Stepping token by token (state updated in place) gives the naive step and the chunked scan's outputs."""
    x, dt, A, B, C, Dk, z, h0 = make_inputs(11, 2, 5, 20, 5, dtype=dtype)
    state = h0.clone()
    ref_state = h0.double()
    outs = []
    for t in range(5):
        y = selective_scan_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], Dk, z[:, t], BD=8)
        ry, ref_state = naive_selective_scan_step(ref_state, x[:, t].double(), dt[:, t].double(), A.double(),
                                                  B[:, t].double(), C[:, t].double(), Dk.double(), z[:, t].double())
        tol = 1e-6 if dtype == torch.float32 else 2e-3
        assert y.dtype == dtype and rel(y, ry) < tol and rel(state, ref_state) < 1e-5, t
        outs.append(y)
    full, hf = selective_scan(x, dt, A, B, C, Dk, z, initial_state=h0, output_final_state=True)
    assert rel(torch.stack(outs, 1), full) < (1e-6 if dtype == torch.float32 else 2e-3)
    assert rel(state, hf) < 1e-6


def test_step_with_fused_dt_matches_float64():
    x, dt, A, B, C, Dk, z, h0 = make_inputs(16, 2, 1, 20, 5)
    raw, bias = dt[:, 0] * 4 - 3, torch.linspace(-5, 25, 20, device=DEVICE)  # through both softplus branches
    state = h0.clone()
    y = selective_scan_step(state, x[:, 0], raw, A, B[:, 0], C[:, 0], Dk, z[:, 0], dt_bias=bias, dt_softplus=True)
    ry, rs = naive_selective_scan_step(h0.double(), x[:, 0].double(), raw.double(), A.double(), B[:, 0].double(),
                                       C[:, 0].double(), Dk.double(), z[:, 0].double(), dt_bias=bias.double(),
                                       dt_softplus=True)
    assert rel(y, ry) < 1e-6 and rel(state, rs) < 1e-6


def test_naive_step_equals_naive_scan():
    x, dt, A, B, C, Dk, z, h0 = (t.double() for t in make_inputs(12, 2, 6, 4, 3, device="cpu"))
    full, hf = naive_selective_scan(x, dt, A, B, C, Dk, z, initial_state=h0, output_final_state=True)
    h, ys = h0, []
    for t in range(6):
        y, h = naive_selective_scan_step(h, x[:, t], dt[:, t], A, B[:, t], C[:, t], Dk, z[:, t])
        ys.append(y)
    assert rel(torch.stack(ys, 1), full) < 1e-12 and rel(h, hf) < 1e-12


def _bad(**kw):
    x, dt, A, B, C, Dk, z, h0 = make_inputs(13, 2, 6, 4, 3)
    args = dict(x=x, dt=dt, A=A, B=B, C=C, D=Dk, z=z, initial_state=h0)
    args.update(kw)
    return args


@pytest.mark.parametrize("kw,match", [
    (dict(x=torch.zeros(2, 6)), "x must be"),
    (dict(dt=torch.zeros(2, 6, 5)), "dt must"),
    (dict(A=torch.zeros(5, 3)), "A must be"),
    (dict(B=torch.zeros(2, 6, 4)), "B must be"),
    (dict(C=torch.zeros(2, 5, 3)), "C must be"),
    (dict(D=torch.zeros(3)), "D must be"),
    (dict(z=torch.zeros(2, 6, 3)), "z must"),
    (dict(initial_state=torch.zeros(2, 4, 4)), "initial_state must"),
    (dict(x=torch.zeros(2, 6, 4, dtype=torch.int32)), "x must be float16"),
    (dict(dt=torch.zeros(2, 6, 4, dtype=torch.float16)), "dt must have x's dtype"),
    (dict(A=torch.ones(4, 3)), "A must be <= 0"),
    (dict(dt_bias=torch.zeros(3)), "dt_bias must be"),
])
def test_bad_inputs_raise_value_error(kw, match):
    args = _bad(**{k: v.to(DEVICE) for k, v in kw.items()})
    with pytest.raises(ValueError, match=match):
        selective_scan(**args)


def test_bad_varlen_and_device_raise_value_error():
    args = _bad()
    one = {k: (v[:1] if k in ("x", "dt", "B", "C", "z", "initial_state") else v) for k, v in args.items()}
    one["initial_state"] = None
    with pytest.raises(ValueError, match="batch size must be 1"):
        selective_scan(**{**args, "initial_state": None}, cu_seqlens=torch.tensor([0, 6], device=DEVICE))
    with pytest.raises(ValueError, match="non-decreasing from 0 to T"):
        selective_scan(**one, cu_seqlens=torch.tensor([0, 4, 3, 6], device=DEVICE))
    with pytest.raises(ValueError, match="non-decreasing from 0 to T"):
        selective_scan(**one, cu_seqlens=torch.tensor([0, 5], device=DEVICE))
    with pytest.raises(ValueError, match="cu_seqlens must be a 1-D"):
        selective_scan(**one, cu_seqlens=torch.tensor([0.0, 6.0], device=DEVICE))
    with pytest.raises(ValueError, match="initial_state must be"):
        selective_scan(**{**one, "initial_state": args["initial_state"][:1]}, cu_seqlens=torch.tensor([0, 2, 6], device=DEVICE))
    if DEVICE == "cuda":
        with pytest.raises(ValueError, match="one device"):
            selective_scan(**{**args, "D": args["D"].cpu()})
    state = args["initial_state"].clone()
    with pytest.raises(ValueError, match="state must be a contiguous float32"):
        selective_scan_step(state.half(), args["x"][:, 0], args["dt"][:, 0], args["A"], args["B"][:, 0],
                            args["C"][:, 0])
    with pytest.raises(ValueError, match="B must have shape"):
        selective_scan_step(state, args["x"][:, 0], args["dt"][:, 0], args["A"], args["B"][:, 0, :2],
                            args["C"][:, 0])


# ---- GPU: realistic shapes ----

@pytest.mark.gpu
@pytest.mark.parametrize("dtype,T,fused_dt", [(torch.float32, 2048, False), (torch.bfloat16, 2048, False),
                                              (torch.bfloat16, 2048, True), (torch.bfloat16, 8192, True)])
def test_gpu_realistic_shapes_match_float64(dtype, T, fused_dt):
    """D = 2048 channels (340M Mamba's d_inner), N = 16, against the float64 sequential recurrence on the GPU.

    The float64 reference runs token by token (T Python steps of [B, D, N] ops): about a second per 1K tokens."""
    Bsz = 2 if T <= 2048 else 1
    tol_o, tol_g = (1e-5, 1e-4) if dtype == torch.float32 else (1e-2, 2e-2)
    check_against_float64(seed=20 + T, Bsz=Bsz, T=T, D=2048, N=16, dtype=dtype, tol_o=tol_o, tol_g=tol_g,
                          fused_dt=fused_dt)


@pytest.mark.gpu
def test_gpu_varlen_bf16_matches_float64():
    check_against_float64(seed=30, Bsz=1, T=3000, D=2048, N=16, dtype=torch.bfloat16, tol_o=1e-2, tol_g=2e-2,
                          cu_seqlens=[0, 1000, 1001, 2500, 3000])


@pytest.mark.gpu
@pytest.mark.parametrize("tuning", SPLIT, ids=["split", "split_small_blocks"])
def test_gpu_split_backward_matches_float64(tuning):
    """The two-kernel backward compiled on the GPU, at the layer's width: bf16, fused dt, and varlen."""
    check_against_float64(seed=32, Bsz=2, T=2048, D=2048, N=16, dtype=torch.bfloat16, tol_o=1e-2, tol_g=2e-2,
                          fused_dt=True, tuning=tuning)
    check_against_float64(seed=33, Bsz=1, T=3000, D=2048, N=16, dtype=torch.bfloat16, tol_o=1e-2, tol_g=2e-2,
                          cu_seqlens=[0, 1000, 1001, 2500, 3000], tuning=tuning)


@pytest.mark.gpu
def test_gpu_step_matches_scan_bf16():
    x, dt, A, B, C, Dk, z, h0 = make_inputs(31, 4, 64, 2048, 16, dtype=torch.bfloat16)
    state, outs = h0.clone(), []
    for t in range(64):
        outs.append(selective_scan_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], Dk, z[:, t]))
    full, hf = selective_scan(x, dt, A, B, C, Dk, z, initial_state=h0, output_final_state=True)
    assert rel(torch.stack(outs, 1), full) < 1e-2 and rel(state, hf) < 1e-5
