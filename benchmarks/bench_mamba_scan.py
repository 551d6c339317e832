"""How fast is our selective scan?  Against a plain PyTorch sequential scan and against its own memory roofline.

Providers (inputs [B, T, D] in --dtype, N = 16, A float32 [D, N], D and z given, as Mamba's layer calls it):
  ours            kernels.selective_scan (chunked Triton scan, forward and backward)
  torch_seq       kernels.naive_selective_scan: the token-by-token PyTorch loop (autograd for the backward), skipped
                  where one run takes longer than --max-run-s, or would by the time per token of its earlier shapes
                  (a run at T = 16384 would take minutes)

Roofline: the bytes each pass must move through HBM (inputs read once, outputs written once, the chunk-start states
the forward stores and the backward reads, and the backward's per-channel-block dB/dC partials written and summed),
divided by the H200's 4.8 TB/s.  The table gives each time as a multiple of that bound.  The scan also computes
B * T * D * N exponentials (two per element in the backward), which may bound it before the bytes do.

``--sweep [fwd|bwd|both]`` times ``ours`` at the first shape over the forward's block sizes (BT tokens per chunk, BD
channels per program, warps) and over the backward's form (``ScanTuning.bwd_split``: one sequential walk, or the
adjoint walk then every chunk in parallel), block size, warps and chunks per program, to choose ``ScanTuning``'s
defaults.

Writes bench_mamba_scan.md and bench_mamba_scan.json (command, GPU, versions, every cell) to --out; ratios last.

    python benchmarks/bench_mamba_scan.py --out benchmarks/results
    python benchmarks/bench_mamba_scan.py --out DIR --sweep bwd --shapes 8,2048,2048,16
    python benchmarks/bench_mamba_scan.py --out DIR --dry-run       # tiny shapes, CPU interpreter: checks the script
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if not torch.cuda.is_available():  # --dry-run on CPU runs the Triton kernels in the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from benchmarks.sweep import command_line  # noqa: E402
from kernels.mamba import DEFAULT_TUNING, ScanTuning, naive_selective_scan, selective_scan  # noqa: E402

HBM_BYTES_PER_S = 4.8e12  # H200
DEFAULT_SHAPES = [(8, 2048, 2048, 16), (2, 8192, 2048, 16), (1, 16384, 2048, 16), (4, 2048, 4096, 16)]
DRY_SHAPES = [(1, 40, 16, 4)]
MODES = ["fwd", "fwdbwd"]


def make_inputs(B, T, D, N, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, device=device, generator=g)  # noqa: E731
    x, z = r(B, T, D).to(dtype), r(B, T, D).to(dtype)
    dt = torch.nn.functional.softplus(r(B, T, D) - 3.0).to(dtype)
    A = -torch.arange(1, N + 1, device=device, dtype=torch.float32).repeat(D, 1)
    Bm, Cm = r(B, T, N).to(dtype), r(B, T, N).to(dtype)
    Dk = torch.ones(D, device=device)
    do = r(B, T, D).to(dtype)
    return [x, dt, A, Bm, Cm, Dk, z], do


def roofline_bytes(B, T, D, N, elt, tuning: ScanTuning, mode: str) -> int:
    """Minimum HBM traffic of one call (see the module docstring)."""
    tokens = B * T
    states = B * -(-T // tuning.BT) * D * N * 4
    fwd = 3 * tokens * D * elt + 2 * tokens * N * elt + D * N * 4 + D * 4 + tokens * D * elt + states
    if mode == "fwd":
        return fwd
    nd = -(-D // tuning.bwd_BD)
    bwd = (4 * tokens * D * elt + 2 * tokens * N * elt + states  # x, dt, z, dout, B, C, chunk states
           + 3 * tokens * D * elt  # dx, ddt, dz
           + 2 * 2 * nd * tokens * N * 4 + 2 * tokens * N * elt  # dB/dC partials written and read, sums written
           + 2 * B * D * N * 4)  # dA partials
    if tuning.bwd_split:  # the walk's adjoints, written and read, and one dA partial per chunk group instead
        groups = B * -(-(-(-T // tuning.BT)) // tuning.bwd_chunks)
        bwd += 2 * states + 2 * (groups - B) * D * N * 4
    return fwd + bwd


def timer(fn, warmup_ms, rep_ms, device):
    """Median ms of fn (triton.testing.do_bench on CUDA; a few perf_counter runs on CPU)."""
    if device == "cuda":
        import triton.testing
        return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[1]


def run_fn(provider, inputs, do, mode, tuning):
    grads = [t for t in inputs if t.is_floating_point()]
    if provider == "ours":
        call = lambda: selective_scan(*inputs, check_A_sign=False, tuning=tuning)[0]  # noqa: E731
    else:
        call = lambda: naive_selective_scan(*inputs)[0]  # noqa: E731
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                call()
    else:
        def fn():
            for t in grads:
                t.grad = None
            call().backward(do)
    return fn


SEQ_S_PER_TOKEN: dict = {}  # mode -> the most seconds per token a torch_seq run has taken in this process


def time_cell(provider, shape, mode, args, device, tuning=DEFAULT_TUNING):
    B, T, D, N = shape
    est = SEQ_S_PER_TOKEN.get(mode, 0.0) * T
    if provider == "torch_seq" and est > args.max_run_s:  # the loop's time grows with T: do not wait to find out
        return {"skipped": f"one run ~{est:.0f} s > {args.max_run_s:g} s (by the time per token at a smaller T)"}
    dtype = getattr(torch, args.dtype)
    inputs, do = make_inputs(B, T, D, N, dtype, device)
    if mode == "fwdbwd":
        inputs = [t.requires_grad_() for t in inputs]
    fn = run_fn(provider, inputs, do, mode, tuning)
    t0 = time.perf_counter()
    fn()  # compile outside the timing
    if device == "cuda":
        torch.cuda.synchronize()
    one = time.perf_counter() - t0
    if provider == "torch_seq":
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        one = time.perf_counter() - t0
        SEQ_S_PER_TOKEN[mode] = max(SEQ_S_PER_TOKEN.get(mode, 0.0), one / T)
        if one > args.max_run_s:
            return {"skipped": f"one run {one:.1f} s > {args.max_run_s:g} s"}
        return {"ms": one * 1e3, "note": "one run"}  # a Python loop over T: one run is its own median
    ms = timer(fn, args.warmup, args.rep, device)
    nbytes = roofline_bytes(B, T, D, N, dtype.itemsize, tuning, mode)
    bound_ms = nbytes / HBM_BYTES_PER_S * 1e3
    return {"ms": ms, "bytes": nbytes, "roofline_ms": bound_ms, "x_roofline": ms / bound_ms,
            "GB_per_s": nbytes / (ms * 1e-3) / 1e9}


def sweep_tunings(which: str, dry_run: bool) -> list[tuple[str, ScanTuning]]:
    """(mode, tuning) of each sweep cell.  fwd: the forward's BT x BD x warps.  bwd: forward and backward at the
    default forward blocks (BT 8 and 16), the backward's form (one walk, or split into the adjoint walk and the
    parallel chunks) x its BD x warps, and the split's chunks per program."""
    cells = []
    if which in ("fwd", "both"):
        for bt, bd, w in ([(8, 16, 4), (16, 16, 4)] if dry_run else
                          [(bt, bd, w) for bt in (8, 16, 32) for bd in (8, 16, 32) for w in (4, 8)]):
            cells.append(("fwd", ScanTuning(BT=bt, BD=bd, num_warps=w)))
    if which in ("bwd", "both"):
        grid = [(16, False, 16, 4, 4), (16, True, 8, 4, 4)] if dry_run else [
            (bt, split, bd, w, 4) for bt in (8, 16) for split in (False, True) for bd in (8, 16) for w in (4, 8)]
        if not dry_run:
            grid += [(16, True, 8, 4, g) for g in (1, 2, 8)]
        for bt, split, bd, w, g in grid:
            cells.append(("fwdbwd", ScanTuning(BT=bt, bwd_BD=bd, bwd_num_warps=w, bwd_split=split, bwd_chunks=g)))
    return cells


