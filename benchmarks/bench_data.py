"""Data feed speed: memory-mapped packed batches, tokens/s per GPU-rank's loader.

Question: does the memmap path feed >= 200K tokens/s per GPU with 2-4 workers?

    python benchmarks/bench_data.py [--feed-tokens 33554432] [--shards 16] [--out benchmarks/results]

A prepared split of ``--feed-tokens`` tokens (random documents) in ``--shards`` shards of the prepared format, read
through ``PackedBatches`` and a DataLoader (seq_len 2048, batch 8, shuffled windows) with 0/2/4 workers, fixed and
varlen batches; tokens/s over whole epochs, worker start-up included. (Preparation speed: ``bench_prepare.py``.)
Writes ``<out>/bench_data.md`` and ``<out>/bench_data.json``; prints the table last.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.packed import PackedBatches, TokenFile, write_token_split  # noqa: E402
from datamodules.prepare import FORMAT_VERSION  # noqa: E402


def write_feed_split(directory: Path, n_tokens: int, n_shards: int, seed: int = 0) -> dict:
    """A prepared corpus of one train split of random documents in ``n_shards`` shards; returns its manifest."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    shards = []
    for k in range(n_shards):
        n = n_tokens // n_shards
        tokens = rng.integers(3, 32000, n, dtype=np.uint16)
        lengths = rng.integers(50, 4000, n // 50)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        offsets = np.append(offsets[offsets < n], n).astype(np.int64)
        tokens[offsets[:-1]] = 1
        tokens[offsets[1:] - 1] = 2
        entry = write_token_split(directory / "parts", f"{k:06d}", tokens, offsets)["shards"][0]
        entry["file"] = f"parts/{entry['file']}"
        shards.append(entry)
    meta = {"format": FORMAT_VERSION, "dtype": "uint16", "splits": {"train": {
        "n_tokens": sum(s["n_tokens"] for s in shards), "n_docs": sum(s["n_docs"] for s in shards), "shards": shards}}}
    (directory / "meta.json").write_text(json.dumps(meta))
    return meta


def bench_feed(directory: Path, meta: dict, seq_len: int, batch_size: int, epochs: int) -> list[dict]:
    import warnings

    from torch.utils.data import DataLoader

    warnings.filterwarnings("ignore", message="This DataLoader will create")  # 4 workers on a 2-core machine: on purpose
    rows = []
    for varlen in (False, True):
        for workers in (0, 2, 4):
            position = {"epoch": 0, "batch": 0}
            ds = PackedBatches(TokenFile(directory, "train", meta=meta), seq_len, batch_size, seed=1, varlen=varlen,
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
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--feed-tokens", type=int, default=32 * 2**20)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="output directory")
    args = ap.parse_args()
    import torch

    env = {"command": "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]), "cpu": platform.processor()
           or platform.machine(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
           "torch": torch.__version__, "numpy": np.__version__, "loadavg_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        meta = write_feed_split(tmp / "feed", args.feed_tokens, args.shards)
        feed = bench_feed(tmp / "feed", meta, 2048, 8, args.epochs)
    env["loadavg_end"] = os.getloadavg()[0]
    result = {"env": env, "feed": feed}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_data.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Data feed speed ({env['cpu_count']} CPU cores, no GPU)", "",
             f"Command: `{env['command']}`  ", f"Python {env['python']}, torch {env['torch']}, numpy {env['numpy']}. 1-min load average "
             f"{env['loadavg_start']:.1f} at start, {env['loadavg_end']:.1f} at end (the machine is shared: with load "
             f"above the core count, more processes do not add throughput).", "",
             "Preparation speed: `benchmarks/bench_prepare.py` (bench_prepare.md)."]
    lines += ["", f"## Feed (memmap -> packed batches, seq_len 2048, batch 8, shuffled, {args.epochs} epochs of "
              f"{args.feed_tokens:,} tokens in {args.shards} shards, worker start-up included)", "",
              "| batches | workers | tokens | seconds | tokens/s |", "|---|---|---|---|---|"]
    lines += [f"| {'varlen' if r['varlen'] else 'fixed'} | {r['num_workers']} | {r['tokens']:,} | {r['seconds']} | "
              f"{r['tokens_per_s']:,} |" for r in feed]
    (out / "bench_data.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
