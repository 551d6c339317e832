"""Document sources: where raw text comes from, before tokenization, read and verified file by file.

Each source is built from config (``_target_``) and offers

- ``splits() -> list[str]``: the splits to prepare (``"train"`` always). A split that the config asks for and that is
  missing raises ``FileNotFoundError`` naming it.
- ``inputs(split) -> list[InputFile]``: the split's input files in their fixed order, each with a ``name`` relative to
  the source's root (what the prepared corpus records: moving the corpus keeps the names) and its ``size`` in bytes.
  Preparation makes one output shard per input file.
- ``read(input, stats) -> Iterator[(text, set_name)]``: the documents of one input file, verified end to end, counting
  what is read and skipped in ``stats`` (a :class:`ReadStats`); ``set_name`` is ``meta.redpajama_set_name`` or None.
- ``fingerprint() -> dict``: the settings that change what is read (kind, text key, set filter, skip policy); the
  input files themselves are fingerprinted by name and size (see ``datamodules/prepare.py``), never by absolute path or
  mtime.
- ``iter_documents(split, stats) -> Iterator[str]``: all texts of a split (the inputs read one after the other).

Sources:

- :class:`LocalFiles`: any local ``.jsonl``, ``.jsonl.zst``, ``.json`` (one object a line), ``.parquet`` (a text column)
  or ``.txt`` (one file = one document) files, given as files, directories (searched recursively) or glob patterns.
- :class:`SlimPajamaLocal`: a local copy of SlimPajama (``train/chunkN/*.jsonl.zst``, ``validation/...``, ``test/...``;
  lines ``{"text": ..., "meta": {"redpajama_set_name": ...}}``), optionally filtered by set name.
- :class:`HFDataset`: any dataset through HF ``datasets.load_dataset(..., streaming=True)``, e.g. ``cerebras/SlimPajama-627B``
  (needs network) or, for tests, ``path="json"`` with local ``data_files``. It too is read file by file, so errors name
  the file and the record.
- :class:`EmbeddedCorpus`: the no-network default corpus: the Python documentation topics that ship with the standard library
  (``pydoc_data.topics``), written once as a SlimPajama-format local corpus and read through :class:`SlimPajamaLocal`.

Verification (every record of every file; errors are :class:`CorpusError` naming the file and the line or byte offset):

- ``.zst``: every frame is decompressed to its end; a cut file (``truncated zstd frame N starting at byte B``), garbage
  (``corrupt zstd data in frame N``) and a frame whose declared content size differs from what it decompresses to are
  errors, always: the rest of such a file is unreadable, so no ``skip_bad_records`` can make it complete.
- a 0-byte file, and a file with no record at all, are errors.
- each line is decoded as UTF-8 on its own (the error names the line and the byte in it), parsed as JSON, and must be an
  object whose text field is a string. With ``skip_bad_records=True`` such a line is skipped instead, counted per file
  with its line number (the first ten logged), and the file is still an error when every record in it was bad.
- lone surrogates (``"\\ud800"`` is valid JSON but not Unicode text) are replaced by U+FFFD and counted
  (``surrogate_docs``, ``surrogate_chars``).
- records with an empty text are skipped and counted (``empty``); a file that yields no document because all of its
  records were empty or filtered out by ``sets`` is counted (``files_without_documents``) and logged.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

log = logging.getLogger(__name__)

__all__ = ["CorpusError", "ReadStats", "InputFile", "LocalFiles", "SlimPajamaLocal", "HFDataset", "EmbeddedCorpus",
           "expand_paths", "zstd_chunks"]

SUPPORTED_SUFFIXES = (".jsonl.zst", ".jsonl", ".json", ".parquet", ".txt")
READ_BLOCK = 1 << 20  # bytes read from disk at a time
_SURROGATE = re.compile("[\ud800-\udfff]")  # after json.loads, valid pairs are one code point: any left is lone


class CorpusError(ValueError):
    """Unreadable or unusable input; the message names the file (and line or byte offset)."""


@dataclass(frozen=True)
class InputFile:
    """One input file of a split: ``name`` relative to the source's root, ``path`` to read, ``size`` in bytes (None
    when unknown, e.g. a remote file)."""

    split: str
    name: str
    path: str
    size: int | None


@dataclass
class ReadStats:
    """What a pass over one or more files read and skipped."""

    docs: int = 0
    records: int = 0  # non-blank lines / rows / files read
    empty: int = 0  # records whose text is empty: skipped
    bad: int = 0  # malformed records skipped (only with skip_bad_records=True)
    filtered: int = 0  # records outside the selected SlimPajama sets
    surrogate_docs: int = 0  # documents in which lone surrogates were replaced by U+FFFD
    surrogate_chars: int = 0  # lone surrogates replaced
    files_without_documents: int = 0  # files whose records were all empty or filtered out
    bad_examples: list[str] = field(default_factory=list)  # "file:line: why", first few
    bad_by_file: Counter = field(default_factory=Counter)  # skipped bad records per file name
    sets: Counter = field(default_factory=Counter)  # documents per meta.redpajama_set_name

    def to_dict(self) -> dict:
        return {
            "docs": self.docs,
            "records": self.records,
            "empty": self.empty,
            "bad": self.bad,
            "filtered": self.filtered,
            "surrogate_docs": self.surrogate_docs,
            "surrogate_chars": self.surrogate_chars,
            "files_without_documents": self.files_without_documents,
            "bad_examples": list(self.bad_examples),
            "bad_by_file": dict(sorted(self.bad_by_file.items())),
            "sets": dict(sorted(self.sets.items())),
        }

    def add(self, other: dict, max_examples: int = 10) -> None:
        """Add the counts of another ``to_dict()`` into this one."""
        for key in ("docs", "records", "empty", "bad", "filtered", "surrogate_docs", "surrogate_chars",
                    "files_without_documents"):
            setattr(self, key, getattr(self, key) + int(other.get(key, 0)))
        room = max_examples - len(self.bad_examples)
        self.bad_examples.extend(other.get("bad_examples", [])[:max(room, 0)])
        self.bad_by_file.update(other.get("bad_by_file", {}))
        self.sets.update(other.get("sets", {}))


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


def _local_inputs(split: str, files: list[str], root: str | None = None) -> list[InputFile]:
    """InputFiles of local files, named relative to ``root`` (default: the files' common directory)."""
    if root is None:
        root = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    return [InputFile(split, Path(os.path.relpath(os.path.abspath(f), root)).as_posix(), f, os.path.getsize(f))
            for f in files]


# ------------------------------------------------------------------------------------------------------ verified bytes
def zstd_chunks(path: str, name: str | None = None, block: int = READ_BLOCK) -> Iterator[bytes]:
    """The decompressed bytes of a (multi-frame) ``.zst`` file, verified: every frame reaches its end, and a frame that
    declares its content size decompresses to exactly that many bytes. Raises :class:`CorpusError` naming the file, the
    frame and the byte offset in the compressed file otherwise (python-zstandard's stream reader stops quietly at a cut
    frame, so the frames are walked here with one decompressor each)."""
    import zstandard

    name = name or path
    n_frames, consumed = 0, 0  # frames started; compressed bytes read so far
    dobj, frame_start, frame_out, header = None, 0, 0, b""

    def check_size():
        try:
            declared = zstandard.get_frame_parameters(header).content_size
        except zstandard.ZstdError:
            return
        if declared != zstandard.CONTENTSIZE_UNKNOWN and declared != frame_out:
            raise CorpusError(f"{name}: zstd frame {n_frames} (starting at byte {frame_start}) declares "
                              f"{declared:,} bytes of content but decompresses to {frame_out:,}")

    with open(path, "rb") as f:
        while True:
            data = f.read(block)
            if not data:
                break
            pos = consumed  # compressed offset of data[0]
            consumed += len(data)
            while data:
                if dobj is None:
                    dobj = zstandard.ZstdDecompressor().decompressobj()
                    n_frames, frame_start, frame_out, header = n_frames + 1, pos, 0, b""
                if len(header) < 18:  # a frame header is at most 18 bytes
                    header += data[:18 - len(header)]
                try:
                    out = dobj.decompress(data)
                except zstandard.ZstdError as e:
                    raise CorpusError(f"{name}: corrupt zstd data in frame {n_frames} (starting at byte "
                                      f"{frame_start}, error within bytes {pos}..{pos + len(data)}): {e}") from e
                frame_out += len(out)
                if out:
                    yield out
                if dobj.eof:
                    check_size()
                    rest = dobj.unused_data
                    pos += len(data) - len(rest)
                    data, dobj = rest, None
                else:
                    data = b""
    if dobj is not None:
        raise CorpusError(f"{name}: truncated zstd frame {n_frames}: it starts at byte {frame_start} and the file ends "
                          f"at byte {consumed} before the frame does ({frame_out:,} bytes decompressed from it); "
                          "the file is cut (an interrupted download or copy?)")
    if n_frames == 0:
        raise CorpusError(f"{name}: empty file (0 bytes)")


def _raw_chunks(path: str, name: str, block: int = READ_BLOCK) -> Iterator[bytes]:
    if os.path.getsize(path) == 0:
        raise CorpusError(f"{name}: empty file (0 bytes)")
    with open(path, "rb") as f:
        for data in iter(lambda: f.read(block), b""):
            yield data


def _lines(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, line without its newline) of a byte stream; a last line without newline included."""
    carry, lineno = b"", 0
    for chunk in chunks:
        parts = (carry + chunk).split(b"\n")
        carry = parts.pop()
        for line in parts:
            lineno += 1
            yield lineno, line
    if carry:
        yield lineno + 1, carry


# ------------------------------------------------------------------------------------------------------ records
class _Reader:
    """Reads documents from files with uniform verification and error reporting."""

    def __init__(self, text_key: str = "text", skip_bad_records: bool = False, sets: Sequence[str] | None = None,
                 max_logged: int = 10):
        self.text_key = text_key
        self.skip_bad_records = skip_bad_records
        self.sets = set(sets) if sets else None
        self.max_logged = max_logged

    def _bad(self, stats: ReadStats, file: str, where: str, why: str) -> None:
        msg = f"{where}: {why}"
        if not self.skip_bad_records:
            raise CorpusError(msg + " (set skip_bad_records=true to skip and count such records)")
        stats.bad += 1
        stats.bad_by_file[file] += 1
        if len(stats.bad_examples) < self.max_logged:
            stats.bad_examples.append(msg)
            log.warning("skipping bad record %s", msg)

    def _text(self, text: str, stats: ReadStats) -> str:
        n = len(_SURROGATE.findall(text))
        if n:
            stats.surrogate_docs += 1
            stats.surrogate_chars += n
            text = _SURROGATE.sub("\ufffd", text)
        return text

    def record(self, obj, stats: ReadStats, file: str, where: str) -> tuple[str, str | None] | None:
        """(text, set name) of a parsed record, or None when it is skipped (and counted)."""
        stats.records += 1
        if not isinstance(obj, dict):
            self._bad(stats, file, where, f"expected a JSON object, got {type(obj).__name__}")
            return None
        text = obj.get(self.text_key)
        if not isinstance(text, str):
            self._bad(stats, file, where, f"field {self.text_key!r} missing or not a string "
                                          f"(got {type(text).__name__})")
            return None
        meta = obj.get("meta")
        set_name = meta.get("redpajama_set_name") if isinstance(meta, dict) else None
        set_name = set_name if isinstance(set_name, str) else None
        if self.sets is not None and set_name not in self.sets:
            stats.filtered += 1
            return None
        if not text:
            stats.empty += 1
            return None
        stats.docs += 1
        if set_name is not None:
            stats.sets[set_name] += 1
        return self._text(text, stats), set_name

    def read_file(self, inp: InputFile, stats: ReadStats) -> Iterator[tuple[str, str | None]]:
        before = stats.to_dict()
        if inp.path.endswith(".parquet"):
            yield from self._read_parquet(inp, stats)
        elif inp.path.endswith(".txt"):
            yield from self._read_txt(inp, stats)
        else:
            yield from self._read_jsonl(inp, stats)
        records, docs = stats.records - before["records"], stats.docs - before["docs"]
        bad = stats.bad - before["bad"]
        if records == 0:
            raise CorpusError(f"{inp.name}: no record in the file ({inp.size} bytes)")
        if docs == 0 and bad == records:
            raise CorpusError(f"{inp.name}: every one of its {records} records is bad (first: "
                              f"{stats.bad_examples[len(before['bad_examples'])] if len(stats.bad_examples) > len(before['bad_examples']) else '?'})")
        if bad:
            log.warning("%s: skipped %d bad record(s) of %d", inp.name, bad, records)
        if docs == 0:
            stats.files_without_documents += 1
            log.warning("%s: no document (%d records: %d empty, %d outside the selected sets)", inp.name, records,
                        stats.empty - before["empty"], stats.filtered - before["filtered"])

    def _read_txt(self, inp: InputFile, stats: ReadStats) -> Iterator[tuple[str, str | None]]:
        data = b"".join(_raw_chunks(inp.path, inp.name))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            col = e.start - (data.rfind(b"\n", 0, e.start) + 1)
            raise CorpusError(f"{inp.name}:{line}: not UTF-8 text ({e.reason} at byte {col} of the line, byte "
                              f"{e.start} of the file)") from e
        stats.records += 1
        stats.docs += 1
        yield self._text(text, stats), None

    def _read_jsonl(self, inp: InputFile, stats: ReadStats) -> Iterator[tuple[str, str | None]]:
        chunks = zstd_chunks(inp.path, inp.name) if inp.path.endswith(".zst") else _raw_chunks(inp.path, inp.name)
        for lineno, raw in _lines(chunks):
            if not raw.strip():
                continue
            where = f"{inp.name}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                stats.records += 1
                self._bad(stats, inp.name, where, f"not UTF-8 text ({e.reason} at byte {e.start} of the line)")
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                stats.records += 1
                self._bad(stats, inp.name, where, f"malformed JSON ({e.msg} at column {e.colno})")
                continue
            out = self.record(obj, stats, inp.name, where)
            if out is not None:
                yield out

    def _read_parquet(self, inp: InputFile, stats: ReadStats) -> Iterator[tuple[str, str | None]]:
        import pyarrow.parquet as pq

        if os.path.getsize(inp.path) == 0:
            raise CorpusError(f"{inp.name}: empty file (0 bytes)")
        try:
            pf = pq.ParquetFile(inp.path)
        except Exception as e:  # pyarrow raises several types for unreadable files
            raise CorpusError(f"{inp.name}: unreadable parquet file ({e})") from e
        if self.text_key not in pf.schema_arrow.names:
            raise CorpusError(f"{inp.name}: no column {self.text_key!r} (columns: {pf.schema_arrow.names})")
        row = 0
        try:
            for batch in pf.iter_batches(columns=[self.text_key]):
                for text in batch.column(0).to_pylist():
                    row += 1
                    out = self.record({self.text_key: text}, stats, inp.name, f"{inp.name}:row {row}")
                    if out is not None:
                        yield out
        except CorpusError:
            raise
        except Exception as e:
            raise CorpusError(f"{inp.name}: unreadable parquet data after row {row} ({e})") from e


# ------------------------------------------------------------------------------------------------------ sources
class LocalFiles:
    """Local text / jsonl(.zst) / parquet files.

    Args:
        train: files, directories or glob patterns for the training split.
        validation: same for the validation split (optional).
        test: same for the test split (optional).
        text_key: JSON field / parquet column holding the text.
        skip_bad_records: skip (count, log) malformed records instead of raising.
        sets: keep only records whose ``meta.redpajama_set_name`` is in this list (None: all).

    Input names are relative to the common directory of a split's files.
    """

    max_docs: dict = {}

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

    def inputs(self, split: str) -> list[InputFile]:
        return _local_inputs(split, self.files(split))

    def fingerprint(self) -> dict:
        return {"kind": type(self).__name__, "text_key": self.text_key, "skip_bad_records": self.skip_bad_records,
                "sets": self.sets}

    def describe(self, split: str) -> str:
        files = self.files(split)
        return f"{len(files)} file(s): {files[0]}{' ...' if len(files) > 1 else ''}"

    def read(self, inp: InputFile, stats: ReadStats) -> Iterator[tuple[str, str | None]]:
        return self.reader.read_file(inp, stats)

    def iter_documents(self, split: str, stats: ReadStats) -> Iterator[str]:
        for inp in self.inputs(split):
            for text, _ in self.read(inp, stats):
                yield text


class SlimPajamaLocal(LocalFiles):
    """A local SlimPajama copy: ``<root>/train/chunk*/...``, ``<root>/validation/...``, ``<root>/test/...``.

    Only ``.jsonl.zst`` and ``.jsonl`` files are read; input names are relative to ``root``
    (``train/chunk1/example_train_0.jsonl.zst``). Every split in ``splits`` must exist.
    """

    def __init__(self, root: str, splits: Sequence[str] = ("train", "validation"), text_key: str = "text",
                 skip_bad_records: bool = False, sets: Sequence[str] | None = None):
        self.root = str(root)
        self.wanted = tuple(splits)
        if "train" not in self.wanted:
            raise ValueError(f"splits={list(self.wanted)} must include 'train'")
        super().__init__(train=None, text_key=text_key, skip_bad_records=skip_bad_records, sets=sets)

    def _split_dir(self, split: str) -> str:
        return os.path.join(os.path.expanduser(self.root), split)

    def splits(self) -> list[str]:
        for s in self.wanted:
            if not os.path.isdir(self._split_dir(s)):
                hint = (f"; drop it from data.source.splits (now {list(self.wanted)}) to prepare without it"
                        if s != "train" else "")
                raise FileNotFoundError(f"SlimPajama root {self.root!r} has no {s}/ directory{hint}")
        return list(self.wanted)

    def files(self, split: str) -> list[str]:
        d = self._split_dir(split)
        files = [f for f in expand_paths(d) if f.endswith((".jsonl.zst", ".jsonl"))]
        if not files:
            raise FileNotFoundError(f"{d!r} holds no .jsonl.zst or .jsonl file")
        return files

    def inputs(self, split: str) -> list[InputFile]:
        return _local_inputs(split, self.files(split), root=os.path.abspath(os.path.expanduser(self.root)))


def _hf_builder_for(name: str) -> str:
    for suffix, builder in ((".parquet", "parquet"), (".txt", "text"), (".arrow", "arrow"), (".csv", "csv")):
        if suffix in name:
            return builder
    return "json"


class HFDataset:
    """A dataset read through HF ``datasets.load_dataset(..., streaming=True)``, one data file at a time.

    Default: SlimPajama-627B from the Hub (network needed): its data files are listed with
    ``datasets.load_dataset_builder`` and each is streamed on its own, so a bad record is reported by file and record
    number and preparation shards by file like a local copy. With ``path="json"`` and local ``data_files`` (a dict of
    split name -> files/globs, or one list for train) it reads local files through the same API (what the tests do).
    ``max_docs`` caps each split (``{"validation": 20000}``): the first documents in file order.
    """

    def __init__(self, path: str = "cerebras/SlimPajama-627B", name: str | None = None, data_files=None,
                 split_names: dict | None = None, max_docs: dict | None = None, text_key: str = "text",
                 revision: str | None = None, skip_bad_records: bool = False):
        self.path = path
        self.name = name
        self.data_files = _plain(data_files)
        self.split_names = dict(split_names or {"train": "train", "validation": "validation"})
        self.max_docs = {k: int(v) for k, v in (max_docs or {}).items() if v is not None}
        self.text_key = text_key
        self.revision = revision
        self.skip_bad_records = skip_bad_records
        self.reader = _Reader(text_key, skip_bad_records)

    def splits(self) -> list[str]:
        return list(self.split_names)

    def fingerprint(self) -> dict:
        return {"kind": "HFDataset", "path": self.path if self.data_files is None else None, "name": self.name,
                "revision": self.revision, "text_key": self.text_key, "skip_bad_records": self.skip_bad_records}

    def describe(self, split: str) -> str:
        return f"datasets.load_dataset({self.path!r}, {self.name!r}, split={self.split_names[split]!r}, streaming=True)"

    def inputs(self, split: str) -> list[InputFile]:
        hf_split = self.split_names[split]
        if self.data_files is not None:
            df = self.data_files if isinstance(self.data_files, dict) else {"train": self.data_files}
            if hf_split not in df:
                raise FileNotFoundError(f"data_files has no {hf_split!r} entry (has {sorted(df)}) for split {split!r}")
            return _local_inputs(split, expand_paths(df[hf_split]))
        import datasets

        builder = datasets.load_dataset_builder(self.path, self.name, revision=self.revision)
        files = (builder.config.data_files or {}).get(hf_split)
        if not files:
            raise FileNotFoundError(f"{self.describe(split)}: the dataset has no {hf_split!r} split "
                                    f"(has {sorted(builder.config.data_files or {})})")
        prefix = os.path.commonpath([str(f) for f in files]) if len(files) > 1 else os.path.dirname(str(files[0]))
        return [InputFile(split, os.path.relpath(str(f), prefix), str(f), None) for f in files]

    def read(self, inp: InputFile, stats: ReadStats) -> Iterator[tuple[str, str | None]]:
        import datasets

        before = stats.records
        ds = datasets.load_dataset(_hf_builder_for(inp.path), data_files={"train": [inp.path]}, split="train",
                                   streaming=True)
        i = 0
        try:
            for i, obj in enumerate(ds, 1):
                out = self.reader.record(obj, stats, inp.name, f"{inp.name}: record {i}")
                if out is not None:
                    yield out
        except CorpusError:
            raise
        except Exception as e:  # datasets / pyarrow raise many types: name the file and the last good record
            raise CorpusError(f"{inp.name}: unreadable after record {i} through datasets ({type(e).__name__}: {e})") \
                from e
        if stats.records == before:
            raise CorpusError(f"{inp.name}: no record in the file")

    def iter_documents(self, split: str, stats: ReadStats) -> Iterator[str]:
        limit = self.max_docs.get(split)
        n = 0
        for inp in self.inputs(split):
            for text, _ in self.read(inp, stats):
                if limit is not None and n >= limit:
                    return
                n += 1
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
