"""Tokenizer loading: Mistral's 32K SentencePiece model by default, or any SentencePiece ``.model`` / ``tokenizer.json``.

The default model is the ``tokenizer.model.v1`` file that the PyPI package ``mistral-common`` ships. It is located with
``importlib.util.find_spec`` and never imported: ``mistral_common``'s own Python dependencies need not be installed.

BOS/EOS convention used by the data pipeline (see ``datamodules/prepare.py``): every document is tokenized as
``[BOS] + tokens + [EOS]`` (BOS optional via ``add_bos``), so packed windows carry an EOS between documents and each
document starts with BOS, the same prefix that generation puts before a prompt. Mistral: ``bos_id=1``, ``eos_id=2``,
``vocab_size=32000``, no pad token (padding, where any is needed, uses label ``-100``).

Two backends for a SentencePiece model: ``"sentencepiece"`` (default) and ``"hf"``, the same model converted in memory
into an HF ``tokenizers`` BPE (:func:`sentencepiece_to_hf`) that gives the same ids (``tests/datamodules/
test_tokenizer.py`` proves it on varied text: prose, code, whitespace runs of every length up to 80, CJK, emoji, byte
fallback, control characters). Measured single-threaded on the Mistral model (one shared CPU core): sentencepiece
0.48-0.59M tokens/s, HF ``tokenizers`` 0.33-0.41M tokens/s (``encode_batch_fast``), so sentencepiece stays the default;
``benchmarks/bench_prepare.py --backend hf`` measures the other on a given machine.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Sequence

__all__ = ["Tokenizer", "default_tokenizer_path", "load_tokenizer", "sentencepiece_to_hf", "BACKENDS"]

BACKENDS = ("sentencepiece", "hf")


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

    def __init__(self, path: str, backend: str = "sentencepiece"):
        if backend not in BACKENDS:
            raise ValueError(f"tokenizer backend must be one of {BACKENDS}, got {backend!r}")
        self.path = str(path)
        self.backend = "hf" if self.path.endswith(".json") else backend
        if self.path.endswith(".json") or backend == "hf":
            from tokenizers import Tokenizer as HFTokenizer

            self._kind = "hf"
            self._tok = HFTokenizer.from_file(self.path) if self.path.endswith(".json") else sentencepiece_to_hf(self.path)
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
            encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)  # fast: no offsets
            ids = [e.ids for e in encode(list(texts), add_special_tokens=False)]
        return [self._wrap(list(x), bos, eos) for x in ids]

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if self._kind == "spm":
            return self._tok.decode(ids)
        return self._tok.decode(ids, skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"Tokenizer({self.path!r}, backend={self.backend!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, eos_id={self.eos_id})"


def sentencepiece_to_hf(model_path: str):
    """An HF ``tokenizers.Tokenizer`` that encodes exactly like the SentencePiece BPE model at ``model_path``.

    SentencePiece BPE merges, over the whole normalized text (spaces as ``▁``, one ``▁`` prepended), the adjacent pair
    whose merged piece has the highest score, the leftmost of equal scores; unknown characters fall back to UTF-8 byte
    pieces. HF BPE merges by rank, the leftmost of equal ranks. The conversion:

    - merges: every split ``(a, b)`` of every normal piece into two normal pieces, ranked by the piece's score;
    - pre-tokenization before each run of ``▁``: exact, since no piece holds ``▁`` after a non-``▁`` character
      (checked below), so no merge crosses such a point; it lets HF cache words;
    - pure-whitespace pieces (``▁▁`` ...) share the lowest score, where SentencePiece's leftmost rule decides: ranking
      their merges last, by the left part's length, longest first, then by the right part's, shortest first,
      reproduces it (the leftmost symbol grows one ``▁`` at a time, then takes the next pair when it cannot).

    Raises ValueError for models outside these assumptions (unigram models, normalization rules, mixed pieces).
    """
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, normalizers, pre_tokenizers

    m = sentencepiece_model_pb2.ModelProto()
    with open(model_path, "rb") as f:
        m.ParseFromString(f.read())
    ns, ts = m.normalizer_spec, m.trainer_spec
    if ts.model_type != ts.BPE or ns.name != "identity" or ns.precompiled_charsmap or not ns.add_dummy_prefix \
            or ns.remove_extra_whitespaces or ts.treat_whitespace_as_suffix or not ts.byte_fallback:
        raise ValueError(f"{model_path}: only BPE models with byte fallback, identity normalization and a dummy "
                         "prefix convert exactly to HF tokenizers")
    normal = {p.piece: p.score for p in m.pieces if p.type == p.NORMAL}
    ws = {p for p in normal if set(p) == {"\u2581"}}
    if any("\u2581" in p[1:] for p in normal if p not in ws):
        raise ValueError(f"{model_path}: pieces with \u2581 inside a word: the pre-tokenization would not be exact")
    if ws and max(normal[p] for p in ws) >= min(s for p, s in normal.items() if p not in ws):
        raise ValueError(f"{model_path}: whitespace pieces do not score below all others")
    vocab = {p.piece: i for i, p in enumerate(m.pieces)}
    merges = []
    for piece, score in normal.items():
        for k in range(1, len(piece)):
            a, b = piece[:k], piece[k:]
            if a in normal and b in normal:
                merges.append(((1, -len(a), len(b)) if piece in ws else (0, -score, vocab[a]), a, b))
    merges.sort()
    unk = m.pieces[ts.unk_id].piece
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=[(a, b) for _, a, b in merges], unk_token=unk,
                                 fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("\u2581+"), behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return tok


def load_tokenizer(path: str | os.PathLike | None = None, backend: str = "sentencepiece") -> Tokenizer:
    """Load a tokenizer.

    Args:
        path: ``None`` (default) for Mistral's 32K SentencePiece model shipped by ``mistral-common``
            (``bos_id=1``, ``eos_id=2``, ``vocab_size=32000``); a path to a ``tokenizer.json`` (HF ``tokenizers``);
            or a path to any SentencePiece model file (``.model``, ``.model.v1``, ...).
        backend: for a SentencePiece model, ``"sentencepiece"`` or ``"hf"`` (converted, the same ids).

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
    return Tokenizer(str(path), backend=backend)
