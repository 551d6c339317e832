"""Preparation: tokenize a document source once into sharded, memory-mapped token files with a manifest.

Layout of ``out_dir`` (one directory per corpus + tokenizer):

- ``{split}/{i:06d}.bin``: the tokens of input file ``i`` of the split (its place in the source's fixed order), raw
  ``uint16`` (``uint32`` when the vocabulary exceeds 65536); each document is ``[BOS] + tokens + [EOS]`` (BOS when
  ``add_bos``), so documents are separated by EOS.
- ``{split}/{i:06d}.idx.npy``: ``int64[n_docs + 1]`` document offsets in the shard; ``{i:06d}.src.npy``: ``uint8`` or
  ``uint16[n_docs]``, each document's source set (an index into the shard record's ``sources``).
- ``{split}/{i:06d}.json``: the shard record: its input (name relative to the source's root, size in bytes), the
  settings it was made with (tokenizer sha256, BOS/EOS, source settings), document and token counts, per-source counts,
  read statistics (skipped records per file, replaced surrogates), and its wall and CPU seconds. Written last, after
  the token files were renamed into place: a shard is complete exactly when its record is there and matches.
- ``meta.json``: the manifest, written last (atomically) once every shard that a split needs is complete: dtype,
  special ids, tokenizer hash, settings, caps, the inputs' content fingerprint (sha256 of split, name and size of every
  input: no absolute path, no mtime, so a moved copy of the raw corpus is the same corpus), and per split the shards in
  order with the documents and tokens used from each, counts per SlimPajama source (``meta.redpajama_set_name``) and
  the read statistics. It holds no timing, so a resumed preparation writes it byte for byte as an uninterrupted one.

Work is split by input file. ``shard_index``/``shard_count`` take every ``shard_count``-th file from ``shard_index`` on
(one share per node or job); within a share, ``num_proc`` processes each tokenize whole files, at most ``num_proc`` at a
time. Every shard is written under an exclusive lock (``fcntl.lockf`` on ``{i:06d}.lock``, released by the kernel if the
process dies, and honoured across NFS clients), and its temporary files carry host and pid: one writer per shard even
when several nodes prepare into one shared directory. An interrupted preparation keeps every complete shard, and its
debris is never taken for one; the next run does only the missing shards. The run whose shard completes the set
writes the manifest (under ``meta.lock``).

Caps: ``max_tokens[split]`` keeps the shortest prefix of whole documents, in source order, holding at least that many
tokens; a source's ``max_docs[split]`` the first that many documents. Both are independent of ``num_proc`` and of the
sharding. Files are dispatched in order and a file is not started once the complete shards before it already reach the
cap, so one share reads at most ``num_proc`` files past it (several shares: up to the point where the shards complete
so far show the cap reached), and memory stays one batch of documents per process.
The last shard may be used in part (the manifest says how much); shards past the cap stay on disk and serve a later,
larger cap.

Changed inputs: a shard whose input name or size, or whose settings, differ from the current source's is prepared
again, and the log names it. (Inside training, ``PackedLMDataModule.prepare_data`` refuses instead: see ``lm.py``.)
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import logging
import os
import socket
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from datamodules.sources import CorpusError, InputFile, ReadStats
from datamodules.tokenizer import BACKENDS, load_tokenizer

log = logging.getLogger(__name__)

__all__ = ["prepare_corpus", "load_meta", "corpus_settings", "input_listing", "describe_changes", "FORMAT_VERSION"]

FORMAT_VERSION = 2
RESCAN_SECONDS = 10.0  # how often a capped split looks for shards completed by other processes

_worker_state: dict = {}


def _report(msg: str, level: int = logging.INFO) -> None:
    if log.hasHandlers():  # e.g. under run.py (Hydra configures logging): goes to the console and the run's log file
        log.log(level, msg)
    else:  # a bare script or notebook: still show the report
        print(msg, file=sys.stderr)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp.{socket.gethostname()}.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _dumps(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def corpus_settings(source, tokenizer_path: str | None, add_bos: bool, add_eos: bool, tok=None) -> dict:
    """What every shard of a corpus is made with (a shard made otherwise is stale). The tokenizer backend is not part
    of it: both give the same ids (``datamodules/tokenizer.py``)."""
    tok = tok if tok is not None else load_tokenizer(tokenizer_path)
    settings = {
        "format": FORMAT_VERSION,
        "tokenizer": {"name": os.path.basename(tok.path), "sha256": _sha256(tok.path)},
        "dtype": "uint16" if tok.vocab_size <= 65536 else "uint32",
        "add_bos": bool(add_bos),
        "add_eos": bool(add_eos),
        "source": source.fingerprint(),
    }
    return json.loads(json.dumps(settings))  # as it reads back from JSON (lists, string keys)


def input_listing(source) -> dict[str, list[InputFile]]:
    """Every split's input files (raises FileNotFoundError when a requested split or file is missing)."""
    return {split: source.inputs(split) for split in source.splits()}


