"""Data pipeline speed: preparation tokens/s (per process) and memory-mapped feed tokens/s (per GPU-rank's loader).

Question: does the memmap path feed >= 200K tokens/s per GPU with 2-4 workers, and how fast is preparation?

    python benchmarks/bench_data.py [--copies 8] [--feed-tokens 33554432] [--out benchmarks/results/data_cpu]

1. preparation: the embedded corpus (stdlib pydoc topics) repeated ``--copies`` times, written as SlimPajama-format
   ``.jsonl.zst`` shards, prepared with the Mistral tokenizer by 1 and 2 processes (zstd read + JSON parse + tokenize +
   uint16 write); tokens/s overall and per process.
2. feed: a prepared split of ``--feed-tokens`` tokens (random documents, written in the prepared format) read through
   ``PackedLMDataModule``'s DataLoader (seq_len 2048, batch 8, shuffled windows) with 0/2/4 workers, fixed and varlen
   batches; tokens/s over whole epochs, worker start-up included.
Writes ``<out>.md`` and ``<out>.json``; prints the table last.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.packed import PackedBatches, TokenFile  # noqa: E402
from datamodules.prepare import prepare_corpus  # noqa: E402
from datamodules.sources import SlimPajamaLocal, _embedded_documents  # noqa: E402


def write_corpus(root: Path, copies: int) -> int:
    import zstandard

    docs = [t for _, t in _embedded_documents()]
    chars = 0
    for c in range(copies):
        lines = "".join(json.dumps({"text": t, "meta": {"redpajama_set_name": "PythonDocs"}}) + "\n" for t in docs)
        path = root / "train" / f"chunk{c // 4 + 1}" / f"example_train_{c}.jsonl.zst"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
        chars += sum(map(len, docs))
    return chars


def bench_prepare(tmp: Path, copies: int) -> list[dict]:
    root = tmp / "sp"
    chars = write_corpus(root, copies)
    rows = []
    for num_proc in (1, 2):
        out = tmp / f"tok{num_proc}"
        t0 = time.perf_counter()
        meta = prepare_corpus(SlimPajamaLocal(root, splits=("train",)), out, num_proc=num_proc, progress=False)
        wall = time.perf_counter() - t0
        s = meta["splits"]["train"]
        rows.append({"num_proc": num_proc, "docs": s["n_docs"], "chars": chars, "tokens": s["n_tokens"],
                     "seconds": round(wall, 3), "tokens_per_s": s["tokens_per_s"],
                     "tokens_per_s_per_process": s["tokens_per_s_per_process"]})
        shutil.rmtree(out)
    return rows


def write_feed_split(directory: Path, n_tokens: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 32000, n_tokens, dtype=np.uint16)
    lengths = rng.integers(50, 4000, n_tokens // 50)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    offsets = offsets[offsets < n_tokens]
    offsets = np.append(offsets, n_tokens).astype(np.int64)
    tokens[offsets[:-1]] = 1
    tokens[offsets[1:] - 1] = 2
    directory.mkdir(parents=True, exist_ok=True)
    tokens.tofile(directory / "train.bin")
    np.save(directory / "train.idx.npy", offsets)


def bench_feed(directory: Path, seq_len: int, batch_size: int, epochs: int) -> list[dict]:
    import warnings

    from torch.utils.data import DataLoader

    warnings.filterwarnings("ignore", message="This DataLoader will create")  # 4 workers on a 2-core machine: on purpose
    rows = []
    for varlen in (False, True):
        for workers in (0, 2, 4):
            position = {"epoch": 0, "batch": 0}
            ds = PackedBatches(TokenFile(directory, "train"), seq_len, batch_size, seed=1, varlen=varlen,
                               position=position)
            loader = DataLoader(ds, batch_size=None, num_workers=workers)
            n_tok, t0 = 0, time.perf_counter()
            for e in range(epochs):
                position.update(epoch=e, batch=0)
                for b in loader:
                    n_tok += b["input_ids"].numel()
            wall = time.perf_counter() - t0
            rows.append({"varlen": varlen, "num_workers": workers, "seq_len": seq_len, "batch_size": batch_size,
                         "tokens": n_tok, "seconds": round(wall, 3), "tokens_per_s": round(n_tok / wall)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--feed-tokens", type=int, default=32 * 2**20)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "data_cpu"))
    args = ap.parse_args()
    import torch

    env = {"command": "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]), "cpu": platform.processor()
           or platform.machine(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
           "torch": torch.__version__, "numpy": np.__version__, "loadavg_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prep = bench_prepare(tmp, args.copies)
        write_feed_split(tmp / "feed", args.feed_tokens)
        feed = bench_feed(tmp / "feed", 2048, 8, args.epochs)
    env["loadavg_end"] = os.getloadavg()[0]
    result = {"env": env, "prepare": prep, "feed": feed}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Data pipeline speed ({env['cpu_count']} CPU cores, no GPU)", "",
             f"Command: `{env['command']}`  ", f"Python {env['python']}, torch {env['torch']}, numpy {env['numpy']}. 1-min load average "
             f"{env['loadavg_start']:.1f} at start, {env['loadavg_end']:.1f} at end (the machine is shared: with load "
             f"above the core count, more processes do not add throughput).", "",
             "## Preparation (SlimPajama-format .jsonl.zst -> Mistral tokenizer -> uint16 memmap)", "",
             "| processes | docs | tokens | seconds | tokens/s (wall) | tokens/s per process (CPU time) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['num_proc']} | {r['docs']:,} | {r['tokens']:,} | {r['seconds']} | {r['tokens_per_s']:,} | "
              f"{r['tokens_per_s_per_process']:,} |" for r in prep]
    lines += ["", f"## Feed (memmap -> packed batches, seq_len 2048, batch 8, shuffled, {args.epochs} epochs of "
              f"{args.feed_tokens:,} tokens, worker start-up included)", "",
              "| batches | workers | tokens | seconds | tokens/s |", "|---|---|---|---|---|"]
    lines += [f"| {'varlen' if r['varlen'] else 'fixed'} | {r['num_workers']} | {r['tokens']:,} | {r['seconds']} | "
              f"{r['tokens_per_s']:,} |" for r in feed]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
