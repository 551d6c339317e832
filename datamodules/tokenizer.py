"""Tokenizer loading: Mistral's 32K SentencePiece model by default, or any SentencePiece ``.model`` / ``tokenizer.json``.

The default model is the ``tokenizer.model.v1`` file that the PyPI package ``mistral-common`` ships. It is located with
``importlib.util.find_spec`` and never imported: ``mistral_common``'s own Python dependencies need not be installed.

BOS/EOS convention used by the data pipeline (see ``datamodules/prepare.py``): every document is tokenized as
``[BOS] + tokens + [EOS]`` (BOS optional via ``add_bos``), so packed windows carry an EOS between documents and each
document starts with BOS, the same prefix that generation puts before a prompt. Mistral: ``bos_id=1``, ``eos_id=2``,
``vocab_size=32000``, no pad token (padding, where any is needed, uses label ``-100``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Sequence

__all__ = ["Tokenizer", "default_tokenizer_path", "load_tokenizer"]


def default_tokenizer_path() -> str:
    """Path of ``mistral_common/data/tokenizer.model.v1`` (found without importing ``mistral_common``)."""
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default tokenizer is mistral-common's data/tokenizer.model.v1, but the package 'mistral_common' "
            "is not installed; `pip install mistral-common` or pass a tokenizer path (.model or tokenizer.json)"
        )
    for location in spec.submodule_search_locations:
        path = os.path.join(location, "data", "tokenizer.model.v1")
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"tokenizer.model.v1 not found under {list(spec.submodule_search_locations)}/data")


class Tokenizer:
    """Minimal common interface over SentencePiece and HF ``tokenizers``.

    ``encode(text, bos=False, eos=False) -> list[int]``, ``encode_batch(texts, ...)``, ``decode(ids) -> str``,
    ``bos_id``, ``eos_id``, ``pad_id`` (None when the model has none), ``vocab_size``, ``path``.
    """

    def __init__(self, path: str):
        self.path = str(path)
        if self.path.endswith(".json"):
            from tokenizers import Tokenizer as HFTokenizer

            self._kind = "hf"
            self._tok = HFTokenizer.from_file(self.path)
            self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
            self.bos_id = self._special_id(("<s>", "<|begin_of_text|>", "<bos>", "[BOS]"))
            self.eos_id = self._special_id(("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "[EOS]"))
            self.pad_id = self._special_id(("<pad>", "[PAD]"))
        else:
            import sentencepiece as spm

            self._kind = "spm"
            try:
                self._tok = spm.SentencePieceProcessor(model_file=self.path)
            except (OSError, RuntimeError) as e:
                raise ValueError(f"{self.path}: not a SentencePiece model ({e})") from e
            self.vocab_size = self._tok.vocab_size()
            self.bos_id = self._none_if_negative(self._tok.bos_id())
            self.eos_id = self._none_if_negative(self._tok.eos_id())
            self.pad_id = self._none_if_negative(self._tok.pad_id())

    @staticmethod
    def _none_if_negative(i: int) -> int | None:
        return None if i < 0 else int(i)

    def _special_id(self, names: Sequence[str]) -> int | None:
        for name in names:
            i = self._tok.token_to_id(name)
            if i is not None:
                return int(i)
        return None

    def _wrap(self, ids: list[int], bos: bool, eos: bool) -> list[int]:
        if bos:
            if self.bos_id is None:
                raise ValueError(f"{self.path}: tokenizer has no BOS token")
            ids = [self.bos_id] + ids
        if eos:
            if self.eos_id is None:
                raise ValueError(f"{self.path}: tokenizer has no EOS token")
            ids = ids + [self.eos_id]
        return ids

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return self.encode_batch([text], bos=bos, eos=eos)[0]

    def encode_batch(self, texts: Sequence[str], bos: bool = False, eos: bool = False,
                     num_threads: int | None = None) -> list[list[int]]:
        """Encode several texts; ``num_threads`` caps SentencePiece's threads (None: its default, all cores)."""
        if self._kind == "spm":
            kw = {} if num_threads is None else {"num_threads": int(num_threads)}
            ids = self._tok.encode(list(texts), out_type=int, **kw)
        else:
            ids = [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]
        return [self._wrap(list(x), bos, eos) for x in ids]

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if self._kind == "spm":
            return self._tok.decode(ids)
        return self._tok.decode(ids, skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"Tokenizer({self.path!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, eos_id={self.eos_id})"


def load_tokenizer(path: str | os.PathLike | None = None) -> Tokenizer:
    """Load a tokenizer.

    Args:
        path: ``None`` (default) for Mistral's 32K SentencePiece model shipped by ``mistral-common``
            (``bos_id=1``, ``eos_id=2``, ``vocab_size=32000``); a path to a ``tokenizer.json`` (HF ``tokenizers``);
            or a path to any SentencePiece model file (``.model``, ``.model.v1``, ...).

    Example:
        >>> tok = load_tokenizer()
        >>> tok.decode(tok.encode("Hello world"))
        'Hello world'
    """
    if path is None:
        path = default_tokenizer_path()
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    return Tokenizer(str(path))
