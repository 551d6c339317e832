"""Is our delta-rule kernel faster than fla's?  Times forward and forward+backward on one GPU, one process.

Providers (bf16, inputs [B, T, H, D], K = V = D):
  ours_chunk      kernels.chunk_delta_rule             (chunkwise WY/UT, Triton)
  ours_chunk_plain  the same under kernels.chunk_settings(keep_states=False, fold_blocks=False) (the backward
                  recomputes the chunk states; 2-D grids), to measure those two switches side by side
  ours_recurrent  kernels.fused_recurrent_delta_rule   (token by token, Triton)
  fla_chunk       fla.ops.delta_rule.chunk_delta_rule           (if fla is installed)
  fla_recurrent   fla.ops.delta_rule.fused_recurrent_delta_rule (if fla is installed)
  sdpa_flash      torch SDPA, causal, flash backend, same B, T, H, D (a softmax-attention yardstick)

Each cell is the median of triton.testing.do_bench.  Forward is timed under torch.no_grad(); forward+backward runs
forward with grad-requiring inputs and backward of a fixed random do.  Recurrent providers are skipped at a shape
where one forward+backward run takes longer than --max-run-s (1 s).  A failing cell (OOM, missing kernel, ...)
is reported in the table and the run goes on.

Writes bench_delta_rule.md (table + ratios), bench_delta_rule.json (command, GPU, versions, our chunk settings, all
cells) and bench_delta_rule.png (ms vs T, when matplotlib is available) to --out after every cell; prints the ratios
last.  fla's first compilation of a shape can take minutes, so a table may be filled over several commands
(bookkeeping in ``sweep.py``): ``--max-seconds S`` starts no new cell after S seconds (the rest are written
``skipped (time)``), and ``--resume`` keeps the measured cells of ``--out``'s JSON (also of shapes this command does
not list) and runs the others; it refuses a table of another GPU, versions, timing or chunk settings.

    python benchmarks/bench_delta_rule.py --out benchmarks/results          # all shapes, all providers
    python benchmarks/bench_delta_rule.py --out benchmarks/results --max-seconds 480
    python benchmarks/bench_delta_rule.py --out benchmarks/results --resume  # the cells not yet measured
    python benchmarks/bench_delta_rule.py --out DIR --shapes 8,2048,16,128 --providers ours_chunk,fla_chunk
    python benchmarks/bench_delta_rule.py --out DIR --tiny   # CPU check of the script: one tiny float16 shape under
                                                             # TRITON_INTERPRET=1, wall-clock timing
"""
from __future__ import annotations

import argparse
import json
import math
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

from benchmarks.sweep import JOIN, SKIPPED, Deadline, check_same, command_line, commands  # noqa: E402
from kernels import chunk_settings, current_chunk_settings  # noqa: E402
from kernels.common.launch import tuned_configs  # noqa: E402

# the five paper-style shapes, then the 340M model's own long-sequence calls (8 heads of 128, one row)
DEFAULT_SHAPES = [(8, 2048, 16, 128), (2, 8192, 16, 128), (1, 32768, 16, 128), (8, 2048, 32, 64), (4, 4096, 8, 256),
                  (1, 16384, 8, 128), (1, 65536, 8, 128)]
PROVIDERS = ["ours_chunk", "ours_recurrent", "fla_chunk", "fla_recurrent", "sdpa_flash"]
# kernels.chunk_settings changes in force while a provider is timed (forward and backward)
PROVIDER_SETTINGS = {"ours_chunk_plain": {"keep_states": False, "fold_blocks": False}}
RECURRENT = {"ours_recurrent", "fla_recurrent"}
MODES = ["fwd", "fwdbwd"]
TINY_SHAPES = [(1, 40, 2, 32)]
# what a resumed command must share with the table it adds to
SAME = ("gpu", "versions", "dtype", "timing", "chunk_settings")


def parse_shapes(ap: argparse.ArgumentParser, specs, fixed=None) -> list:
    """``--shapes`` ("B,T,H,D" each) as tuples: ``fixed`` when given (the tiny run's), else the specs, else
    DEFAULT_SHAPES; anything but four integers each is an argparse error naming the flag."""
    if fixed:
        return list(fixed)
    try:
        shapes = [tuple(int(x) for x in s.split(",")) for s in specs] if specs else DEFAULT_SHAPES
    except ValueError:
        shapes = [()]
    if any(len(s) != 4 for s in shapes):
        ap.error(f"--shapes must be B,T,H,D (four integers each), got {specs}")
    return shapes


