"""Small corpora that the data tests write (SlimPajama-format jsonl / .jsonl.zst, parquet, txt)."""
from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ("delta rule state chunk linear attention memory key value query beta token window packing shard worker rank "
         "resume epoch batch sequence gradient transformer recurrent parallel kernel").split()
SETS = ("RedPajamaArXiv", "RedPajamaGithub", "RedPajamaWikipedia")


def random_docs(n: int, seed: int, min_words: int = 1, max_words: int = 120) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) + "." for _ in range(n)]


def records(docs: list[str], seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": d, "meta": {"redpajama_set_name": rng.choice(SETS)}} for d in docs]


def write_jsonl(path: Path, recs: list[dict], zst: bool | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(r) + "\n" for r in recs).encode()
    if zst if zst is not None else path.name.endswith(".zst"):
        import zstandard

        payload = zstandard.ZstdCompressor().compress(payload)
    path.write_bytes(payload)
    return path


def write_slimpajama(root: Path, train_docs: list[str], val_docs: list[str], n_chunks: int = 2) -> dict:
    """SlimPajama layout: train/chunk{1..}/example_train_{i}.jsonl.zst (two files a chunk), validation/chunk1/*.jsonl.

    Returns the records in the order the source reads them (sorted file paths)."""
    recs = records(train_docs, seed=1)
    per_file = -(-len(recs) // (2 * n_chunks))
    files = {}
    for i in range(2 * n_chunks):
        part = recs[i * per_file:(i + 1) * per_file]
        files[root / "train" / f"chunk{i // 2 + 1}" / f"example_train_{i}.jsonl.zst"] = part
    for path, part in files.items():
        write_jsonl(path, part)
    val = records(val_docs, seed=2)
    write_jsonl(root / "validation" / "chunk1" / "example_holdout_0.jsonl", val)
    train_order = [r for p in sorted(files, key=str) for r in files[p]]
    return {"train": train_order, "validation": val}


def write_many(root: Path, n_files: int, docs_per_file: int, seed: int) -> list[list[dict]]:
    """SlimPajama layout with `n_files` train files (two chunks) and one validation file; the records per train file."""
    out = []
    for i in range(n_files):
        recs = records(random_docs(docs_per_file, seed=seed + i), seed=seed + i)
        write_jsonl(root / "train" / f"chunk{i % 2 + 1}" / f"example_train_{i:03d}.jsonl.zst", recs)
        out.append(recs)
    write_jsonl(root / "validation" / "chunk1" / "example_holdout_0.jsonl", records(random_docs(9, seed=seed - 1)))
    order = sorted(range(n_files), key=lambda i: (i % 2, i))  # sorted paths: chunk1 files, then chunk2
    return [out[i] for i in order]


class SlowSource:
    """Wraps a source; sleeps `delay` seconds before each file (to interrupt a preparation midway)."""

    def __init__(self, inner, delay: float):
        self.inner, self.delay, self.max_docs = inner, delay, {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def read(self, inp, stats):
        import time

        time.sleep(self.delay)
        yield from self.inner.read(inp, stats)
