"""Question: how fast does each family decode, token by token, and does the cost stay flat as the prompt grows?

    python benchmarks/bench_generate.py --out benchmarks/results/bench_generate                 # every family, 340M
    python benchmarks/bench_generate.py --families deltanet transformer --prompts 1024 8192 --batch 1 --out DIR
    python benchmarks/bench_generate.py --dry-run --out /tmp/bench                               # tiny, on CPU

Per (family, prompt length P, batch B): a random-init model (``--preset``, bf16 weights, the default Triton path),
random prompt ids, greedy ``model.generate`` on the fast path (static state, CUDA graph).  One untimed call at the
same shape first (Triton compilation and autotuning), then one measured call with ``--steps`` + 1 new tokens:

- prefill ms: the prompt's forward (chunk kernels), copying its cache into the static buffers, the first token;
- decode tok/s: ``B * steps / time`` of the ``--steps`` graph replays after the first token (CUDA events);
- peak memory: ``torch.cuda.max_memory_allocated`` over the measured call (weights included).

Bandwidth bound per step: the bytes a step must move, ``2 * (params - embedding)`` (bf16 weights, the LM head
included; the embedding reads only B rows) plus every static state buffer read once and the float32 recurrent
states written back (conv states and KV caches are read whole: the static KV cache of global attention holds P +
new tokens positions and is read in full every step); bound tok/s = ``B * HBM / bytes`` with ``--hbm`` (default
4.8e12 B/s, the H200's HBM3e specification; the measured copy bandwidth is lower, ~4.2e12).  ``of bound`` is
measured / bound.  With ``--with-1p3b`` (default on) 1.3B DeltaNet at batch 1 is added at every prompt length.

Robust for long sweeps: an out-of-memory cell is recorded as OOM and the sweep goes on; ``--max-seconds`` stops
starting new cells after that many seconds (the rest recorded as skipped); results are written after every cell,
and ``--resume`` reruns only the cells not yet in ``--out`` (a cell whose process died is recorded as killed, not
run again).  By estimate the default sweep takes some 15 minutes on
an H200, mostly the batch-64 prefills: split it over commands with ``--max-seconds 500 --resume`` repeated.
Outputs in ``--out``: ``bench_generate.md`` (table, command, GPU, versions), ``bench_generate.json``,
``bench_generate.png`` (decode tok/s against prompt length, one line per family and batch).
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deltanet import FAMILIES, DeltaNetConfig, DeltaNetForCausalLM  # noqa: E402
from deltanet.generation import PREFILL_CHUNK_SIZE, StaticCache  # noqa: E402
from benchmarks.sweep import JOIN, SKIPPED, STARTED, Deadline, Rows, command_line, split  # noqa: E402

DRY_SIZES = dict(vocab_size=97, hidden_size=64, num_layers=2, num_heads=2, chunk_size=16, attn_window=32,
                 ssm_state_size=4, backend="torch")


def build(family: str, preset: Optional[str], device: str) -> DeltaNetForCausalLM:
    if preset is None:  # dry run
        cfg = DeltaNetConfig(**{**DRY_SIZES, "family": family,
                                "attn_window": DRY_SIZES["attn_window"] if "swa" in family else None})
        return DeltaNetForCausalLM(cfg).eval()
    cfg = DeltaNetConfig.from_preset(preset, family=family)
    return DeltaNetForCausalLM(cfg).to(device=device, dtype=torch.bfloat16).eval()


def _buffers(d: dict):
    """(name, tensor) of a layer's static state, Mamba's two nested blocks flattened."""
    for name, v in d.items():
        if name == "weights":  # derived copies of weights (deltanet/layers/static.py): counted as weights
            continue
        yield from (_buffers(v) if isinstance(v, dict) else [(name, v)])


def step_bytes(model: DeltaNetForCausalLM, P: int, B: int, new: int) -> int:
    """Bytes one decode step moves at least: weights (no embedding) + static buffers read (+ fp32 states written)."""
    w = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embeddings" not in n)
    sc = StaticCache.allocate(model, B, P + new, 1, "meta", next(model.parameters()).dtype)  # sizes only
    s = sum(b.numel() * b.element_size() * (2 if name in ("recurrent_state", "ssm") else 1)
            for layer in sc.layers for name, b in _buffers(layer))
    return w + s


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench_cell(model, family: str, P: int, B: int, steps: int, device: str, hbm: float) -> dict:
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (B, P), device=device)
    # warm-up: Triton compilation, cuBLAS, one capture; FlexAttention (sliding window) compiles per length, the other
    # kernels do not, so the others warm up on a short prompt (a 64K-token attention prefill is not paid twice)
    warm = ids if model.config.attn_window is not None else ids[:, :min(P, 2048)]
    model.generate(warm, max_new_tokens=3, temperature=0.0)
    if warm.shape[1] > 1:  # and a prefill in two pieces: the kernels that continue a state compile apart; pieces no
        # longer than the default's, which the measured prefill uses (half a 32K prompt at batch 64 is 1M tokens)
        piece = min(B * (warm.shape[1] // 2), PREFILL_CHUNK_SIZE)
        model.generate(warm, max_new_tokens=3, temperature=0.0, prefill_chunk_size=piece)
    sync(device)
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    out, st = model.generate(ids, max_new_tokens=steps + 1, temperature=0.0, return_stats=True)
    sync(device)
    assert out.shape == (B, P + steps + 1), out.shape
    nbytes = step_bytes(model, P, B, steps + 1)
    bound = B * hbm / nbytes
    return {"family": family, "preset": None, "prompt": P, "batch": B, "status": "ok",
            "prefill_ms": st.prefill_ms, "decode_tok_s": st.decode_tokens_per_s,
            "decode_ms_per_step": 1e3 * st.decode_s / st.decode_steps, "capture_s": st.capture_s,
            "cuda_graph": st.cuda_graph,
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else None,
            "step_bytes": nbytes, "bound_tok_s": bound, "of_bound": st.decode_tokens_per_s / bound}


def table(rows: list[dict]) -> str:
    lines = ["| family | preset | batch | prompt | prefill ms | decode tok/s | ms/step | bound tok/s | of bound | "
             "peak GB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['family']} | {r['preset']} | {r['batch']} | {r['prompt']} | {r['status']} "
                         f"| | | | | |")
            continue
        mem = f"{r['peak_mem_gb']:.1f}" if r["peak_mem_gb"] is not None else "-"
        lines.append(f"| {r['family']} | {r['preset']} | {r['batch']} | {r['prompt']} | {r['prefill_ms']:.1f} | "
                     f"{r['decode_tok_s']:.0f} | {r['decode_ms_per_step']:.3f} | {r['bound_tok_s']:.0f} | "
                     f"{r['of_bound']:.2f} | {mem} |")
    return "\n".join(lines)


def flatness(rows: list[dict]) -> str:
    """Per (family, preset, batch): max / min decode tok/s over the prompt lengths measured."""
    groups: dict = {}
    for r in rows:
        if r["status"] == "ok":
            groups.setdefault((r["family"], r["preset"], r["batch"]), []).append(r["decode_tok_s"])
    lines = ["| family | preset | batch | prompts | max / min decode tok/s |", "|---|---|---|---|---|"]
    for (f, p, b), v in groups.items():
        lines.append(f"| {f} | {p} | {b} | {len(v)} | {max(v) / min(v):.3f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    groups: dict = {}
    for r in rows:
        if r["status"] == "ok":
            groups.setdefault((r["family"], r["preset"], r["batch"]), []).append((r["prompt"], r["decode_tok_s"]))
    for (f, p, b), pts in sorted(groups.items(), key=lambda kv: str(kv[0])):
        pts.sort()
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=f"{f} {p} B={b}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("decode tokens/s (all rows)")
    ax.set_title("steady decode, greedy, CUDA graph")
    if groups:
        ax.legend(fontsize=6, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--prompts", nargs="+", type=int, default=[1024, 8192, 32768, 65536])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 64])
    ap.add_argument("--preset", default="340M")
    ap.add_argument("--steps", type=int, default=128, help="timed decode steps per cell")
    ap.add_argument("--hbm", type=float, default=4.8e12, help="HBM bandwidth for the bound, B/s")
    ap.add_argument("--with-1p3b", action=argparse.BooleanOptionalAction, default=True,
                    help="add 1.3B deltanet at batch 1 at every prompt length")
    ap.add_argument("--max-seconds", type=float, default=None, help="start no new cell after this many seconds")
    ap.add_argument("--resume", action="store_true",
                    help="keep the cells already in --out's JSON (measured or OOM) and run only the others")
    ap.add_argument("--dry-run", action="store_true", help="tiny models on CPU, tiny prompts")
    args = ap.parse_args(argv)
    if min(args.prompts) < 1 or min(args.batch) < 1 or args.steps < 1:
        raise ValueError(f"prompts, batch and steps must be >= 1, got {args.prompts}, {args.batch}, {args.steps}")
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_generate.py needs a CUDA device (or --dry-run)")
    preset = None if args.dry_run else args.preset
    cells = [(f, preset, B, P) for f in args.families for B in args.batch for P in sorted(args.prompts)]
    if args.with_1p3b and not args.dry_run:
        cells += [("deltanet", "1.3B", 1, P) for P in sorted(args.prompts)]
    import triton
    meta = {"command": command_line("bench_generate.py", argv),
            "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "triton": triton.__version__, "hbm_B_per_s": args.hbm,
            "steps": args.steps}
    args.out.mkdir(parents=True, exist_ok=True)
    kept: list[dict] = []
    done: dict = {}
    if args.resume and (args.out / "bench_generate.json").exists():
        prev = json.loads((args.out / "bench_generate.json").read_text())
        meta["command"] = prev["meta"]["command"] + JOIN + meta["command"]  # every command behind the table
        # a killed cell is kept as killed, not run again; a cell of an earlier command that this one does not list
        # stays in the table
        kept, done, _ = split(prev["results"], lambda r: (r["family"], r["preset"], r["batch"], r["prompt"]),
                              set(cells), max_attempts=1)
    table_rows = Rows(kept, cells, done)  # the earlier cells, on disk from the first write

    def write() -> None:  # after every cell, so a run cut short keeps what it measured
        rows = table_rows.list()
        (args.out / "bench_generate.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
        md = ["# bench_generate: steady decode tokens/s against prompt length", "",
              f"Command: `{meta['command']}`  ", f"GPU: {meta['device']}; torch {meta['torch']}, triton "
              f"{meta['triton']}; bound at HBM {args.hbm:.2e} B/s (bf16 weights + state bytes per step); "
              f"{args.steps} timed steps, greedy, batch = rows decoded together.", "", table(rows), "",
              "Flatness (decode tok/s, max over min across prompt lengths):", "", flatness(rows), ""]
        (args.out / "bench_generate.md").write_text("\n".join(md))
        plot(rows, args.out / "bench_generate.png")

    deadline = Deadline(args.max_seconds)
    model, built = None, None
    for cell in cells:
        family, pre, B, P = cell
        base = {"family": family, "preset": pre, "prompt": P, "batch": B}
        if cell in done:
            continue
        if deadline.expired():
            table_rows[cell] = {**base, "status": SKIPPED}
            write()
            continue
        table_rows[cell] = {**base, "status": STARTED}  # on disk while it runs: a resumed sweep skips it if it died
        write()
        try:
            if built != (family, pre):
                model = None
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
                model, built = build(family, pre, device), (family, pre)
            r = bench_cell(model, family, P, B, args.steps, device, args.hbm)
            r["preset"] = pre
            table_rows[cell] = r
            print(f"{family} {pre} B={B} P={P}: prefill {r['prefill_ms']:.1f} ms, decode {r['decode_tok_s']:.0f} "
                  f"tok/s ({r['of_bound']:.2f} of bound {r['bound_tok_s']:.0f}), peak "
                  f"{r['peak_mem_gb'] if r['peak_mem_gb'] is not None else '-'} GB", flush=True)
        except torch.cuda.OutOfMemoryError:
            table_rows[cell] = {**base, "status": "OOM"}
            print(f"{family} {pre} B={B} P={P}: OOM", flush=True)
            gc.collect()
            torch.cuda.empty_cache()
        write()
    return {"meta": meta, "results": table_rows.list()}


if __name__ == "__main__":
    main()