def load_providers():
    """name -> callable(q, k, v, beta) -> o [B, T, H, D], or name -> str (why it is unavailable)."""
    out = {}
    try:
        from kernels import chunk_delta_rule
        out["ours_chunk"] = lambda q, k, v, b: chunk_delta_rule(q, k, v, b)[0]
        out["ours_chunk_plain"] = out["ours_chunk"]  # with PROVIDER_SETTINGS in force around its timing
    except Exception as e:  # noqa: BLE001 - the chunk kernel may be missing or broken; the others still run
        out["ours_chunk"] = f"import failed: {type(e).__name__}: {e}"
    try:
        from kernels import fused_recurrent_delta_rule
        out["ours_recurrent"] = lambda q, k, v, b: fused_recurrent_delta_rule(q, k, v, b)[0]
    except Exception as e:  # noqa: BLE001
        out["ours_recurrent"] = f"import failed: {type(e).__name__}: {e}"
    try:
        from fla.ops.delta_rule import chunk_delta_rule as fla_chunk
        from fla.ops.delta_rule import fused_recurrent_delta_rule as fla_rec

        out["fla_chunk"] = lambda q, k, v, b: fla_chunk(q, k, v, b)[0]
        out["fla_recurrent"] = lambda q, k, v, b: fla_rec(q, k, v, b)[0]
    except Exception as e:  # noqa: BLE001
        out["fla_chunk"] = out["fla_recurrent"] = f"fla unavailable ({type(e).__name__})"

    def sdpa(q, k, v, b):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # (B, H, T, D) layout for SDPA
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return o.transpose(1, 2)

    out["sdpa_flash"] = sdpa
    return out


def make_inputs(B, T, H, D, seed=0, device="cuda", dtype=torch.bfloat16):
    g = torch.Generator(device=device).manual_seed(seed)
    kw = dict(device=device, generator=g)
    q = F.normalize(torch.randn(B, T, H, D, **kw), dim=-1).to(dtype)
    k = F.normalize(torch.randn(B, T, H, D, **kw), dim=-1).to(dtype)
    v = torch.randn(B, T, H, D, **kw).to(dtype)
    beta = torch.rand(B, T, H, **kw).sigmoid().to(dtype)
    do = torch.randn(B, T, H, D, **kw).to(dtype)
    return [x.requires_grad_() for x in (q, k, v, beta)], do


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_cell(fn, inputs, do, mode, warmup, rep, max_run_s, recurrent, tiny=False):
    """Median ms of one provider/mode (tiny: the ms of one wall-clock run), or raise."""
    import triton.testing

    if mode == "fwd":
        def run():
            with torch.no_grad():
                fn(*inputs)
    else:
        def run():
            fn(*inputs).backward(do)
    run()  # compile / autotune outside the timing
    _sync()
    t0 = time.perf_counter()
    run()
    _sync()
    one = time.perf_counter() - t0
    if tiny:
        return one * 1e3
    if recurrent and one > max_run_s:
        raise _Skip(f"skipped (one run {one:.1f} s > {max_run_s:g} s)")
    return triton.testing.do_bench(run, warmup=warmup, rep=rep, grad_to_none=inputs, return_mode="median")


class _Skip(Exception):
    pass


def fmt(cell):
    return f"{cell:.3f}" if isinstance(cell, float) else str(cell)


def ratio(a, b):
    return a / b if isinstance(a, float) and isinstance(b, float) and b > 0 else None