def _inputs_digest(listing: dict[str, list[InputFile]]) -> str:
    h = hashlib.sha256()
    for split in sorted(listing):
        for inp in listing[split]:
            h.update(json.dumps([split, inp.name, inp.size]).encode() + b"\n")
    return h.hexdigest()


def describe_changes(meta: dict, settings: dict, listing: dict[str, list[InputFile]],
                     caps: dict | None = None) -> list[str]:
    """What differs between a prepared corpus (its manifest) and the current source and settings, one line each."""
    out = []
    old = meta.get("settings", {})
    for key in sorted(set(old) | set(settings)):
        if old.get(key) != settings.get(key):
            out.append(f"setting {key}: prepared with {old.get(key)!r}, now {settings.get(key)!r}")
    if caps is not None and meta.get("caps") != caps:
        out.append(f"caps: prepared with {meta.get('caps')!r}, now {caps!r}")
    for split in sorted(set(meta.get("inputs", {})) | set(listing)):
        was = {n: s for n, s in meta.get("inputs", {}).get(split, [])}
        now = {i.name: i.size for i in listing.get(split, [])}
        if split not in listing:
            out.append(f"split {split}: prepared, no longer in the source")
            continue
        if split not in meta.get("inputs", {}):
            out.append(f"split {split}: in the source, not prepared")
            continue
        for name in sorted(set(was) | set(now)):
            if name not in now:
                out.append(f"{split}: {name} removed (was {was[name]:,} bytes)" if was[name] is not None
                           else f"{split}: {name} removed")
            elif name not in was:
                out.append(f"{split}: {name} added")
            elif was[name] != now[name]:
                out.append(f"{split}: {name} changed size: {was[name]} -> {now[name]} bytes")
        if not out and [n for n, _ in meta["inputs"][split]] != [i.name for i in listing[split]]:
            out.append(f"{split}: the input order changed")
    return out


