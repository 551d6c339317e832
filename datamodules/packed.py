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
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

log = logging.getLogger(__name__)

__all__ = ["PackedBatches", "TokenFile", "epoch_batches"]


class TokenFile:
    """A prepared split: ``{split}.bin`` (memory-mapped lazily, per process) and ``{split}.idx.npy``."""

    def __init__(self, directory: str | Path, split: str, dtype: str = "uint16"):
        self.bin_path = Path(directory) / f"{split}.bin"
        self.idx_path = Path(directory) / f"{split}.idx.npy"
        self.dtype = np.dtype(dtype)
        self.n_tokens = self.bin_path.stat().st_size // self.dtype.itemsize
        self._tokens = None
        self._offsets = None

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = np.memmap(self.bin_path, dtype=self.dtype, mode="r", shape=(self.n_tokens,))
        return self._tokens

    @property
    def offsets(self) -> np.ndarray:
        """Document start offsets, int64[n_docs + 1] (last = n_tokens)."""
        if self._offsets is None:
            self._offsets = np.load(self.idx_path, mmap_mode="r")
        return self._offsets

    def __getstate__(self):  # never pickle the mapped arrays (spawned workers open their own map)
        state = self.__dict__.copy()
        state["_tokens"] = None
        state["_offsets"] = None
        return state


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
        tokens = self.file.tokens
        x = np.empty((len(windows), L), dtype=np.int64)
        for j, w in enumerate(windows):
            x[j] = tokens[w * L:(w + 1) * L]
        if not self.varlen:
            return {"input_ids": torch.from_numpy(x)}
        offsets = self.file.offsets
        cu = []
        for j, w in enumerate(windows):
            s = int(w) * L
            lo, hi = np.searchsorted(offsets, [s, s + L], side="right")
            starts = np.asarray(offsets[lo:hi], dtype=np.int64) - s
            starts = starts[(starts > 0) & (starts < L)]  # document starts strictly inside the window
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