def sweep(shape, args, device, save=lambda rows: None):
    """ours over the tunings of ``--sweep`` (see :func:`sweep_tunings`) at ``shape``; ``save`` is called with the rows
    after every cell."""
    rows = []
    for mode, tuning in sweep_tunings(args.sweep, args.dry_run):
        try:
            cell = time_cell("ours", shape, mode, args, device, tuning)
        except Exception as e:  # noqa: BLE001 - e.g. out of registers/shared memory: report, go on
            cell = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        rows.append({"tuning": asdict(tuning), "mode": mode, **cell})
        print(f"sweep {tuning} {mode}: {fmt(cell)}", flush=True)
        save(rows)
    return rows


def fmt(cell):
    if "ms" in cell:
        return f"{cell['ms']:.3f}" + (f" ({cell['x_roofline']:.1f}x)" if "x_roofline" in cell else "")
    return cell.get("skipped") or cell.get("error", "?")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="directory for bench_mamba_scan.md / .json")
    ap.add_argument("--shapes", nargs="*", default=None, help="B,T,D,N ... (default: Mamba 340M/1.3B shapes)")
    ap.add_argument("--providers", default="ours,torch_seq")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--warmup", type=int, default=25, help="do_bench warm-up, ms")
    ap.add_argument("--rep", type=int, default=100, help="do_bench measurement time, ms")
    ap.add_argument("--max-run-s", type=float, default=5.0, help="skip the PyTorch loop where one run is slower")
    ap.add_argument("--sweep", nargs="?", const="both", default=None, choices=["fwd", "bwd", "both"],
                    help="also sweep ours' tunings at the first shape: the forward's blocks, the backward's form and "
                         "blocks, or both (the default of a bare --sweep)")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes (CPU interpreter without CUDA)")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.dry_run:
        ap.error("needs a CUDA device (or --dry-run)")
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else \
        (DRY_SHAPES if args.dry_run else DEFAULT_SHAPES)
    providers = args.providers.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import triton
    meta = {"command": command_line("bench_mamba_scan.py", argv),
            "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "triton": triton.__version__, "dtype": args.dtype,
            "tuning": asdict(DEFAULT_TUNING), "hbm_bytes_per_s": HBM_BYTES_PER_S, "dry_run": args.dry_run,
            "date": datetime.date.today().isoformat()}
    results = []
    for shape in shapes:
        for mode in MODES:
            for p in providers:
                try:
                    cell = time_cell(p, shape, mode, args, device)
                except Exception as e:  # noqa: BLE001 - a failing cell is reported, the run goes on
                    traceback.print_exc()
                    cell = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
                results.append({"provider": p, "shape": list(shape), "mode": mode, **cell})
                print(f"{p} B,T,D,N={shape} {mode}: {fmt(cell)}", flush=True)
                write(out, meta, results, [])
    sweep_rows = sweep(shapes[0], args, device, lambda rows: write(out, meta, results, rows)) if args.sweep else []
    write(out, meta, results, sweep_rows)
    for line in ratio_lines(results):
        print(line)


