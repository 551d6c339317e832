"""LightningDataModules and their datasets. Never imports ``deltanet``.

Submodules: ``tokenizer`` (``load_tokenizer``), ``sources`` (document sources), ``prepare`` (tokenize to memmap),
``packed`` (packed, sharded, resumable batches), ``lm`` (``PackedLMDataModule``). Names are imported lazily so that
``datamodules.tokenizer`` stays light (no Lightning import).
"""

import importlib

_LAZY = {
    "load_tokenizer": "datamodules.tokenizer",
    "Tokenizer": "datamodules.tokenizer",
    "PackedLMDataModule": "datamodules.lm",
    "prepare_corpus": "datamodules.prepare",
    "CorpusError": "datamodules.sources",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
