"""Document sources: where raw text comes from, before tokenization.

Each source is built from config (``_target_``) and offers

- ``splits() -> list[str]``: the splits it provides (``"train"`` always; ``"validation"``/``"test"`` when present);
- ``fingerprint() -> dict``: a cheap description (paths, sizes, mtimes, limits) that changes when the input changes, so
  preparation can be skipped when nothing did;
- ``iter_documents(split, stats) -> Iterator[str]``: the documents' texts in a fixed order, counting what is read and
  skipped in ``stats`` (a :class:`ReadStats`).

Sources:

- :class:`LocalFiles`: any local ``.jsonl``, ``.jsonl.zst``, ``.json`` (one object a line), ``.parquet`` (a text column)
  or ``.txt`` (one file = one document) files, given as files, directories (searched recursively) or glob patterns.
- :class:`SlimPajamaLocal`: a local copy of SlimPajama (``train/chunkN/*.jsonl.zst``, ``validation/...``, ``test/...``;
  lines ``{"text": ..., "meta": {"redpajama_set_name": ...}}``), optionally filtered by set name.
- :class:`HFDataset`: any dataset through HF ``datasets.load_dataset(..., streaming=True)``, e.g. ``cerebras/SlimPajama-627B``
  (needs network) or, for tests, ``path="json"`` with local ``data_files``.
- :class:`EmbeddedCorpus`: the no-network default corpus: the Python documentation topics that ship with the standard library
  (``pydoc_data.topics``), written once as a SlimPajama-format local corpus and read through :class:`SlimPajamaLocal`.

Bad input raises :class:`CorpusError` naming the file (and line): missing path, corrupt zstd stream, malformed JSON line,
record without a string text, empty corpus. With ``skip_bad_records=True`` malformed records are skipped instead, counted
in the stats and logged (first few with file:line); a corrupt compressed stream always raises (its rest is unreadable).
Records with an empty text are skipped and counted (``empty``), never silently.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

log = logging.getLogger(__name__)

__all__ = ["CorpusError", "ReadStats", "LocalFiles", "SlimPajamaLocal", "HFDataset", "EmbeddedCorpus", "expand_paths"]

SUPPORTED_SUFFIXES = (".jsonl.zst", ".jsonl", ".json", ".parquet", ".txt")


class CorpusError(ValueError):
    """Unreadable or unusable input; the message names the file (and line)."""


@dataclass
class ReadStats:
    """What a pass over a source read and skipped."""

    docs: int = 0
    empty: int = 0  # records whose text is empty: skipped
    bad: int = 0  # malformed records skipped (only with skip_bad_records=True)
    filtered: int = 0  # records outside the selected SlimPajama sets
    bad_examples: list[str] = field(default_factory=list)  # "file:line: why", first few
    sets: Counter = field(default_factory=Counter)  # documents per meta.redpajama_set_name

    def to_dict(self) -> dict:
        return {
            "docs": self.docs,
            "empty": self.empty,
            "bad": self.bad,
            "filtered": self.filtered,
            "bad_examples": list(self.bad_examples),
            "sets": dict(sorted(self.sets.items())),
        }


def _suffix_ok(path: str) -> bool:
    return path.endswith(SUPPORTED_SUFFIXES)


def expand_paths(paths: str | Sequence[str]) -> list[str]:
    """Files named by ``paths`` (files, directories searched recursively, glob patterns), sorted, duplicates removed.

    Raises :class:`FileNotFoundError` naming any entry that matches nothing.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[str] = []
    for p in paths:
        p = os.path.expanduser(str(p))
        if glob.has_magic(p):
            matches = sorted(m for m in glob.glob(p, recursive=True) if os.path.isfile(m))
            if not matches:
                raise FileNotFoundError(f"no file matches {p!r}")
            out.extend(matches)
        elif os.path.isdir(p):
            matches = sorted(
                os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs if _suffix_ok(f) and not f.startswith(".")
            )
            if not matches:
                raise FileNotFoundError(f"directory {p!r} holds no {'/'.join(SUPPORTED_SUFFIXES)} file")
            out.extend(matches)
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or directory: {p!r}")
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def _plain(obj):
    """Plain dicts/lists from config containers (Hydra passes DictConfig/ListConfig), for libraries that check types."""
    if isinstance(obj, (str, bytes, os.PathLike)) or obj is None:
        return obj
    if hasattr(obj, "items"):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, Iterable):
        return [_plain(v) for v in obj]
    return obj


def _files_fingerprint(files: Iterable[str]) -> list[list]:
    out = []
    for f in files:
        st = os.stat(f)
        out.append([os.path.abspath(f), st.st_size, st.st_mtime_ns])
    return out


def _open_text(path: str) -> io.TextIOBase:
    if path.endswith(".zst"):
        import zstandard

        raw = open(path, "rb")
        reader = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        return io.TextIOWrapper(reader, encoding="utf-8")
    return open(path, encoding="utf-8")


