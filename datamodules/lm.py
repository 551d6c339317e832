"""LightningDataModule for language-model pre-training on a tokenized, packed, memory-mapped corpus.

``prepare_data`` tokenizes the source once (processes, progress bar, tokens/s; resumes an interrupted preparation) on
global rank 0 only (``prepare_data_per_node = False``: several nodes never write one shared directory), ``setup`` maps
the token files, the dataloaders yield packed batches (see ``datamodules/packed.py``).

A prepared corpus is used as it is: when its manifest is there, ``prepare_data`` only checks it against the source.
Raw files absent (the tokenized corpus shipped alone): a warning, and training goes on from the corpus. Inputs or
settings changed (a file's name or size, the tokenizer, BOS, the cap): a :class:`CorpusError` that names what changed,
instead of re-tokenizing inside ``fit`` while the other ranks wait; ``python run.py task=prepare`` re-tokenizes the
changed shards.

Resume: the datamodule counts training batches where they are consumed (``on_after_batch_transfer`` while the trainer is
training, i.e. after the DataLoader's prefetching), saves ``{"epoch", "batch"}`` in the checkpoint through
``state_dict`` and restarts the deterministic order there after ``load_state_dict``.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from datamodules.packed import PackedBatches, TokenFile
from datamodules.prepare import corpus_settings, describe_changes, input_listing, load_meta, prepare_corpus
from datamodules.sources import CorpusError

log = logging.getLogger(__name__)

# PackedBatches splits its batches between workers itself (worker w takes batches w, w+W, ...), so its __len__ is exact
# with any number of workers; Lightning's generic warning about IterableDataset.__len__ does not apply.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")

__all__ = ["PackedLMDataModule"]


class PackedLMDataModule(LightningDataModule):
    """Packed causal-LM batches from any document source.

    Args:
        source: a document source (``datamodules.sources``: ``EmbeddedCorpus``, ``SlimPajamaLocal``, ``LocalFiles``,
            ``HFDataset``), or None to train from a prepared ``cache_dir`` alone.
        cache_dir: where the tokenized corpus lives (``{split}.bin``, ``{split}.idx.npy``, ``meta.json``).
        tokenizer: None for Mistral's 32K SentencePiece model, or a ``.model`` / ``tokenizer.json`` path.
        seq_len: tokens per packed sequence.
        batch_size: micro-batch, in sequences, per rank.
        val_batch_size: validation micro-batch (default ``batch_size``).
        num_workers: DataLoader worker processes.
        seed: seed of the per-epoch window permutation.
        shuffle: shuffle training windows (validation is always in order).
        varlen: flatten each batch into one row with ``cu_seqlens`` at document starts (variable-length training).
        add_bos: start every document with BOS (EOS always ends it).
        num_proc: tokenizer processes for preparation (None: up to 8, the CPU count).
        pin_memory: pin host memory of batches (useful with CUDA).
        progress: show a progress bar while tokenizing.
        max_tokens: per-split token cap for preparation (``{"train": 15e9}``): a prefix of the source's order.
        tokenizer_backend: ``"sentencepiece"`` or ``"hf"`` (the same ids; see ``datamodules/tokenizer.py``).
    """

    def __init__(self, source, cache_dir: str, tokenizer: str | None = None, seq_len: int = 2048,
                 batch_size: int = 8, val_batch_size: int | None = None, num_workers: int = 2, seed: int = 1234,
                 shuffle: bool = True, varlen: bool = False, add_bos: bool = True, num_proc: int | None = None,
                 pin_memory: bool = False, progress: bool = True, max_tokens: dict | None = None,
                 tokenizer_backend: str = "sentencepiece"):
        super().__init__()
        self.prepare_data_per_node = False  # global rank 0 prepares; a shared filesystem has one writer
        self.tokenizer_backend = tokenizer_backend
        self.source = source
        self.cache_dir = str(cache_dir)
        self.tokenizer = tokenizer
        self.seq_len = int(seq_len)
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.varlen = bool(varlen)
        self.add_bos = bool(add_bos)
        self.num_proc = num_proc
        self.pin_memory = bool(pin_memory)
        self.progress = bool(progress)
        self.max_tokens = dict(max_tokens) if max_tokens else None
        self.meta: dict | None = None
        self.train_set: PackedBatches | None = None
        self.val_set: PackedBatches | None = None
        self.test_set: PackedBatches | None = None
        # position of the next training batch to consume; shared by reference with the training dataset
        self.position = {"epoch": 0, "batch": 0}

    # ----------------------------------------------------------------------------------------------------- preparation
    def _caps(self) -> dict:
        return {"max_tokens": {k: int(v) for k, v in (self.max_tokens or {}).items() if v is not None},
                "max_docs": {k: int(v) for k, v in (getattr(self.source, "max_docs", None) or {}).items()
                             if v is not None}}

    def prepare_data(self) -> None:
        """Tokenize the corpus into ``cache_dir`` unless it is prepared; a prepared one is checked (module docstring)."""
        meta = load_meta(self.cache_dir)
        if meta is not None:
            if self.source is None:
                self.meta = meta
                return
            try:
                listing = input_listing(self.source)
            except OSError as e:  # FileNotFoundError, or no network for a Hub dataset's file list
                log.warning("raw input not found (%s): training from the prepared corpus in %s as recorded (inputs "
                            "sha256 %s)", e, self.cache_dir, meta["inputs_sha256"][:16])
                self.meta = meta
                return
            settings = corpus_settings(self.source, self.tokenizer, self.add_bos, True)
            changes = describe_changes(meta, settings, listing, self._caps())
            if changes:
                raise CorpusError(
                    f"the corpus prepared in {self.cache_dir} does not match data.source and its settings:\n  "
                    + "\n  ".join(changes[:20]) + (f"\n  ... {len(changes) - 20} more" if len(changes) > 20 else "")
                    + "\nRe-tokenize the changed shards with `python run.py task=prepare <the same data overrides>`, "
                    "or point data.cache_dir at another directory.")
            self.meta = meta
            return
        if self.source is None:
            raise FileNotFoundError(f"data.source is null and {self.cache_dir} holds no complete prepared corpus")
        self.meta = self.prepare_shards()
        if self.meta is None:
            raise CorpusError(f"{self.cache_dir}: preparation is not complete (shards written by another process: "
                              "see the log); run again when it has finished")

    def prepare_shards(self, shard_index: int = 0, shard_count: int = 1) -> dict | None:
        """Prepare this process's share of the input files (``task=prepare`` on several nodes); the manifest when the
        corpus is complete, else None."""
        if self.source is None:
            raise ValueError("data.source is null: nothing to prepare")
        return prepare_corpus(self.source, self.cache_dir, tokenizer_path=self.tokenizer, add_bos=self.add_bos,
                              add_eos=True, num_proc=self.num_proc, progress=self.progress,
                              max_tokens=self.max_tokens, shard_index=shard_index, shard_count=shard_count,
                              tokenizer_backend=self.tokenizer_backend)

    @property
    def vocab_size(self) -> int:
        return int(self._meta()["vocab_size"])

    def _meta(self) -> dict:
        if self.meta is None:
            self.meta = load_meta(self.cache_dir)
        if self.meta is None:
            raise RuntimeError(f"no prepared corpus in {self.cache_dir}: call prepare_data() first "
                               "(or `python run.py task=prepare data=...`)")
        return self.meta

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def setup(self, stage: str | None = None) -> None:
        meta = self._meta()
        rank, world = self._rank_world()
        self.train_set = PackedBatches(TokenFile(self.cache_dir, "train", meta=meta), self.seq_len,
                                       self.batch_size, seed=self.seed, shuffle=self.shuffle, rank=rank,
                                       world_size=world, varlen=self.varlen, position=self.position, name="train")
        for split in ("validation", "test"):
            if split not in meta["splits"]:
                continue
            token_file = TokenFile(self.cache_dir, split, meta=meta)
            # a small held-out split still gets evaluated: smaller batches when it cannot fill val_batch_size per rank
            batch_size = min(self.val_batch_size, token_file.n_tokens // self.seq_len // world)
            if batch_size == 0:
                log.warning("%s split has %s tokens, less than one sequence of %d per rank: not evaluated", split,
                            f"{token_file.n_tokens:,}", self.seq_len)
                continue
            if batch_size < self.val_batch_size:
                log.warning("%s split fills only batches of %d sequences of %d per rank", split, batch_size,
                            self.seq_len)
            dataset = PackedBatches(token_file, self.seq_len, batch_size, seed=self.seed, shuffle=False, rank=rank,
                                    world_size=world, varlen=self.varlen, name=split)
            setattr(self, "val_set" if split == "validation" else "test_set", dataset)

    # ----------------------------------------------------------------------------------------------------- loaders
    def _loader(self, dataset: PackedBatches) -> DataLoader:
        # persistent_workers stays False: each iteration forks workers that snapshot the current position
        return DataLoader(dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        return self._loader(self.train_set)

    def val_dataloader(self):
        if self.train_set is None:
            self.setup("validate")
        return self._loader(self.val_set) if self.val_set is not None else []

    def test_dataloader(self):
        if self.train_set is None:
            self.setup("test")
        return self._loader(self.test_set) if self.test_set is not None else []

    # ----------------------------------------------------------------------------------------------------- resume
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training:
            self.advance(1)
        return batch

    def advance(self, n_batches: int = 1) -> None:
        """Record that ``n_batches`` training batches were consumed (rolls over to the next epoch at its end)."""
        n_per_epoch = self.train_set.n_batches if self.train_set is not None else None
        self.position["batch"] += n_batches
        while n_per_epoch and self.position["batch"] >= n_per_epoch:
            self.position["batch"] -= n_per_epoch
            self.position["epoch"] += 1

    def state_dict(self) -> dict[str, Any]:
        _, world = self._rank_world()
        return {"epoch": self.position["epoch"], "batch": self.position["batch"], "batch_size": self.batch_size,
                "world_size": world, "seq_len": self.seq_len, "seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _, world = self._rank_world()
        epoch, batch = int(state_dict["epoch"]), int(state_dict["batch"])
        saved = (state_dict.get("batch_size"), state_dict.get("world_size"), state_dict.get("seq_len"),
                 state_dict.get("seed"))
        if saved != (self.batch_size, world, self.seq_len, self.seed):
            # a different global batch or window layout: keep the number of windows consumed in this epoch
            samples = batch * (state_dict.get("batch_size") or self.batch_size) * (state_dict.get("world_size") or world)
            batch = samples // (self.batch_size * world)
            log.warning("resuming with (batch_size, world_size, seq_len, seed)=%s instead of %s: the data order "
                        "differs from the interrupted run's; continuing epoch %d at batch %d",
                        (self.batch_size, world, self.seq_len, self.seed), saved, epoch, batch)
        self.position["epoch"], self.position["batch"] = epoch, batch