def ratio_lines(results):
    lines = []
    by = {(r["provider"], tuple(r["shape"]), r["mode"]): r for r in results}
    for (p, shape, mode), r in by.items():
        if p != "ours" or "ms" not in r:
            continue
        ref = by.get(("torch_seq", shape, mode), {})
        vs = f", {ref['ms'] / r['ms']:.3g}x faster than torch_seq" if "ms" in ref else ""
        lines.append(f"ours {shape} {mode}: {r['ms']:.3f} ms = {r['x_roofline']:.1f}x its memory roofline "
                     f"({r['GB_per_s']:.3g} GB/s){vs}")
    return lines


def write(out: Path, meta, results, sweep_rows):
    (out / "bench_mamba_scan.json").write_text(json.dumps({"meta": meta, "results": results, "sweep": sweep_rows},
                                                          indent=1))
    lines = ["# bench_mamba_scan", "", f"`{meta['command']}` on {meta['device']}, torch {meta['torch']}, "
             f"triton {meta['triton']}, {meta['dtype']}, tuning {meta['tuning']}", "",
             "Milliseconds (median); `(Nx)` = time / memory roofline at 4.8 TB/s.", "",
             *[f"Note: {n}" for n in meta.get("notes", [])], *([""] if meta.get("notes") else []),
             "| B, T, D, N | mode | " + " | ".join(sorted({r['provider'] for r in results})) + " |",
             "|---|---|" + "---|" * len({r['provider'] for r in results})]
    provs = sorted({r["provider"] for r in results})
    cells = {(tuple(r["shape"]), r["mode"], r["provider"]): r for r in results}
    for shape in dict.fromkeys(tuple(r["shape"]) for r in results):
        for mode in MODES:
            row = [fmt(cells.get((shape, mode, p), {"error": "-"})) for p in provs]
            lines.append(f"| {', '.join(map(str, shape))} | {mode} | " + " | ".join(row) + " |")
    if sweep_rows:
        lines += ["", "Tuning sweep of `ours` (forward BT, BD, warps; backward: one walk or split, its BD, warps, "
                  "chunks per program of the split):", "",
                  "| BT | BD | warps | backward | bwd BD | bwd warps | chunks | mode | ms |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in sweep_rows:
            t = r["tuning"]
            split = t.get("bwd_split", False)
            lines.append(f"| {t['BT']} | {t['BD']} | {t['num_warps']} | {'split' if split else 'one walk'} | "
                         f"{t['bwd_BD']} | {t['bwd_num_warps']} | {t.get('bwd_chunks', '-') if split else '-'} | "
                         f"{r['mode']} | {fmt(r)} |")
    lines += ["", *ratio_lines(results)]
    (out / "bench_mamba_scan.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