class _Reader:
    """Reads documents from files with uniform error reporting."""

    def __init__(self, text_key: str = "text", skip_bad_records: bool = False, sets: Sequence[str] | None = None,
                 max_logged: int = 10):
        self.text_key = text_key
        self.skip_bad_records = skip_bad_records
        self.sets = set(sets) if sets else None
        self.max_logged = max_logged

    def _bad(self, stats: ReadStats, where: str, why: str) -> None:
        msg = f"{where}: {why}"
        if not self.skip_bad_records:
            raise CorpusError(msg + " (set skip_bad_records=true to skip and count such records)")
        stats.bad += 1
        if len(stats.bad_examples) < self.max_logged:
            stats.bad_examples.append(msg)
            log.warning("skipping bad record %s", msg)

    def _record(self, obj, stats: ReadStats, where: str) -> str | None:
        if not isinstance(obj, dict):
            self._bad(stats, where, f"expected a JSON object, got {type(obj).__name__}")
            return None
        text = obj.get(self.text_key)
        if not isinstance(text, str):
            self._bad(stats, where, f"field {self.text_key!r} missing or not a string")
            return None
        meta = obj.get("meta")
        set_name = meta.get("redpajama_set_name") if isinstance(meta, dict) else None
        if self.sets is not None and set_name not in self.sets:
            stats.filtered += 1
            return None
        if not text:
            stats.empty += 1
            return None
        if set_name is not None:
            stats.sets[set_name] += 1
        stats.docs += 1
        return text

    def read_file(self, path: str, stats: ReadStats) -> Iterator[str]:
        if path.endswith(".parquet"):
            yield from self._read_parquet(path, stats)
        elif path.endswith(".txt"):
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except UnicodeDecodeError as e:
                raise CorpusError(f"{path}: not UTF-8 text ({e})") from e
            if text:
                stats.docs += 1
                yield text
            else:
                stats.empty += 1
        else:
            yield from self._read_jsonl(path, stats)

    def _read_jsonl(self, path: str, stats: ReadStats) -> Iterator[str]:
        import zstandard

        lineno = 0
        try:
            with _open_text(path) as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        self._bad(stats, f"{path}:{lineno}", f"malformed JSON ({e.msg} at column {e.colno})")
                        continue
                    text = self._record(obj, stats, f"{path}:{lineno}")
                    if text is not None:
                        yield text
        except zstandard.ZstdError as e:
            raise CorpusError(f"{path}: corrupt zstd stream after line {lineno} ({e})") from e
        except UnicodeDecodeError as e:
            raise CorpusError(f"{path}:{lineno + 1}: not UTF-8 text ({e})") from e

    def _read_parquet(self, path: str, stats: ReadStats) -> Iterator[str]:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises several types for unreadable files
            raise CorpusError(f"{path}: unreadable parquet file ({e})") from e
        if self.text_key not in pf.schema_arrow.names:
            raise CorpusError(f"{path}: no column {self.text_key!r} (columns: {pf.schema_arrow.names})")
        row = 0
        for batch in pf.iter_batches(columns=[self.text_key]):
            for text in batch.column(0).to_pylist():
                row += 1
                if text is None or not isinstance(text, str):
                    self._bad(stats, f"{path}:row {row}", f"{self.text_key!r} is not a string")
                    continue
                if not text:
                    stats.empty += 1
                    continue
                stats.docs += 1
                yield text


class LocalFiles:
    """Local text / jsonl(.zst) / parquet files.

    Args:
        train: files, directories or glob patterns for the training split.
        validation: same for the validation split (optional).
        test: same for the test split (optional).
        text_key: JSON field / parquet column holding the text.
        skip_bad_records: skip (count, log) malformed records instead of raising.
        sets: keep only records whose ``meta.redpajama_set_name`` is in this list (None: all).
    """

    def __init__(self, train, validation=None, test=None, text_key: str = "text", skip_bad_records: bool = False,
                 sets: Sequence[str] | None = None):
        self.paths = {"train": train, "validation": validation, "test": test}
        self.reader = _Reader(text_key, skip_bad_records, sets)
        self.text_key = text_key
        self.skip_bad_records = skip_bad_records
        self.sets = list(sets) if sets else None

    def splits(self) -> list[str]:
        return [s for s, p in self.paths.items() if p]

    def files(self, split: str) -> list[str]:
        if not self.paths.get(split):
            raise KeyError(f"source has no {split!r} split")
        return expand_paths(self.paths[split])

    def fingerprint(self) -> dict:
        return {
            "kind": type(self).__name__,
            "files": {s: _files_fingerprint(self.files(s)) for s in self.splits()},
            "text_key": self.text_key,
            "skip_bad_records": self.skip_bad_records,
            "sets": self.sets,
        }

    def describe(self, split: str) -> str:
        files = self.files(split)
        return f"{len(files)} file(s): {files[0]}{' ...' if len(files) > 1 else ''}"

    def iter_documents(self, split: str, stats: ReadStats) -> Iterator[str]:
        for path in self.files(split):
            yield from self.reader.read_file(path, stats)


