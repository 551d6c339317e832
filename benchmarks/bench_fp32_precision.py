"""Float32 calls of chunk_delta_rule under each tl.dot precision (chunk.FP32_PREC): compile time, accuracy, speed.

For every precision given (tf32x3, ieee, tf32) and every shape, in this order, printed as soon as known:
  1. the first launch of each Triton kernel, forward and backward, timed with a CUDA sync on both sides, so the
     compile time of each kernel shows (and the kernel a stuck run is in: the last "start" line without an "end");
  2. relative errors of o, final_state and the gradients of q, k, v, beta, initial_state against the float64 recurrence
     (kernels.naive, float64), on L2-normalised q, k, beta in (0, 1), a random initial state;
  3. do_bench median ms of forward+backward.

    python benchmarks/bench_fp32_precision.py --prec tf32x3 ieee              # the two shapes below
    python benchmarks/bench_fp32_precision.py --prec ieee --shapes wide       # one shape

Shapes: "wide" = the GPU test's packed sequences (cu_seqlens [0, 70, 70, 333, 450], H 2, K 200, V 256);
"k128" = (B, T, H, K, V) (2, 333, 2, 128, 100), the GPU float32 test; "bench" = (2, 2048, 4, 128, 128).
Run each precision in its own process (the shell's `timeout` then bounds a stuck compile):
    for p in tf32x3 ieee; do timeout 200 python benchmarks/bench_fp32_precision.py --prec $p; done
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import kernels.delta_rule.chunk as ck  # noqa: E402
from kernels import chunk_delta_rule  # noqa: E402
from kernels.delta_rule.naive import naive_recurrent_delta_rule  # noqa: E402

SHAPES = {  # name -> (B, T, H, K, V, cu_seqlens)
    "wide": (1, 450, 2, 200, 256, [0, 70, 70, 333, 450]),
    "k128": (2, 333, 2, 128, 100, None),
    "bench": (2, 2048, 4, 128, 128, None),
}


def log(*a):
    print(*a, flush=True)


def timed_launches():
    """Wrap chunk._launch: the first launch of each kernel name is timed (compile + run) and logged."""
    seen = set()
    inner = ck._launch

    def launch(name, kernel, grid, *args, **consts):
        if name in seen:
            return inner(name, kernel, grid, *args, **consts)
        seen.add(name)
        torch.cuda.synchronize()
        log(f"  start {name}")
        t0 = time.perf_counter()
        inner(name, kernel, grid, *args, **consts)
        torch.cuda.synchronize()
        log(f"  end   {name}: {time.perf_counter() - t0:.1f} s (first launch: compile + run)")

    ck._launch = launch
    return lambda: setattr(ck, "_launch", inner)


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm()).item()


def inputs(B, T, H, K, V, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, T, H, K, generator=g, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(B, T, H, K, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    beta = torch.rand(B, T, H, generator=g, dtype=torch.float64).clamp(1e-3, 1 - 1e-3)
    h0 = torch.randn(N, H, K, V, generator=g, dtype=torch.float64)
    do = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    dht = torch.randn(N, H, K, V, generator=g, dtype=torch.float64)
    return [x.cuda() for x in (q, k, v, beta, h0)], do.cuda(), dht.cuda()


def run_shape(name, prec, rep):
    B, T, H, K, V, cs = SHAPES[name]
    cu = None if cs is None else torch.tensor(cs, dtype=torch.int32, device="cuda")
    N = B if cs is None else len(cs) - 1
    ins64, do, dht = inputs(B, T, H, K, V, N)
    log(f"[{prec}] {name}: B={B} T={T} H={H} K={K} V={V} cu_seqlens={cs}")
    ours = [x.float().requires_grad_() for x in ins64]
    grads = [do.float(), dht.float()]  # cast once, outside the timed function

    def fwdbwd():
        o, s = chunk_delta_rule(*ours[:4], initial_state=ours[4], output_final_state=True, cu_seqlens=cu)
        torch.autograd.backward([o, s], grads)
        return o, s

    restore = timed_launches()
    try:
        o, s = fwdbwd()
        torch.cuda.synchronize()
    finally:
        restore()
    refs = [x.clone().requires_grad_() for x in ins64]
    ro, rs = naive_recurrent_delta_rule(*refs[:4], initial_state=refs[4], output_final_state=True, cu_seqlens=cu)
    torch.autograd.backward([ro, rs], [do, dht])
    err = {"o": rel(o, ro), "final_state": rel(s, rs)}
    err.update({f"d{n}": rel(a.grad, b.grad) for n, a, b in zip(("q", "k", "v", "beta", "h0"), ours, refs)})
    log("  rel. error vs float64: " + ", ".join(f"{n} {e:.2e}" for n, e in err.items()))

    import triton.testing

    ms = triton.testing.do_bench(fwdbwd, rep=rep, grad_to_none=ours, return_mode="median")
    log(f"  fwd+bwd median {ms:.3f} ms")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prec", nargs="+", default=["tf32x3"], choices=["tf32x3", "ieee", "tf32"])
    ap.add_argument("--shapes", nargs="+", default=["k128", "wide"], choices=list(SHAPES))
    ap.add_argument("--rep", type=int, default=200, help="do_bench rep (ms)")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_fp32_precision.py needs a CUDA GPU")
    log(f"torch {torch.__version__}, GPU {torch.cuda.get_device_name()}")
    for prec in a.prec:
        ck.FP32_PREC = prec
        for name in a.shapes:
            run_shape(name, prec, a.rep)


if __name__ == "__main__":
    main()
