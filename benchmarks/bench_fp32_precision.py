"""Float32 calls of chunk_delta_rule under each tl.dot precision (ChunkSettings.fp32_prec): compile time, accuracy,
speed.

For every precision given (tf32x3, ieee, tf32) and every shape, in this order, printed as soon as known:
  1. the first launch of each stage of a forward and backward call, through the public stage launchers of
     kernels/common, with a device sync on both sides, so each kernel's compile time shows (and the kernel a stuck
     run is in: the last "start" line without an "end");
  2. relative errors of o, final_state and the gradients of q, k, v, beta, initial_state against the float64
     recurrence (kernels.naive_recurrent_delta_rule), on L2-normalised q, k, beta in (0, 1), a random initial state;
  3. do_bench median ms of forward+backward (GPU only).

Writes bench_fp32_precision.json and .md (command, GPU, torch and triton versions, one row per precision and shape)
to --out after every shape.

    python benchmarks/bench_fp32_precision.py --out DIR --prec tf32x3 ieee              # the k128 and wide shapes
    python benchmarks/bench_fp32_precision.py --out DIR --prec ieee --shapes wide       # one shape

Shapes: "wide" = packed sequences (cu_seqlens [0, 70, 70, 333, 450], H 2, K 200, V 256); "k128" = (B, T, H, K, V)
(2, 333, 2, 128, 100); "bench" = (2, 2048, 4, 128, 128); "tiny" = (1, 40, 1, 32, 16) packed as [0, 17, 40], which
also runs on CPU under TRITON_INTERPRET=1 (no timing there).  Run each precision in its own process when a compile
may hang (the shell's `timeout` then bounds it):
    for p in tf32x3 ieee; do timeout 200 python benchmarks/bench_fp32_precision.py --out DIR/$p --prec $p; done
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import triton  # noqa: E402

from benchmarks.sweep import command_line  # noqa: E402
from kernels import chunk_delta_rule, chunk_settings, naive_recurrent_delta_rule  # noqa: E402
from kernels.common.chunk_h import bwd_dhu, bwd_dv_local, fwd_h  # noqa: E402
from kernels.common.chunk_o import bwd_dqkw, fwd_o  # noqa: E402
from kernels.common.launch import ChunkMeta  # noqa: E402
from kernels.common.wy import wy_bwd, wy_fwd  # noqa: E402

SHAPES = {  # name -> (B, T, H, K, V, cu_seqlens)
    "wide": (1, 450, 2, 200, 256, [0, 70, 70, 333, 450]),
    "k128": (2, 333, 2, 128, 100, None),
    "bench": (2, 2048, 4, 128, 128, None),
    "tiny": (1, 40, 1, 32, 16, [0, 17, 40]),
}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def log(*a):
    print(*a, flush=True)


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


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
    return [x.to(DEVICE) for x in (q, k, v, beta, h0)], do.to(DEVICE), dht.to(DEVICE)


def first_launches(q, k, v, beta, h0, do, dht, cu) -> dict:
    """Seconds of the first launch (compile + run) of each stage, in the order a forward and backward call runs
    them under the active settings."""
    secs = {}

    def timed(label, fn):
        sync()
        log(f"  start {label}")
        t0 = time.perf_counter()
        r = fn()
        sync()
        secs[label] = time.perf_counter() - t0
        log(f"  end   {label}: {secs[label]:.1f} s (first launch: compile + run)")
        return r

    scale = q.shape[-1] ** -0.5
    m = ChunkMeta(q, v, cu, 64)
    keep = m.settings.keeps_states(m.K)
    A, w, u = timed("wy_fwd", lambda: wy_fwd(m, k, v, beta))
    h, v_new, _ = timed("fwd_h", lambda: fwd_h(m, k, w, u, h0, True))
    timed("fwd_o", lambda: fwd_o(m, q, k, v_new, h, scale))
    _, w, u = timed("wy_fwd (backward, A loaded)", lambda: wy_fwd(m, k, v, beta, A=A, need_u=not keep))
    if not keep:
        h, v_new, _ = timed("fwd_h (backward)", lambda: fwd_h(m, k, w, u, h0, False))
    if m.BKs < m.K:
        timed("bwd_dv_local", lambda: bwd_dv_local(m, q, k, do, scale))
    dv_new, dh, _ = timed("bwd_dhu", lambda: bwd_dhu(m, q, k, w, do, dht, scale, True))
    dq, dk_part, dw = timed("bwd_dqkw", lambda: bwd_dqkw(m, q, k, v_new, do, h, dh, dv_new, scale))
    timed("wy_bwd", lambda: wy_bwd(m, k, v, beta, A, dw, dv_new, dk_part))
    return secs


def run_shape(name, prec, rep) -> dict:
    B, T, H, K, V, cs = SHAPES[name]
    cu = None if cs is None else torch.tensor(cs, dtype=torch.int32, device=DEVICE)
    N = B if cs is None else len(cs) - 1
    ins64, do, dht = inputs(B, T, H, K, V, N)
    log(f"[{prec}] {name}: B={B} T={T} H={H} K={K} V={V} cu_seqlens={cs}")
    ours = [x.float().requires_grad_() for x in ins64]
    grads = [do.float(), dht.float()]  # cast once, outside the timed function
    row = {"prec": prec, "shape": name, "B, T, H, K, V": [B, T, H, K, V], "cu_seqlens": cs}
    row["first_launch_s"] = first_launches(*(x.detach() for x in ours), *grads, cu)

    def fwdbwd():
        o, s = chunk_delta_rule(*ours[:4], initial_state=ours[4], output_final_state=True, cu_seqlens=cu)
        torch.autograd.backward([o, s], grads)
        return o, s

    o, s = fwdbwd()
    sync()
    refs = [x.clone().requires_grad_() for x in ins64]
    ro, rs = naive_recurrent_delta_rule(*refs[:4], initial_state=refs[4], output_final_state=True, cu_seqlens=cu)
    torch.autograd.backward([ro, rs], [do, dht])
    err = {"o": rel(o, ro), "final_state": rel(s, rs)}
    err.update({f"d{n}": rel(a.grad, b.grad) for n, a, b in zip(("q", "k", "v", "beta", "h0"), ours, refs)})
    row["rel_err_vs_float64"] = err
    log("  rel. error vs float64: " + ", ".join(f"{n} {e:.2e}" for n, e in err.items()))
    if DEVICE == "cuda":
        import triton.testing

        row["fwdbwd_ms"] = triton.testing.do_bench(fwdbwd, rep=rep, grad_to_none=ours, return_mode="median")
        log(f"  fwd+bwd median {row['fwdbwd_ms']:.3f} ms")
    return row


def write(out: Path, meta: dict, rows: list) -> None:
    (out / "bench_fp32_precision.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    md = [f"# Float32 chunk_delta_rule per tl.dot precision ({meta['gpu']})", "",
          f"Command: `{meta['command']}`  ", f"torch {meta['torch']}, triton {meta['triton']}", ""]
    for key, title in (("first_launch_s", "First launch per stage (compile + run), s"),
                       ("rel_err_vs_float64", "Relative error against the float64 recurrence")):
        cols = list(dict.fromkeys(c for r in rows for c in r[key]))  # first-seen order
        md += [f"## {title}", "", "| precision | shape | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
        fmt = "{:.1f}" if key == "first_launch_s" else "{:.1e}"
        for r in rows:
            md.append(f"| {r['prec']} | {r['shape']} | "
                      + " | ".join(fmt.format(r[key][c]) if c in r[key] else "-" for c in cols) + " |")
        md.append("")
    md += ["## Forward + backward, do_bench median ms", "", "| precision | shape | ms |", "|---|---|---|"]
    md += [f"| {r['prec']} | {r['shape']} | " + (f"{r['fwdbwd_ms']:.3f}" if "fwdbwd_ms" in r else "not timed (CPU)")
           + " |" for r in rows]
    (out / "bench_fp32_precision.md").write_text("\n".join(md) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory for bench_fp32_precision.json/.md")
    ap.add_argument("--prec", nargs="+", default=["tf32x3"], choices=["tf32x3", "ieee", "tf32"])
    ap.add_argument("--shapes", nargs="+", default=["k128", "wide"], choices=list(SHAPES))
    ap.add_argument("--rep", type=int, default=200, help="do_bench rep (ms)")
    a = ap.parse_args()
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        sys.exit("bench_fp32_precision.py needs a CUDA GPU, or TRITON_INTERPRET=1 on CPU (shape 'tiny')")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": command_line("bench_fp32_precision.py", None), "gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
            "torch": torch.__version__, "triton": triton.__version__}
    log(json.dumps(meta))
    rows = []
    for prec in a.prec:
        with chunk_settings(fp32_prec=prec, autotune=False):
            for name in a.shapes:
                rows.append(run_shape(name, prec, a.rep))
                write(out, meta, rows)


if __name__ == "__main__":
    main()