def main(argv=None):
    deadline = Deadline(None)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="directory for bench_delta_rule.md/.json/.png")
    ap.add_argument("--shapes", nargs="*", default=None, help="B,T,H,D ... (default: the seven shapes of DEFAULT_SHAPES)")
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--warmup", type=int, default=25, help="do_bench warm-up, ms")
    ap.add_argument("--rep", type=int, default=100, help="do_bench measurement time, ms")
    ap.add_argument("--max-run-s", type=float, default=1.0, help="skip recurrent kernels slower than this per run")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="start no new cell after this many seconds; the rest are written as skipped (time)")
    ap.add_argument("--resume", action="store_true", help="keep the measured cells of --out's JSON, run the others")
    ap.add_argument("--tiny", action="store_true", help="one tiny float16 shape on CPU (interpreter) or GPU")
    args = ap.parse_args(argv)
    deadline.max_seconds = args.max_seconds
    shapes = parse_shapes(ap, args.shapes, TINY_SHAPES if args.tiny else None)
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        sys.exit("bench_delta_rule.py needs a CUDA GPU (use --tiny to check the script on CPU)")
    device, dtype = ("cuda" if cuda else "cpu"), (torch.float16 if args.tiny else torch.bfloat16)
    this = [p for p in args.providers.split(",") if p]  # this command's providers
    wanted = list(this)  # the table's columns: an earlier table's first, on --resume
    available = load_providers()

    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for mod in ("triton", "fla"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            versions[mod] = None
    meta = {
        "command": command_line("bench_delta_rule.py", argv),
        "gpu": torch.cuda.get_device_name() if cuda else "cpu (interpreter)",
        "versions": versions,
        "dtype": str(dtype).replace("torch.", ""),
        "timing": ("one wall-clock run (the interpreter: checks the script, measures nothing)" if args.tiny else
                   f"triton.testing.do_bench median, warmup={args.warmup} ms, rep={args.rep} ms"),
        "chunk_settings": current_chunk_settings().as_dict(),
        "provider_settings": {p: PROVIDER_SETTINGS[p] for p in wanted if p in PROVIDER_SETTINGS},
    }
    out = Path(args.out)
    earlier: dict = {}  # shape -> the earlier table's row
    if args.resume and (out / "bench_delta_rule.json").exists():
        prev = json.loads((out / "bench_delta_rule.json").read_text())
        check_same(prev, json.loads(json.dumps(meta)), SAME, out / "bench_delta_rule.json")  # as the JSON holds it
        meta["command"] = prev["command"] + JOIN + meta["command"]
        if prev.get("notes"):
            meta["notes"] = prev["notes"]
        meta["provider_settings"] = {**prev.get("provider_settings", {}), **meta["provider_settings"]}
        earlier = {tuple(r["shape"]): r for r in prev["results"]}
        before = prev.get("providers") or [p for r in prev["results"] for m in MODES for p in r[m]]
        wanted = list(dict.fromkeys(before + wanted))
    print(json.dumps(meta), flush=True)
    meta["providers"] = wanted
    rows = {s: earlier.get(s) or {"shape": list(s), "fwd": {}, "fwdbwd": {}} for s in list(earlier) + shapes}

    def save():
        return write_outputs(out, meta, list(rows.values()), wanted)

    for B, T, H, D in shapes:
        shape = (B, T, H, D)
        row = rows[shape]
        todo = [(p, m) for p in this for m in MODES if not isinstance(row[m].get(p), float)]
        if not todo:
            continue
        if deadline.expired():
            for p, m in todo:
                row[m][p] = SKIPPED
            save()
            continue
        try:
            inputs, do = make_inputs(B, T, H, D, device=device, dtype=dtype)
        except Exception as e:  # noqa: BLE001
            for p, m in todo:
                row[m][p] = f"inputs failed: {type(e).__name__}"
            save()
            continue
        for p, m in todo:
            fn = available.get(p, "unknown provider")
            if isinstance(fn, str):
                row[m][p] = fn
            elif deadline.expired():
                row[m][p] = SKIPPED
            else:
                try:
                    with chunk_settings(**PROVIDER_SETTINGS.get(p, {})):
                        row[m][p] = time_cell(fn, inputs, do, m, args.warmup, args.rep, args.max_run_s,
                                              p in RECURRENT, tiny=args.tiny)
                except _Skip as e:
                    row[m][p] = str(e)
                except torch.cuda.OutOfMemoryError:
                    row[m][p] = "OOM"
                except Exception as e:  # noqa: BLE001 - report the cell and go on
                    row[m][p] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"
                    traceback.print_exc()
                for x in inputs:
                    x.grad = None
                if cuda:
                    torch.cuda.empty_cache()
            print(f"  {B},{T},{H},{D} {p:15s} {m:7s} {fmt(row[m][p])}", flush=True)
            save()  # a cut-short run keeps its cells
        # Sanity: our two kernels agree on this shape (catches a fast but wrong kernel).
        if not isinstance(available.get("ours_chunk"), str) and not isinstance(available.get("ours_recurrent"), str):
            try:
                with torch.no_grad():
                    a = available["ours_chunk"](*inputs).float()
                    b = available["ours_recurrent"](*inputs).float()
                row["rel_err_chunk_vs_recurrent"] = ((a - b).norm() / b.norm()).item()
            except Exception as e:  # noqa: BLE001
                row["rel_err_chunk_vs_recurrent"] = f"error: {type(e).__name__}"
        del inputs, do
        if cuda:
            torch.cuda.empty_cache()
    lines = save()
    print("\n".join(lines))


def summary_lines(results):
    """Ratios ours/fla (fwd, fwd+bwd) and the chunk-vs-recurrent speed-up, one line per shape."""
    lines = ["| B, T, H, D | ours/fla chunk fwd | ours/fla chunk fwd+bwd | ours/fla recurrent fwd+bwd "
             "| speed-up chunk vs recurrent (ours, fwd+bwd) | rel err chunk vs recurrent |",
             "|---|---|---|---|---|---|"]
    for r in results:
        fb, fw = r["fwdbwd"], r["fwd"]
        cells = [
            ratio(fw.get("ours_chunk"), fw.get("fla_chunk")),
            ratio(fb.get("ours_chunk"), fb.get("fla_chunk")),
            ratio(fb.get("ours_recurrent"), fb.get("fla_recurrent")),
            ratio(fb.get("ours_recurrent"), fb.get("ours_chunk")),
        ]
        err = r.get("rel_err_chunk_vs_recurrent", "n/a")
        err = f"{err:.1e}" if isinstance(err, float) else err
        lines.append(f"| {', '.join(map(str, r['shape']))} | "
                     + " | ".join("n/a" if c is None else f"{c:.2f}x" for c in cells) + f" | {err} |")
    return lines


def write_outputs(out: Path, meta, results, providers):
    out.mkdir(parents=True, exist_ok=True)
    cmds = commands(meta["command"])
    md = [f"# Delta-rule kernel benchmark ({meta['gpu']})", ""]
    md += ([f"Command: `{cmds[0]}`  "] if len(cmds) == 1 else
           ["Commands behind this table, in order:", ""] + [f"    {i}: {c}" for i, c in enumerate(cmds, 1)] + [""])
    md += [f"Versions: {meta['versions']}  ", f"dtype {meta['dtype']}; {meta['timing']}. Times in ms.", ""]
    md += (["Notes:", ""] + [f"- {n}" for n in meta["notes"]] + [""]) if meta.get("notes") else []
    for m, title in (("fwd", "Forward"), ("fwdbwd", "Forward + backward")):
        md += [f"## {title}", "", "| B, T, H, D | " + " | ".join(providers) + " |", "|---" * (len(providers) + 1) + "|"]
        for r in results:
            md.append(f"| {', '.join(map(str, r['shape']))} | "
                      + " | ".join(fmt(r[m].get(p, "-")) for p in providers) + " |")
        md.append("")
    ratios = summary_lines(results)
    md += ["## Ratios (ours/fla < 1 means ours is faster; speed-up = recurrent time / chunk time)", ""] + ratios + [""]
    png = plot(out / "bench_delta_rule.png", results, providers)
    if png:
        md += ["![fwd+bwd time vs T](bench_delta_rule.png)", ""]
    tuned = tuned_configs()  # the launch settings our chunk kernels' autotuner picked, when it is on
    if tuned:
        md += ["## Launch settings picked by our chunk kernels' autotuner", ""]
        md += [f"- `{name}`: " + "; ".join(f"{k} -> {c}" for k, c in picks.items()) for name, picks in tuned.items()]
        md.append("")
    (out / "bench_delta_rule.md").write_text("\n".join(md))
    (out / "bench_delta_rule.json").write_text(json.dumps({**meta, "results": results, "tuned": tuned}, indent=1))
    return ratios


def plot(path: Path, results, providers):
    """fwd+bwd ms vs T for the D=128, H=16 shapes (the sequence-length sweep)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001
        return False
    sweep = sorted((r for r in results if r["shape"][2:] == [16, 128]), key=lambda r: r["shape"][1])
    if not sweep:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for p in providers:
        pts = [(r["shape"][1], r["fwdbwd"].get(p)) for r in sweep]
        pts = [(t, ms) for t, ms in pts if isinstance(ms, float) and math.isfinite(ms)]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=p)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("T (B = " + ", ".join(str(r["shape"][0]) for r in sweep) + "; H=16, D=128)")
    ax.set_ylabel("forward + backward, ms")
    ax.set_title("Delta rule, bf16")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


if __name__ == "__main__":
    main()
