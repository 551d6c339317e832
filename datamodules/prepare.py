"""Preparation: tokenize a document source once into memory-mapped token files.

Layout of ``out_dir`` (one directory per corpus + tokenizer):

- ``{split}.bin``: all documents' tokens back to back, raw ``uint16`` (``uint32`` when the vocabulary exceeds 65535);
  each document is ``[BOS] + tokens + [EOS]`` (BOS when ``add_bos``), so documents are separated by EOS.
- ``{split}.idx.npy``: ``int64[n_docs + 1]`` offsets; document ``i`` is ``tokens[idx[i]:idx[i+1]]``.
- ``meta.json``: fingerprint of the input and settings, dtype, counts per split, skipped records, tokens/s.
  Written last (atomically): its presence with a matching fingerprint means the corpus is ready, and a second
  preparation returns at once. Any change of the input files, tokenizer or settings prepares again.

Tokenization runs in ``num_proc`` processes (ordered ``imap`` over batches of documents, so the output is identical for
any ``num_proc``) with a progress bar; the report gives tokens/s overall (wall clock, reading included) and per process
(tokens per CPU-second of tokenization in one process).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from datamodules.sources import CorpusError, ReadStats
from datamodules.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

__all__ = ["prepare_corpus", "load_meta", "FORMAT_VERSION"]

FORMAT_VERSION = 1

_worker_state: dict = {}


def _init_pool_worker(*args) -> None:
    # one thread per process: parallelism comes from num_proc, and tokens/s per process stays a single core's speed
    os.environ["RAYON_NUM_THREADS"] = "1"  # HF tokenizers (read when its thread pool starts)
    _init_worker(*args)


def _init_worker(tokenizer_path: str, add_bos: bool, add_eos: bool, dtype: str) -> None:
    _worker_state.update(tok=load_tokenizer(tokenizer_path), add_bos=add_bos, add_eos=add_eos, dtype=np.dtype(dtype))


def _encode_batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray, float]:
    """Tokenize a batch of documents -> (lengths int64[n], tokens dtype[sum], CPU seconds spent).

    CPU time, not wall time: on a shared or oversubscribed machine it still measures one process's own speed."""
    t0 = time.process_time()
    s = _worker_state
    ids = s["tok"].encode_batch(texts, bos=s["add_bos"], eos=s["add_eos"], num_threads=1)
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    tokens = np.fromiter((t for x in ids for t in x), dtype=s["dtype"], count=int(lengths.sum()))
    return lengths, tokens, time.process_time() - t0


