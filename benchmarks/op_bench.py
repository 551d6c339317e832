"""One op's chunk kernel, ours against fla's, forward and forward+backward: the driver that bench_gla.py,
bench_gated_delta_rule.py and bench_retention.py share (each script gives its providers and inputs).

Cells are (provider, mode, shape).  Each is the median of triton.testing.do_bench (``--tiny``: one wall-clock run
under the CPU interpreter, which checks the script and measures nothing); forward under torch.no_grad(),
forward+backward with grad-requiring inputs and a fixed random do.  A failing cell is a table cell and the run goes
on.  The md and JSON are written after every cell, so a command cut short keeps what it measured; fla's first
compilation of a shape can take minutes, so a table may be filled over several commands (bookkeeping in
``sweep.py``): ``--max-seconds S`` starts no new cell after S seconds (the rest are written ``skipped (time)``) and
``--resume`` keeps the cells already in ``--out``'s JSON and runs only the others (skipped ones, new ones, and a cell
whose process died inside it, once).  A resumed command must run on the same device, versions and dtype.
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
from typing import Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if "--tiny" in sys.argv and not torch.cuda.is_available():  # a script imports this module before its kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

from benchmarks.bench_delta_rule import parse_shapes  # noqa: E402
from benchmarks.sweep import (JOIN, KILLED, SKIPPED, STARTED, Deadline, check_same, command_line,  # noqa: E402
                             commands)

PROVIDERS = ["ours_chunk", "fla_chunk"]
MODES = ["fwd", "fwdbwd"]
TINY_SHAPES = [(1, 40, 2, 32)]
SAME = ("device", "torch", "triton", "fla", "dtype", "warmup", "rep", "options", "tiny")


def cell_key(provider: str, mode: str, shape) -> str:
    return f"{provider}|{mode}|{','.join(map(str, shape))}"


def time_cell(fn, inputs, do, mode, tiny, warmup, rep) -> float:
    def run():
        if mode == "fwd":
            with torch.no_grad():
                fn(*inputs)
        else:
            fn(*inputs).backward(do)
    run()  # compile outside the timing
    if tiny:
        t0 = time.perf_counter()
        run()
        return (time.perf_counter() - t0) * 1e3
    import triton.testing
    return triton.testing.do_bench(run, warmup=warmup, rep=rep, grad_to_none=inputs, return_mode="median")


def fla_version() -> Optional[str]:
    try:
        import fla
    except Exception:  # noqa: BLE001 - not installed, or fails to import here
        return None
    return getattr(fla, "__version__", "unknown")


_FLA_GUARD: dict = {}


def fla_gated_backward_guard(on: bool) -> None:
    """fla 0.6 refuses its gated backward (``chunk_bwd_dqkwg``, used by its Gated DeltaNet and simple GLA ops) on
    Hopper under Triton >= 3.4, < 3.7.1, whose code for it fla reports wrong (its issue #640).  ``on=False`` lifts
    that refusal (fla's module flag) so that the kernel can be timed; its results are then not to be used.
    ``on=True`` restores fla's own check.  No-op without fla."""
    try:
        import fla.ops.common.chunk_o as co
    except Exception:  # noqa: BLE001 - fla is optional
        return
    _FLA_GUARD.setdefault("flag", co.TRITON_ABOVE_3_7_1)
    co.TRITON_ABOVE_3_7_1 = _FLA_GUARD["flag"] if on else True


def fla_op(fn: Callable, guard: bool = True) -> Callable:
    """fla's op ``fn`` as a provider (its output o), with :func:`fla_gated_backward_guard` set to ``guard`` at every
    call: a cell's backward follows its own forward, so it runs under the same setting."""
    def run(*inputs):
        fla_gated_backward_guard(guard)
        return fn(*inputs)[0]
    return run


def main(argv, *, name: str, doc: str, load_providers: Callable[[], dict], make_inputs: Callable,
         add_args: Optional[Callable[[argparse.ArgumentParser], None]] = None,
         options: Callable[[argparse.Namespace], dict] = lambda a: {}, note: str = "",
         providers: Optional[list] = None, ratio=("ours_chunk", "fla_chunk", "ours/fla")) -> dict:
    """``load_providers()``: provider -> callable(*inputs) -> o, or -> str (why it is unavailable).
    ``make_inputs(B, T, H, D, device=, dtype=, **options(args))`` -> (grad-requiring inputs, do).
    ``options(args)``: the script's own settings, recorded and compared on ``--resume``; ``note``: a line of the md;
    ``providers``: the default ``--providers`` (ours_chunk, fla_chunk); ``ratio``: (numerator, denominator, label) of
    the ratio column, ours_chunk / fla_chunk unless given, or a list of such triples (one column each)."""
    ratio_cols = [ratio] if isinstance(ratio[0], str) else list(ratio)
    argv = sys.argv[1:] if argv is None else list(argv)
    deadline = Deadline(None)
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--out", required=True, help=f"directory for {name}.md/.json")
    ap.add_argument("--shapes", nargs="*", default=None, help="B,T,H,D ... (default: bench_delta_rule's shapes)")
    ap.add_argument("--providers", default=",".join(providers or PROVIDERS))
    ap.add_argument("--tiny", action="store_true", help="one tiny float16 shape on CPU (interpreter) or GPU")
    ap.add_argument("--warmup", type=int, default=25, help="do_bench warm-up, ms")
    ap.add_argument("--rep", type=int, default=100, help="do_bench measurement time, ms")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="start no new cell after this many seconds; the rest are written as skipped (time)")
    ap.add_argument("--resume", action="store_true", help="keep the cells already in --out's JSON, run the others")
    if add_args:
        add_args(ap)
    args = ap.parse_args(argv)
    deadline.max_seconds = args.max_seconds
    shapes = parse_shapes(ap, args.shapes, TINY_SHAPES if args.tiny else None)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        ap.error("needs a CUDA GPU (use --tiny to check the script on CPU)")
    dtype = torch.float16 if args.tiny else torch.bfloat16  # the CPU interpreter's bf16 tl.dot is wrong
    names = [p for p in args.providers.split(",") if p]
    import triton
    meta = {"command": command_line(f"{name}.py", argv),
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (interpreter)",
            "torch": torch.__version__, "triton": triton.__version__, "fla": fla_version(),
            "python": platform.python_version(), "dtype": str(dtype), "warmup": args.warmup, "rep": args.rep,
            "options": options(args), "tiny": args.tiny}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    cells: dict = {}
    by: dict = {}  # key -> index (from 1) of the command that wrote it
    attempts: dict = {}
    all_shapes, all_names = [], []  # the table's rows and columns: an earlier table's first
    if args.resume and path.exists():
        prev = json.loads(path.read_text())
        check_same(prev["meta"], meta, SAME, path)
        meta["command"] = prev["meta"]["command"] + JOIN + meta["command"]
        all_shapes, all_names = [tuple(s) for s in prev.get("shapes", [])], prev.get("providers", [])
        attempts = prev.get("attempts", {})
        for k, v in prev["cells"].items():
            v = KILLED if v == STARTED else v
            if v == SKIPPED:
                continue  # run again
            if v == KILLED and attempts.get(k, 1) < 2:  # once more; killed twice, it stays killed
                attempts[k] = attempts.get(k, 1) + 1
                continue
            cells[k], by[k] = v, prev.get("by", {}).get(k, 1)
    n_cmd = len(commands(meta["command"]))
    all_shapes = list(dict.fromkeys(all_shapes + shapes))
    all_names = list(dict.fromkeys(all_names + names))

    def write() -> list:
        res = {"meta": meta, "shapes": [list(s) for s in all_shapes], "providers": all_names, "cells": cells,
               "by": by, "attempts": attempts}
        path.write_text(json.dumps(res, indent=2))
        cmds = commands(meta["command"])
        o = meta["options"]
        lines = [f"# {name}", ""]
        lines += (["    " + cmds[0]] if len(cmds) == 1 else
                  ["Commands behind this table, in order:", ""] + [f"    {i}: {c}" for i, c in enumerate(cmds, 1)])
        lines += ["", f"{meta['device']}; torch {meta['torch']}, triton {meta['triton']}, fla {meta['fla'] or '-'}; "
                  f"{meta['dtype']}; " + (f"{note.format(**o)}; " if note else "")
                  + ("ms of one wall-clock run (the interpreter: checks the script, measures nothing)" if args.tiny
                     else f"ms, median of triton.testing.do_bench (warmup {meta['warmup']} ms, rep {meta['rep']} ms)")
                  + ("; [n]: measured by command n" if len(cmds) > 1 else ""), "",
                  "| B, T, H, D | mode | " + " | ".join(all_names + [r[2] for r in ratio_cols]) + " |",
                  "|" + "---|" * (len(all_names) + 2 + len(ratio_cols))]
        ratios = []
        for shape in all_shapes:
            for mode in MODES:
                row = []
                for n in all_names:
                    k = cell_key(n, mode, shape)
                    c = cells.get(k, "-")
                    txt = f"{c:.3f}" if isinstance(c, float) else str(c)
                    row.append(txt + (f" [{by[k]}]" if len(cmds) > 1 and k in by else ""))
                rs = []
                for col in ratio_cols:
                    a, b = (cells.get(cell_key(n, mode, shape)) for n in col[:2])
                    r = a / b if isinstance(a, float) and isinstance(b, float) and b > 0 else None
                    ratios.append(f"{col[2]} {mode} {shape}: {'n/a' if r is None else f'{r:.2f}'}")
                    rs.append("" if r is None else f"{r:.2f}")
                lines.append(f"| {', '.join(map(str, shape))} | {mode} | " + " | ".join(row) + " | "
                             + " | ".join(rs) + " |")
        (out / f"{name}.md").write_text("\n".join(lines) + "\n")
        return ratios

    available = load_providers()
    todo = [(n, m, s) for s in shapes for n in names for m in MODES if cell_key(n, m, s) not in cells]
    for i, (n, mode, shape) in enumerate(todo):
        key = cell_key(n, mode, shape)
        if deadline.expired():
            for n2, m2, s2 in todo[i:]:
                cells[cell_key(n2, m2, s2)], by[cell_key(n2, m2, s2)] = SKIPPED, n_cmd
            break
        fn = available.get(n, f"unknown provider {n!r}")
        if isinstance(fn, str):
            cells[key], by[key] = fn, n_cmd
            continue
        cells[key], by[key] = STARTED, n_cmd  # on disk while it runs: a process that dies here leaves it behind
        write()
        try:
            inputs, do = make_inputs(*shape, device=device, dtype=dtype, **meta["options"])
            cells[key] = time_cell(fn, inputs, do, mode, args.tiny, args.warmup, args.rep)
        except Exception as e:  # noqa: BLE001 - one failing cell must not stop the table
            cells[key] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            traceback.print_exc()
        print(key, cells[key], flush=True)
        write()
    ratios = write()
    print("\n".join(ratios))
    return {"meta": meta, "cells": cells}