class SlimPajamaLocal(LocalFiles):
    """A local SlimPajama copy: ``<root>/train/chunk*/...``, ``<root>/validation/...``, ``<root>/test/...``.

    Only ``.jsonl.zst`` and ``.jsonl`` files are read. ``train`` must exist; ``validation``/``test`` are used when present
    (``splits`` restricts which are prepared).
    """

    def __init__(self, root: str, splits: Sequence[str] = ("train", "validation"), text_key: str = "text",
                 skip_bad_records: bool = False, sets: Sequence[str] | None = None):
        self.root = str(root)
        self.wanted = tuple(splits)
        super().__init__(train=None, text_key=text_key, skip_bad_records=skip_bad_records, sets=sets)

    def _split_dir(self, split: str) -> str:
        return os.path.join(os.path.expanduser(self.root), split)

    def splits(self) -> list[str]:
        if not os.path.isdir(self._split_dir("train")):
            raise FileNotFoundError(f"SlimPajama root {self.root!r} has no train/ directory")
        return [s for s in self.wanted if s == "train" or os.path.isdir(self._split_dir(s))]

    def files(self, split: str) -> list[str]:
        d = self._split_dir(split)
        files = [f for f in expand_paths(d) if f.endswith((".jsonl.zst", ".jsonl"))]
        if not files:
            raise FileNotFoundError(f"{d!r} holds no .jsonl.zst or .jsonl file")
        return files


class HFDataset:
    """A dataset read through HF ``datasets.load_dataset(path, name, split=..., streaming=True)``.

    Default: SlimPajama-627B from the Hub (network needed). ``max_docs`` caps each split (``{"train": 1_000_000}``);
    streaming reads in the dataset's order, so a capped preparation is a prefix and reproducible. With ``path="json"``
    and local ``data_files`` it reads local files through the same API (what the tests do).
    """

    def __init__(self, path: str = "cerebras/SlimPajama-627B", name: str | None = None, data_files=None,
                 split_names: dict | None = None, max_docs: dict | None = None, text_key: str = "text",
                 revision: str | None = None, skip_bad_records: bool = False):
        self.path = path
        self.name = name
        self.data_files = _plain(data_files)
        self.split_names = dict(split_names or {"train": "train", "validation": "validation"})
        self.max_docs = dict(max_docs or {})
        self.text_key = text_key
        self.revision = revision
        self.reader = _Reader(text_key, skip_bad_records)

    def splits(self) -> list[str]:
        return list(self.split_names)

    def fingerprint(self) -> dict:
        fp = {
            "kind": "HFDataset",
            "path": self.path,
            "name": self.name,
            "revision": self.revision,
            "split_names": self.split_names,
            "max_docs": self.max_docs,
            "text_key": self.text_key,
        }
        if self.data_files is not None:
            df = self.data_files if isinstance(self.data_files, dict) else {"train": self.data_files}
            fp["data_files"] = {k: _files_fingerprint(expand_paths(v)) for k, v in df.items()}
        return fp

    def describe(self, split: str) -> str:
        return f"datasets.load_dataset({self.path!r}, {self.name!r}, split={self.split_names[split]!r}, streaming=True)"

    def iter_documents(self, split: str, stats: ReadStats) -> Iterator[str]:
        import datasets

        ds = datasets.load_dataset(self.path, self.name, split=self.split_names[split], streaming=True,
                                   data_files=self.data_files, revision=self.revision)
        limit = self.max_docs.get(split)
        for i, obj in enumerate(ds):
            if limit is not None and stats.docs >= limit:
                break
            text = self.reader._record(obj, stats, f"{self.describe(split)} record {i}")
            if text is not None:
                yield text


def _embedded_documents() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    return sorted(topics.items())


class EmbeddedCorpus(SlimPajamaLocal):
    """The no-network default corpus: Python's documentation topics (``pydoc_data.topics``, 79 documents, ~465K characters
    on Python 3.11), written as a SlimPajama-format corpus under ``root`` and read back like any local SlimPajama copy.

    Validation takes whole topics, in the fixed order of their names' SHA-256, until it holds ``val_fraction`` of the
    characters; the rest go to ``train/chunk1/`` in name order.
    """

    def __init__(self, root: str, val_fraction: float = 0.05):
        super().__init__(root=root, splits=("train", "validation"))
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.val_fraction = val_fraction

    def _materialize(self) -> None:
        docs = _embedded_documents()
        budget = self.val_fraction * sum(len(t) for _, t in docs)
        held, chars = set(), 0
        for name, text in sorted(docs, key=lambda d: hashlib.sha256(d[0].encode()).hexdigest()):
            if chars >= budget:
                break
            held.add(name)
            chars += len(text)
        splits = {"train": [], "validation": []}
        for name, text in docs:
            record = {"text": text, "meta": {"redpajama_set_name": "PythonDocs", "topic": name}}
            splits["validation" if name in held else "train"].append(record)
        for split, records in splits.items():
            d = Path(self._split_dir(split)) / ("chunk1" if split == "train" else "")
            path = d / f"pydoc_topics_{split}.jsonl"
            payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
            if path.is_file() and path.read_bytes() == payload:
                continue
            d.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(payload)
            os.replace(tmp, path)

    def splits(self) -> list[str]:
        self._materialize()
        return super().splits()

    def files(self, split: str) -> list[str]:
        self._materialize()
        return super().files(split)