def load_meta(out_dir: str | os.PathLike) -> dict | None:
    """The manifest of a prepared corpus if it is complete (every shard file present with its recorded size), else
    None."""
    out_dir = Path(out_dir)
    try:
        meta = json.loads((out_dir / "meta.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if meta.get("format") != FORMAT_VERSION:
        return None
    itemsize = np.dtype(meta["dtype"]).itemsize
    for info in meta.get("splits", {}).values():
        for shard in info["shards"]:
            b, i = out_dir / f"{shard['file']}.bin", out_dir / f"{shard['file']}.idx.npy"
            if not (b.is_file() and i.is_file()) or b.stat().st_size != shard["file_tokens"] * itemsize:
                return None
    return meta


# ----------------------------------------------------------------------------------------------- one shard (a worker)
def _init_pool_worker(*args) -> None:
    # one thread per process: parallelism comes from num_proc, and tokens/s per process stays a single core's speed
    os.environ["RAYON_NUM_THREADS"] = "1"  # HF tokenizers (read when its thread pool starts)
    _init_worker(*args)


def _init_worker(source, tokenizer_path: str | None, backend: str, settings: dict, batch_docs: int) -> None:
    _worker_state.update(source=source, tok=load_tokenizer(tokenizer_path, backend=backend), settings=settings,
                         dtype=np.dtype(settings["dtype"]), batch_docs=batch_docs)


def _batched(it: Iterable[tuple[str, str | None]], max_docs: int, max_chars: int = 1 << 18
             ) -> Iterator[list[tuple[str, str | None]]]:
    """Batches of up to ``max_docs`` documents and about ``max_chars`` characters."""
    batch, chars = [], 0
    for doc in it:
        batch.append(doc)
        chars += len(doc[0])
        if len(batch) >= max_docs or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _shard_paths(out_dir: Path, split: str, index: int) -> dict[str, Path]:
    stem = out_dir / split / f"{index:06d}"
    return {k: stem.with_name(stem.name + ext) for k, ext in
            (("bin", ".bin"), ("idx", ".idx.npy"), ("src", ".src.npy"), ("json", ".json"), ("lock", ".lock"))}


def _shard_record(paths: dict[str, Path], inp: InputFile, settings: dict, itemsize: int) -> dict | None:
    """The shard's record when the shard is complete and was made from this input with these settings, else None."""
    try:
        rec = json.loads(paths["json"].read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if rec.get("input") != {"name": inp.name, "size": inp.size} or rec.get("settings") != settings:
        return None
    if not paths["bin"].is_file() or paths["bin"].stat().st_size != rec["n_tokens"] * itemsize:
        return None
    return rec


class _ShardLock:
    """Exclusive, non-blocking ``lockf`` on a shard's lock file; ``held`` says whether this process got it."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.held = True
            os.ftruncate(self.fd, 0)
            os.write(self.fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            self.held = False

    def release(self, remove: bool = False) -> None:
        if self.held and remove:  # safe: every writer re-checks completeness after taking the lock
            self.path.unlink(missing_ok=True)
        os.close(self.fd)


def _tokenize_shard(task: tuple[str, int, InputFile, str]) -> dict:
    """Tokenize one input file into its shard. Returns ``{"status": "done"|"busy", ...record}``."""
    split, index, inp, out_dir = task
    s = _worker_state
    settings, dtype = s["settings"], s["dtype"]
    paths = _shard_paths(Path(out_dir), split, index)
    paths["bin"].parent.mkdir(parents=True, exist_ok=True)
    lock = _ShardLock(paths["lock"])
    if not lock.held:
        lock.release()
        return {"status": "busy", "split": split, "index": index, "input": inp.name,
                "holder": paths["lock"].read_text().strip() if paths["lock"].exists() else "?"}
    try:
        rec = _shard_record(paths, inp, settings, dtype.itemsize)
        if rec is not None:  # completed by another process meanwhile
            return {"status": "done", **rec}
        for p in paths["bin"].parent.glob(f"{index:06d}.*.tmp.*"):  # debris of an interrupted writer of this shard
            p.unlink(missing_ok=True)
        paths["json"].unlink(missing_ok=True)
        rec = _write_shard(paths, split, index, inp, s["source"], s["tok"], settings, dtype, s["batch_docs"])
        return {"status": "done", **rec}
    finally:
        lock.release(remove=True)


def _write_shard(paths, split, index, inp, source, tok, settings, dtype, batch_docs) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    tag = f"tmp.{socket.gethostname()}.{os.getpid()}"
    tmp = {k: p.with_name(f"{p.name}.{tag}") for k, p in paths.items() if k in ("bin", "idx", "src")}
    stats = ReadStats()
    lengths: list[np.ndarray] = []
    src_ids: list[int] = []
    sources: dict[str, int] = {}
    add_bos, add_eos = settings["add_bos"], settings["add_eos"]
    try:
        with open(tmp["bin"], "wb") as f:
            for batch in _batched(source.read(inp, stats), batch_docs):
                ids = tok.encode_batch([t for t, _ in batch], bos=add_bos, eos=add_eos, num_threads=1)
                lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
                f.write(np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lens.sum())).tobytes())
                lengths.append(lens)
                src_ids.extend(sources.setdefault(name or "", len(sources)) for _, name in batch)
        lens = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
        offsets = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        with open(tmp["idx"], "wb") as f:
            np.save(f, offsets)
        with open(tmp["src"], "wb") as f:
            np.save(f, np.asarray(src_ids, dtype=np.uint8 if len(sources) <= 256 else np.uint16))
        for k in ("bin", "idx", "src"):
            os.replace(tmp[k], paths[k])
    except BaseException:
        for p in tmp.values():
            p.unlink(missing_ok=True)
        raise
    names = sorted(sources, key=sources.get)
    per_source = {n: {"docs": 0, "tokens": 0} for n in names}
    src = np.asarray(src_ids, dtype=np.int64)
    for j, n in enumerate(names):
        per_source[n] = {"docs": int((src == j).sum()), "tokens": int(lens[src == j].sum())}
    rec = {
        "split": split,
        "index": index,
        "input": {"name": inp.name, "size": inp.size},
        "settings": settings,
        "n_docs": int(len(lens)),
        "n_tokens": int(offsets[-1]),
        "sources": names,
        "per_source": per_source,
        "read": stats.to_dict(),
        "seconds": round(time.perf_counter() - t0, 4),
        "cpu_seconds": round(time.process_time() - c0, 4),
        "host": socket.gethostname(),
    }
    _write_atomic(paths["json"], _dumps(rec))  # the commit point
    return rec


# ----------------------------------------------------------------------------------------------- the whole corpus
def prepare_corpus(source, out_dir: str | os.PathLike, tokenizer_path: str | None = None, add_bos: bool = True,
                   add_eos: bool = True, num_proc: int | None = None, batch_docs: int = 256,
                   progress: bool = True, max_tokens: dict | None = None, shard_index: int = 0, shard_count: int = 1,
                   tokenizer_backend: str = "sentencepiece") -> dict | None:
    """Tokenize ``source`` into sharded token files in ``out_dir`` (module docstring), resuming what is there.

    Args:
        source: a document source (``datamodules.sources``).
        out_dir: the corpus directory.
        tokenizer_path: None for Mistral's 32K SentencePiece model, or a ``.model`` / ``tokenizer.json`` path.
        add_bos, add_eos: document framing ``[BOS] text [EOS]``.
        num_proc: tokenizer processes (None: min(8, CPUs)); each tokenizes whole input files.
        batch_docs: documents per tokenizer call.
        progress: progress bar over input files.
        max_tokens: per-split token caps (``{"train": 15_000_000_000}``): the shortest prefix of whole documents
            holding at least that many tokens.
        shard_index, shard_count: this process's share of the input files (every ``shard_count``-th from
            ``shard_index``), e.g. a node's rank and the number of nodes.
        tokenizer_backend: ``"sentencepiece"`` or ``"hf"`` (the same ids through HF ``tokenizers``; see tokenizer.py).

    Returns the manifest (``meta.json``) when the corpus is complete, or None when shards of other shares are still
    missing (the log says which). Raises :class:`CorpusError` on bad input, naming the file.
    """
    if not 0 <= int(shard_index) < int(shard_count):
        raise ValueError(f"shard_index must be in [0, shard_count), got {shard_index} of {shard_count}")
    caps = {"max_tokens": {k: int(v) for k, v in (max_tokens or {}).items() if v is not None},
            "max_docs": {k: int(v) for k, v in (getattr(source, "max_docs", None) or {}).items() if v is not None}}
    out_dir = Path(out_dir)
    if tokenizer_backend not in BACKENDS:
        raise ValueError(f"tokenizer_backend must be one of {BACKENDS}, got {tokenizer_backend!r}")
    tok = load_tokenizer(tokenizer_path)  # here only for its ids and file: the workers load the chosen backend
    if add_eos and tok.eos_id is None:
        raise ValueError(f"{tok.path}: tokenizer has no EOS token; documents could not be separated")
    settings = corpus_settings(source, tokenizer_path, add_bos, add_eos, tok)
    listing = input_listing(source)
    digest = _inputs_digest(listing)
    meta = load_meta(out_dir)
    if meta is not None:
        changes = describe_changes(meta, settings, listing, caps)
        if not changes:
            _report(f"corpus already prepared in {out_dir} ("
                    + ", ".join(f"{s}: {v['n_tokens']:,} tokens" for s, v in meta["splits"].items()) + ")")
            return meta
        _report(f"{out_dir}: the prepared corpus differs from the source; preparing what changed:\n  "
                + "\n  ".join(changes[:20]) + (f"\n  ... {len(changes) - 20} more" if len(changes) > 20 else ""),
                logging.WARNING)
        (out_dir / "meta.json").unlink(missing_ok=True)  # no reader may take the corpus as complete meanwhile
    out_dir.mkdir(parents=True, exist_ok=True)
    num_proc = max(1, int(num_proc or min(8, os.cpu_count() or 1)))
    itemsize = np.dtype(settings["dtype"]).itemsize
    init_args = (source, tokenizer_path, tokenizer_backend, settings, batch_docs)

    t0 = time.perf_counter()
    records: dict[str, dict[int, dict]] = {s: {} for s in listing}
    busy: list[dict] = []
    done_here: list[dict] = []
    pool = None
    if num_proc > 1:
        import multiprocessing as mp

        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ProcessPoolExecutor(num_proc, mp_context=ctx, initializer=_init_pool_worker, initargs=init_args)
    else:
        _init_worker(*init_args)
    from tqdm.auto import tqdm

    total = sum(len(v) for v in listing.values())
    bar = tqdm(desc="preparing shards", total=total, unit=" files", disable=not progress, mininterval=1.0,
               file=sys.stderr)
    try:
        for split, inputs in listing.items():
            cap_t, cap_d = caps["max_tokens"].get(split), caps["max_docs"].get(split)
            recs = records[split]
            last_scan = [0.0]

            def known_before(i: int) -> tuple[int, int]:
                """Tokens and documents of the complete shards before ``i`` (a lower bound of the prefix's)."""
                if time.perf_counter() - last_scan[0] > RESCAN_SECONDS or not last_scan[0]:
                    last_scan[0] = time.perf_counter()
                    for j in range(i):
                        if j not in recs:
                            r = _shard_record(_shard_paths(out_dir, split, j), inputs[j], settings, itemsize)
                            if r is not None:
                                recs[j] = r
                return (sum(r["n_tokens"] for j, r in recs.items() if j < i),
                        sum(r["n_docs"] for j, r in recs.items() if j < i))

            def needed(i: int) -> bool:
                if cap_t is None and cap_d is None:
                    return True
                n_tok, n_doc = known_before(i)
                return not ((cap_t is not None and n_tok >= cap_t) or (cap_d is not None and n_doc >= cap_d))

            todo = []
            for i, inp in enumerate(inputs):
                rec = _shard_record(_shard_paths(out_dir, split, i), inp, settings, itemsize)
                if rec is not None:
                    recs[i] = rec
                    bar.update(1)
                elif i % shard_count == shard_index:
                    todo.append(i)
            if cap_t is not None or cap_d is not None:
                last_scan[0] = time.perf_counter()  # the scan above is fresh

            def finished(res: dict) -> None:
                bar.update(1)
                if res["status"] == "busy":
                    busy.append(res)
                    return
                res = {k: v for k, v in res.items() if k != "status"}
                recs[res["index"]] = res
                done_here.append(res)
                bar.set_postfix(tokens=f"{sum(r['n_tokens'] for r in done_here):,}", refresh=False)

            tasks = iter(todo)
            if pool is None:
                for i in tasks:
                    if not needed(i):
                        break
                    finished(_tokenize_shard((split, i, inputs[i], str(out_dir))))
                continue
            running: set = set()
            exhausted = False
            while True:
                while not exhausted and len(running) < num_proc:
                    i = next(tasks, None)
                    if i is None or not needed(i):
                        exhausted = True
                        break
                    running.add(pool.submit(_tokenize_shard, (split, i, inputs[i], str(out_dir))))
                if not running:
                    break
                completed, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in completed:
                    finished(fut.result())
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    wall = time.perf_counter() - t0
    if done_here:
        n_tok = sum(r["n_tokens"] for r in done_here)
        cpu = sum(r["cpu_seconds"] for r in done_here)
        _report(f"tokenized {len(done_here)} file(s) here: {sum(r['n_docs'] for r in done_here):,} docs, {n_tok:,} "
                f"tokens in {wall:.2f}s, {n_tok / max(wall, 1e-9):,.0f} tokens/s with {num_proc} process(es) "
                f"({n_tok / max(cpu, 1e-9):,.0f} tokens/s per process, CPU time)")
    for b in busy:
        _report(f"{b['split']} shard {b['index']} ({b['input']}) is being written by another process ({b['holder']})",
                logging.WARNING)
    return _finalize(out_dir, listing, records, settings, caps, digest, tok)


def _cut(recs: dict[int, dict], n_inputs: int, cap_t: int | None, cap_d: int | None, out_dir: Path, split: str
         ) -> tuple[list[tuple[int, int, int]], list[int]]:
    """The prefix of shards a split uses: [(index, docs used, tokens used)], and the missing shard indices."""
    used, missing, n_tok, n_doc = [], [], 0, 0
    for i in range(n_inputs):
        if (cap_t is not None and n_tok >= cap_t) or (cap_d is not None and n_doc >= cap_d):
            break
        r = recs.get(i)
        if r is None:
            missing.append(i)
            continue
        k_docs = r["n_docs"]
        if missing:  # after a gap the prefix's counts are a lower bound: enough to know where the cap falls at most
            used.append((i, k_docs, r["n_tokens"]))
            n_tok, n_doc = n_tok + r["n_tokens"], n_doc + k_docs
            continue
        if cap_d is not None:
            k_docs = min(k_docs, cap_d - n_doc)
        if cap_t is not None and n_tok + r["n_tokens"] >= cap_t:
            offsets = np.load(_shard_paths(out_dir, split, i)["idx"], mmap_mode="r")
            k_docs = min(k_docs, int(np.searchsorted(offsets, cap_t - n_tok, side="left")))
        k_tok = int(np.load(_shard_paths(out_dir, split, i)["idx"], mmap_mode="r")[k_docs]) \
            if k_docs < r["n_docs"] else r["n_tokens"]
        used.append((i, k_docs, k_tok))
        n_tok, n_doc = n_tok + k_tok, n_doc + k_docs
    return used, missing


def _finalize(out_dir: Path, listing, records, settings, caps, digest, tok) -> dict | None:
    splits, missing_all = {}, {}
    for split, inputs in listing.items():
        used, missing = _cut(records[split], len(inputs), caps["max_tokens"].get(split),
                             caps["max_docs"].get(split), out_dir, split)
        if missing:
            missing_all[split] = missing
            continue
        stats = ReadStats()
        per_source: dict[str, dict] = {}
        shards = []
        for i, k_docs, k_tok in used:
            r = records[split][i]
            stats.add(r["read"])
            if k_docs == r["n_docs"]:
                for name, c in r["per_source"].items():
                    acc = per_source.setdefault(name, {"docs": 0, "tokens": 0})
                    acc["docs"] += c["docs"]
                    acc["tokens"] += c["tokens"]
            else:  # the cut shard: count the documents used, by their source ids
                p = _shard_paths(out_dir, split, i)
                src = np.load(p["src"])[:k_docs].astype(np.int64)
                lens = np.diff(np.load(p["idx"])[:k_docs + 1])
                for j, name in enumerate(r["sources"]):
                    acc = per_source.setdefault(name, {"docs": 0, "tokens": 0})
                    acc["docs"] += int((src == j).sum())
                    acc["tokens"] += int(lens[src == j].sum())
            shards.append({"file": f"{split}/{i:06d}", "input": r["input"]["name"], "n_docs": k_docs,
                           "n_tokens": k_tok, "file_docs": r["n_docs"], "file_tokens": r["n_tokens"]})
        n_tok, n_doc = sum(s["n_tokens"] for s in shards), sum(s["n_docs"] for s in shards)
        if n_doc == 0:
            raise CorpusError(f"empty corpus: split {split!r} holds no document ({len(inputs)} input file(s), "
                              f"first {inputs[0].name}; read stats: {stats.to_dict()})")
        read = stats.to_dict()
        read["sets"] = dict(sorted(read["sets"].items()))
        splits[split] = {"n_tokens": n_tok, "n_docs": n_doc, "n_inputs": len(inputs), "n_shards_used": len(shards),
                         "cut": bool(shards and shards[-1]["n_docs"] < shards[-1]["file_docs"]),
                         "per_source": dict(sorted(per_source.items())), "read": read, "shards": shards}
        if read["bad"] or read["surrogate_docs"] or read["empty"]:
            _report(f"{split}: skipped {read['bad']} bad record(s) in {len(read['bad_by_file'])} file(s), "
                    f"{read['empty']} empty text(s); replaced {read['surrogate_chars']} lone surrogate(s) in "
                    f"{read['surrogate_docs']} document(s)" + "".join(f"\n  {f}: {n} bad"
                                                                       for f, n in list(read["bad_by_file"].items())[:10]),
                    logging.WARNING if read["bad"] else logging.INFO)
    if missing_all:
        _report(f"{out_dir}: not complete yet; missing shards: "
                + "; ".join(f"{s}: {len(m)} ({', '.join(map(str, m[:8]))}{' ...' if len(m) > 8 else ''})"
                            for s, m in missing_all.items())
                + " (other shard indices, or another process still running); the run that completes them writes "
                  "meta.json", logging.WARNING)
        return None
    meta = {
        "format": FORMAT_VERSION,
        "dtype": settings["dtype"],
        "vocab_size": tok.vocab_size,
        "bos_id": tok.bos_id,
        "eos_id": tok.eos_id,
        "settings": settings,
        "caps": caps,
        "inputs_sha256": digest,
        "inputs": {s: [[i.name, i.size] for i in inputs] for s, inputs in listing.items()},
        "splits": splits,
    }
    meta["fingerprint"] = {"settings": settings, "caps": caps, "inputs_sha256": digest}
    lock = _ShardLock(out_dir / "meta.lock")
    try:
        if not lock.held:
            _report(f"{out_dir}: another process is writing meta.json", logging.WARNING)
        else:
            _write_atomic(out_dir / "meta.json", _dumps(meta))
    finally:
        lock.release(remove=lock.held)
    for split, info in splits.items():
        _report(f"prepared {split}: {info['n_docs']:,} docs, {info['n_tokens']:,} tokens from "
                f"{info['n_shards_used']} of {info['n_inputs']} input file(s)" + (" (cut at the cap)" if info["cut"] else ""))
    return meta