def _batched(it: Iterable[str], max_docs: int, max_chars: int = 1 << 18) -> Iterator[list[str]]:
    """Batches of up to ``max_docs`` documents and about ``max_chars`` characters (work units of ~0.1-1 s)."""
    batch, chars = [], 0
    for text in it:
        batch.append(text)
        chars += len(text)
        if len(batch) >= max_docs or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_meta(out_dir: str | os.PathLike) -> dict | None:
    """The ``meta.json`` of a prepared corpus if it is complete (all files present with the recorded sizes), else None."""
    out_dir = Path(out_dir)
    try:
        meta = json.loads((out_dir / "meta.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    itemsize = np.dtype(meta.get("dtype", "uint16")).itemsize
    for split, info in meta.get("splits", {}).items():
        b, i = out_dir / f"{split}.bin", out_dir / f"{split}.idx.npy"
        if not (b.is_file() and i.is_file()) or b.stat().st_size != info["n_tokens"] * itemsize:
            return None
    return meta


def prepare_corpus(source, out_dir: str | os.PathLike, tokenizer_path: str | None = None, add_bos: bool = True,
                   add_eos: bool = True, num_proc: int | None = None, batch_docs: int = 256,
                   progress: bool = True, max_tokens: dict | None = None) -> dict:
    """Tokenize every split of ``source`` into ``out_dir`` unless an identical preparation is already there.

    ``max_tokens`` (``{"train": 15_000_000_000}``) stops a split after the first batch of documents that reaches the cap:
    a prefix of the source's fixed order, so a capped preparation is reproducible.
    Returns the corpus meta (see module docstring). Raises :class:`CorpusError` on an empty split.
    """
    max_tokens = {k: int(v) for k, v in (max_tokens or {}).items() if v is not None}
    out_dir = Path(out_dir)
    tok = load_tokenizer(tokenizer_path)
    if add_eos and tok.eos_id is None:
        raise ValueError(f"{tok.path}: tokenizer has no EOS token; documents could not be separated")
    dtype = "uint16" if tok.vocab_size <= 65536 else "uint32"
    fingerprint = {
        "format": FORMAT_VERSION,
        "source": source.fingerprint(),
        "tokenizer": {"path": os.path.abspath(tok.path), "sha256": _sha256(tok.path)},
        "add_bos": add_bos,
        "add_eos": add_eos,
        "max_tokens": max_tokens,
    }
    fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from meta.json (lists, string keys)
    meta = load_meta(out_dir)
    if meta is not None and meta.get("fingerprint") == fingerprint:
        log.info("corpus already prepared in %s (%s)", out_dir,
                 ", ".join(f"{s}: {v['n_tokens']:,} tokens" for s, v in meta["splits"].items()))
        return meta

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)
    for stale in out_dir.glob("*.tmp*"):  # left by an interrupted preparation
        stale.unlink(missing_ok=True)
    num_proc = max(1, int(num_proc or min(8, os.cpu_count() or 1)))
    meta = {
        "fingerprint": fingerprint,
        "dtype": dtype,
        "vocab_size": tok.vocab_size,
        "bos_id": tok.bos_id,
        "eos_id": tok.eos_id,
        "num_proc": num_proc,
        "splits": {},
    }
    init_args = (tok.path, add_bos, add_eos, dtype)
    pool = None
    if num_proc > 1:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ctx.Pool(num_proc, initializer=_init_pool_worker, initargs=init_args)
    else:
        _init_worker(*init_args)
    try:
        for split in source.splits():
            meta["splits"][split] = _prepare_split(source, split, out_dir, pool, batch_docs, progress,
                                                     max_tokens.get(split))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    tmp = out_dir / f"meta.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, out_dir / "meta.json")
    return meta


def _prepare_split(source, split: str, out_dir: Path, pool, batch_docs: int, progress: bool,
                   max_tokens: int | None) -> dict:
    from tqdm.auto import tqdm

    stats = ReadStats()
    bin_tmp = out_dir / f"{split}.bin.tmp{os.getpid()}"
    lengths: list[np.ndarray] = []
    n_tokens, n_docs, busy = 0, 0, 0.0
    t0 = time.perf_counter()
    batches = _batched(source.iter_documents(split, stats), batch_docs)
    results = pool.imap(_encode_batch, batches) if pool is not None else map(_encode_batch, batches)
    bar = tqdm(desc=f"tokenizing {split}", unit=" docs", disable=not progress, mininterval=1.0, file=sys.stderr)
    try:
        with open(bin_tmp, "wb") as f:
            for lens, tokens, seconds in results:
                f.write(tokens.tobytes())
                lengths.append(lens)
                n_tokens += int(tokens.size)
                n_docs += len(lens)
                busy += seconds
                bar.update(len(lens))
                bar.set_postfix(tokens=f"{n_tokens:,}", refresh=False)
                if max_tokens is not None and n_tokens >= max_tokens:
                    break
    except BaseException:
        bin_tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    if n_docs == 0:
        bin_tmp.unlink(missing_ok=True)
        raise CorpusError(f"empty corpus: split {split!r} of {source.describe(split)} holds no document "
                          f"(read stats: {stats.to_dict()})")
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(np.concatenate(lengths), out=offsets[1:])
    assert offsets[-1] == n_tokens
    np.save(out_dir / f"{split}.idx.tmp{os.getpid()}.npy", offsets)
    os.replace(out_dir / f"{split}.idx.tmp{os.getpid()}.npy", out_dir / f"{split}.idx.npy")
    os.replace(bin_tmp, out_dir / f"{split}.bin")
    info = {
        "n_tokens": n_tokens,
        "n_docs": n_docs,
        "read": stats.to_dict(),
        "seconds": round(wall, 3),
        "tokens_per_s": round(n_tokens / max(wall, 1e-9)),
        "tokens_per_s_per_process": round(n_tokens / max(busy, 1e-9)),
    }
    skipped = stats.empty + stats.bad
    report = (f"prepared {split}: {n_docs:,} docs, {n_tokens:,} tokens in {wall:.2f}s, {info['tokens_per_s']:,} tokens/s "
              f"({info['tokens_per_s_per_process']:,} tokens/s per process)"
              + (f"; skipped {stats.empty} empty and {stats.bad} bad records" if skipped else ""))
    if log.hasHandlers():  # e.g. under run.py (Hydra configures logging): goes to the console and the run's log file
        log.info(report)
    else:  # a bare script or notebook: still show the report
        print(report, file=sys.stderr)
    return info
