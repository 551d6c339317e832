"""Packed fixed-length batches over a memory-mapped token stream, deterministic and resumable.

The token stream of a split (documents back to back, EOS between them) is cut into ``n_windows = n_tokens // seq_len``
non-overlapping windows of ``seq_len`` tokens; window ``i`` is ``tokens[i*L:(i+1)*L]``. The last
``n_tokens % seq_len`` tokens do not fill a window and are left out (counted and logged).

Order (one epoch): a permutation of the windows seeded by ``(seed, epoch)`` (identity when ``shuffle=False``),
trimmed to a multiple of ``world_size * batch_size`` (the few windows trimmed are logged; a different set each epoch);
rank ``r`` takes every ``world_size``-th window from ``r`` on and groups them into batches of ``batch_size``; dataloader
worker ``w`` of ``W`` builds batches ``start + w, start + w + W, ...`` of its rank. PyTorch's DataLoader returns the
workers' outputs round-robin, so the batches arrive in exactly the rank's order for any number of workers, and
resuming at batch ``start`` gives the same batches the uninterrupted run would have seen from there.

Batches are dicts:

- fixed length (default): ``{"input_ids": int64[B, L]}`` (labels = input_ids, shifted in the model);
- ``varlen=True``: the B windows flattened into one row, ``{"input_ids": int64[1, B*L], "labels": int64[1, B*L],
  "cu_seqlens": int32[N+1]}`` where ``cu_seqlens`` marks every document start and every window start; ``labels`` is
  ``input_ids`` with ``-100`` at each segment's first token (it cannot be predicted from another segment).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

log = logging.getLogger(__name__)

__all__ = ["PackedBatches", "TokenFile", "epoch_batches", "write_token_split"]


class TokenFile:
    """A prepared split: the token stream of its shards back to back (``datamodules/prepare.py``), each shard
    memory-mapped lazily, per process (at most ``MAX_OPEN`` maps open at once: a corpus may have ~60K shards).

    ``read(start, stop)`` returns tokens ``[start, stop)`` of the split's stream (across shard boundaries);
    ``doc_starts(start, stop)`` the stream offsets of the documents that start in ``[start, stop)``. ``tokens`` and
    ``offsets`` give the whole stream and all document offsets as arrays (a memory map for a single shard, a copy
    otherwise: for tests and small corpora).
    """

    MAX_OPEN = 64

    def __init__(self, directory: str | Path, split: str, dtype: str | None = None, meta: dict | None = None):
        from datamodules.prepare import load_meta

        self.directory = Path(directory)
        meta = meta if meta is not None else load_meta(directory)
        if meta is None:
            raise FileNotFoundError(f"no complete prepared corpus (meta.json) in {directory}")
        if split not in meta["splits"]:
            raise KeyError(f"{directory}: no {split!r} split (has {sorted(meta['splits'])})")
        self.dtype = np.dtype(dtype or meta["dtype"])
        shards = meta["splits"][split]["shards"]
        self.bin_path = self.directory / split  # where the split's shards live (for messages)
        self.files = [s["file"] for s in shards]
        self.shard_tokens = np.array([s["n_tokens"] for s in shards], dtype=np.int64)
        self.shard_docs = np.array([s["n_docs"] for s in shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.shard_tokens)]).astype(np.int64)  # (n_shards + 1,)
        self.n_tokens = int(self.starts[-1])
        self.n_docs = int(self.shard_docs.sum())
        self._maps: OrderedDict = OrderedDict()

    def _shard(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, document offsets) of shard ``k``, as used (a cut shard's first part)."""
        hit = self._maps.get(k)
        if hit is None:
            base = self.directory / self.files[k]
            n, d = int(self.shard_tokens[k]), int(self.shard_docs[k])
            tokens = np.memmap(f"{base}.bin", dtype=self.dtype, mode="r")[:n]
            offsets = np.load(f"{base}.idx.npy", mmap_mode="r")[:d + 1]
            hit = self._maps[k] = (tokens, offsets)
            if len(self._maps) > self.MAX_OPEN:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(k)
        return hit

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the stream, int64."""
        out = np.empty(stop - start, dtype=np.int64)
        k = int(np.searchsorted(self.starts, start, side="right")) - 1
        pos = start
        while pos < stop:
            lo = pos - int(self.starts[k])
            take = min(stop, int(self.starts[k + 1])) - pos
            out[pos - start:pos - start + take] = self._shard(k)[0][lo:lo + take]
            pos += take
            k += 1
        return out

    def doc_starts(self, start: int, stop: int) -> np.ndarray:
        """Stream offsets of the documents starting in ``[start, stop)``, int64, ascending."""
        parts = []
        k = int(np.searchsorted(self.starts, start, side="right")) - 1
        while k < len(self.files) and self.starts[k] < stop:
            base = int(self.starts[k])
            offsets = self._shard(k)[1]
            lo, hi = np.searchsorted(offsets[:-1], [start - base, stop - base], side="left")
            parts.append(np.asarray(offsets[lo:hi], dtype=np.int64) + base)
            k += 1
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    @property
    def tokens(self) -> np.ndarray:
        if len(self.files) == 1:
            return self._shard(0)[0]
        return self.read(0, self.n_tokens).astype(self.dtype)

    @property
    def offsets(self) -> np.ndarray:
        """Document start offsets, int64[n_docs + 1] (last = n_tokens)."""
        return np.concatenate([self.doc_starts(0, self.n_tokens), [self.n_tokens]]).astype(np.int64)

    def __getstate__(self):  # never pickle the mapped arrays (spawned workers open their own maps)
        state = self.__dict__.copy()
        state["_maps"] = OrderedDict()
        return state


def write_token_split(directory: str | Path, split: str, tokens: np.ndarray, offsets: np.ndarray) -> dict:
    """Write a token stream as a one-shard split of a prepared corpus (for benchmarks and derived corpora).

    Args:
        tokens: ``[n_tokens]`` uint16/uint32, documents back to back.
        offsets: ``int64[n_docs + 1]`` document offsets (0 first, ``n_tokens`` last).
    Returns the split's manifest entry (``meta["splits"][split]``); the caller writes ``meta.json``.
    """
    directory = Path(directory)
    (directory / split).mkdir(parents=True, exist_ok=True)
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets[0] != 0 or offsets[-1] != len(tokens) or (np.diff(offsets) < 0).any():
        raise ValueError(f"offsets must rise from 0 to len(tokens)={len(tokens)}, got {offsets[:3]}...{offsets[-3:]}")
    np.asarray(tokens).tofile(directory / split / "000000.bin")
    np.save(directory / split / "000000.idx.npy", offsets)
    n_docs = len(offsets) - 1
    return {"n_tokens": int(len(tokens)), "n_docs": n_docs, "shards": [
        {"file": f"{split}/000000", "input": None, "n_docs": n_docs, "n_tokens": int(len(tokens)),
         "file_docs": n_docs, "file_tokens": int(len(tokens))}]}


def epoch_batches(n_windows: int, batch_size: int, epoch: int, seed: int, shuffle: bool, rank: int,
                  world_size: int) -> np.ndarray:
    """Window indices of rank ``rank`` for ``epoch``: int64[n_batches, batch_size]."""
    if shuffle:
        g = np.random.Generator(np.random.PCG64([seed, epoch]))
        order = g.permutation(n_windows)
    else:
        order = np.arange(n_windows)
    per_step = world_size * batch_size
    used = (n_windows // per_step) * per_step
    return order[:used][rank::world_size].reshape(-1, batch_size)


class PackedBatches(IterableDataset):
    """Yields ready batches (use ``DataLoader(..., batch_size=None)``).

    ``position`` is a dict ``{"epoch": int, "batch": int}`` shared with the owner (the datamodule), read once at the start
    of each iteration: the epoch whose permutation is used and the first batch of it to yield.
    """

    def __init__(self, token_file: TokenFile, seq_len: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, varlen: bool = False, position: dict | None = None,
                 name: str = "train"):
        if seq_len < 2 or batch_size < 1:
            raise ValueError(f"need seq_len >= 2 and batch_size >= 1, got seq_len={seq_len}, batch_size={batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.file = token_file
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.varlen = varlen
        self.position = position if position is not None else {"epoch": 0, "batch": 0}
        self.n_windows = token_file.n_tokens // seq_len
        self.n_batches = self.n_windows // (world_size * batch_size)
        if self.n_batches == 0:
            raise ValueError(
                f"{token_file.bin_path}: {token_file.n_tokens:,} tokens make {self.n_windows} windows of {seq_len}, "
                f"fewer than one batch of {batch_size} per rank for {world_size} rank(s)"
            )
        tail = token_file.n_tokens - self.n_windows * seq_len
        trimmed = self.n_windows - self.n_batches * world_size * batch_size
        log.info("%s: %s tokens -> %d windows of %d (last %d tokens unused), %d batches of %d per rank per epoch "
                 "(%d windows per epoch left out by the trim to whole batches)", name, f"{token_file.n_tokens:,}",
                 self.n_windows, seq_len, tail, self.n_batches, batch_size, trimmed)

    def __len__(self) -> int:
        return self.n_batches

    def batch(self, windows: np.ndarray) -> dict[str, torch.Tensor]:
        """The batch made of the given window indices."""
        L = self.seq_len
        x = np.empty((len(windows), L), dtype=np.int64)
        for j, w in enumerate(windows):
            x[j] = self.file.read(int(w) * L, (int(w) + 1) * L)
        if not self.varlen:
            return {"input_ids": torch.from_numpy(x)}
        cu = []
        for j, w in enumerate(windows):
            s = int(w) * L
            starts = self.file.doc_starts(s + 1, s + L) - s  # document starts strictly inside the window
            cu.append(j * L)
            cu.extend((starts + j * L).tolist())
        cu.append(len(windows) * L)
        cu_seqlens = torch.tensor(cu, dtype=torch.int32)
        input_ids = torch.from_numpy(x).reshape(1, -1)
        labels = input_ids.clone()
        labels[0, cu_seqlens[:-1].long()] = -100
        return {"input_ids": input_ids, "labels": labels, "cu_seqlens": cu_seqlens}

    def __iter__(self):
        epoch, start = int(self.position["epoch"]), int(self.position["batch"])
        epoch, start = epoch + start // self.n_batches, start % self.n_batches  # a position past the epoch's end
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        plan = epoch_batches(self.n_windows, self.batch_size, epoch, self.seed, self.shuffle, self.rank,
                             self.world_size)
        return (self.batch(plan[b]) for b in range(start + worker, self.n_batches, n_workers))
