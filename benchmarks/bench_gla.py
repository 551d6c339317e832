"""Is our GLA kernel faster than fla's?  Forward and forward+backward, one GPU, one process.

Providers (bf16 q, k [B, T, H, K], v [B, T, H, D]; g [B, T, H, K] float32 log decays, logsigmoid(randn) / 16 as
GLA's gate makes them):
  ours_chunk   kernels.chunk_gla                  (the shared state walks with the per-channel decay, GLA's own
                                                   within-chunk stages)
  fla_chunk    fla.ops.gla.chunk_gla              (if fla is installed; a comparison peer only)

Shapes are bench_delta_rule.py's (B, T, H, D) with K = V = D by default.  The GLA model uses K = D / 2
(expand_k 0.5): ``--key-ratio 0.5`` benchmarks that shape.  Each cell is the median of triton.testing.do_bench;
forward under torch.no_grad(), forward+backward with grad-requiring inputs (g included) and a fixed random do.  A
failing cell is reported in the table and the run goes on.  Writes bench_gla.md (table + ratios ours/fla) and
bench_gla.json (command, GPU, versions, cells) to --out; prints the ratios last.

    python benchmarks/bench_gla.py --out benchmarks/results
    python benchmarks/bench_gla.py --out DIR --tiny     # CPU check of the script: one tiny shape under
                                                        # TRITON_INTERPRET=1, wall-clock timing
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if "--tiny" in sys.argv and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

from benchmarks.bench_delta_rule import DEFAULT_SHAPES, command  # noqa: E402
from kernels import chunk_gla  # noqa: E402

NAME = "bench_gla"
PROVIDERS = ["ours_chunk", "fla_chunk"]
MODES = ["fwd", "fwdbwd"]
TINY_SHAPES = [(1, 40, 2, 32)]


def load_providers():
    """name -> callable(q, k, v, g) -> o, or name -> str (why it is unavailable)."""
    out = {"ours_chunk": lambda q, k, v, g: chunk_gla(q, k, v, g)[0]}
    try:
        from fla.ops.gla import chunk_gla as fla_chunk
        out["fla_chunk"] = lambda q, k, v, g: fla_chunk(q, k, v, g)[0]
    except Exception as e:  # noqa: BLE001 - fla is optional
        out["fla_chunk"] = f"fla unavailable ({type(e).__name__})"
    return out


def make_inputs(B, T, H, D, device, dtype, key_ratio=1.0, seed=0):
    K = int(D * key_ratio)
    gen = torch.Generator(device=device).manual_seed(seed)
    kw = dict(device=device, generator=gen)
    q = (torch.randn(B, T, H, K, **kw) * K ** -0.25).to(dtype)
    k = (torch.randn(B, T, H, K, **kw) * K ** -0.25).to(dtype)
    v = torch.randn(B, T, H, D, **kw).to(dtype)
    g = F.logsigmoid(torch.randn(B, T, H, K, **kw)) / 16  # float32
    do = torch.randn(B, T, H, D, **kw).to(dtype)
    return [x.requires_grad_() for x in (q, k, v, g)], do


def time_cell(fn, inputs, do, mode, tiny, warmup, rep):
    def run():
        if mode == "fwd":
            with torch.no_grad():
                fn(*inputs)
        else:
            fn(*inputs).backward(do)
    run()  # compile outside the timing
    if tiny:  # CPU interpreter: one wall-clock run (checks the script, measures nothing about the GPU)
        t0 = time.perf_counter()
        run()
        return (time.perf_counter() - t0) * 1e3
    import triton.testing
    return triton.testing.do_bench(run, warmup=warmup, rep=rep, grad_to_none=inputs, return_mode="median")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help=f"directory for {NAME}.md/.json")
    ap.add_argument("--shapes", nargs="*", default=None, help="B,T,H,D ... (default: bench_delta_rule's shapes)")
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--key-ratio", type=float, default=1.0, help="K = D * ratio (the GLA model: 0.5)")
    ap.add_argument("--tiny", action="store_true", help="one tiny float16 shape on CPU (interpreter) or GPU")
    ap.add_argument("--warmup", type=int, default=25, help="do_bench warm-up, ms")
    ap.add_argument("--rep", type=int, default=100, help="do_bench measurement time, ms")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        ap.error("needs a CUDA GPU (use --tiny to check the script on CPU)")
    shapes = TINY_SHAPES if args.tiny else (
        [tuple(int(x) for x in s.split(",")) for s in args.shapes] if args.shapes else DEFAULT_SHAPES)
    dtype = torch.float16 if args.tiny else torch.bfloat16  # the CPU interpreter's bf16 tl.dot is wrong
    providers = load_providers()
    names = [p for p in args.providers.split(",") if p]
    cells = {}
    for shape in shapes:
        for name in names:
            for mode in MODES:
                key = f"{name}|{mode}|{','.join(map(str, shape))}"
                fn = providers.get(name, f"unknown provider {name!r}")
                if isinstance(fn, str):
                    cells[key] = fn
                    continue
                try:
                    inputs, do = make_inputs(*shape, device=device, dtype=dtype, key_ratio=args.key_ratio)
                    cells[key] = time_cell(fn, inputs, do, mode, args.tiny, args.warmup, args.rep)
                except Exception as e:  # noqa: BLE001 - one failing cell must not stop the table
                    cells[key] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
                    traceback.print_exc()
                print(key, cells[key], flush=True)

    def fmt(c):
        return f"{c:.3f}" if isinstance(c, float) else str(c)
    cmd = command(argv).replace("bench_delta_rule", NAME)
    lines = [f"# {NAME}", "", f"`{cmd}`", "",
             f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu (interpreter)'}; "
             f"torch {torch.__version__}; triton {__import__('triton').__version__}; dtype {dtype}; "
             f"K = {args.key_ratio:g} D, V = D; ms (median)", "",
             "| B, T, H, D | mode | " + " | ".join(names) + " | ours/fla |", "|" + "---|" * (len(names) + 3)]
    ratios = []
    for shape in shapes:
        for mode in MODES:
            row = [cells[f"{n}|{mode}|{','.join(map(str, shape))}"] for n in names]
            o, f = (cells.get(f"{n}|{mode}|{','.join(map(str, shape))}") for n in ("ours_chunk", "fla_chunk"))
            r = o / f if isinstance(o, float) and isinstance(f, float) and f > 0 else None
            ratios.append((shape, mode, r))
            lines.append(f"| {', '.join(map(str, shape))} | {mode} | " + " | ".join(fmt(c) for c in row)
                         + f" | {'' if r is None else f'{r:.2f}'} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.md").write_text("\n".join(lines) + "\n")
    (out / f"{NAME}.json").write_text(json.dumps({
        "command": cmd, "device": lines[4], "python": platform.python_version(), "key_ratio": args.key_ratio,
        "cells": cells}, indent=2))
    for shape, mode, r in ratios:
        print(f"ours/fla {mode} {shape}: {'n/a' if r is None else f'{r:.2f}'}")


if __name__ == "__main__":
    main()
