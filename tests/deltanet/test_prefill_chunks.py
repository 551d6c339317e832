"""The prefill in pieces (deltanet/generation.py, ``prefill_chunk_size``) on CPU, every family: the last position's
logits and every layer's cache equal those of one forward over the whole prompt (lengths that are not multiples of
the piece, a left-padded batch whose padding runs past the first pieces, pieces long enough for the chunk kernels),
greedy generation gives the same tokens on the static and the reference path, and bad values fail clearly."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from deltanet import FAMILIES, DeltaNetForCausalLM
from deltanet.generation import PREFILL_CHUNK_SIZE

from tests.deltanet.test_generation_static import FAMILY_CONFIGS, rel_err, tiny

ROOT = Path(__file__).resolve().parents[2]


class ForwardCounter:
    """Records the length of every input of ``model.model`` (one entry per forward)."""

    def __init__(self, model):
        self.lengths: list[int] = []
        self.handle = model.model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.lengths.append(args[0].shape[1])

    def prefills(self) -> list[int]:
        """Lengths of the prompt forwards (the decoding forwards of the reference loop are 1 token each)."""
        return [n for n in self.lengths if n > 1]

    def close(self):
        self.handle.remove()


def pieces(T: int, step: int) -> list[int]:
    return [min(step, T - s) for s in range(0, T, step)]


def padded_batch(lengths: list[int], T: int, seed: int):
    """(ids, attention_mask) of len(lengths) rows left-padded to T (padding id 0, mask 0)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, T - n:] = torch.randint(1, 97, (n,), generator=g)
        mask[i, T - n:] = 1
    return ids, mask


def assert_same_state(got, ref, where: str, tol: float = 1e-5) -> None:
    """One layer's cache (nested dicts of tensors and ints).  A global KV cache is compared over its filled part
    ("len" slots): the capacity behind it is an allocation detail."""
    if isinstance(ref, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(ref), (where, sorted(got), sorted(ref))
        n = ref.get("len")
        for name in ref:
            a, b = got[name], ref[name]
            if n is not None and name in ("k", "v"):
                a, b = a[:, :, :n], b[:, :, :n]
            elif n is not None and name == "pos":
                a, b = a[:n], b[:n]
            elif n is not None and name == "pad":
                a, b = a[:, :n], b[:, :n]
            assert_same_state(a, b, f"{where}.{name}", tol)
    elif isinstance(ref, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.shape == ref.shape and got.dtype == ref.dtype, \
            (where, getattr(got, "shape", None), ref.shape)
        if ref.is_floating_point():
            assert torch.isfinite(got).all(), where
            if ref.norm() == 0:
                assert got.norm() == 0, where
            else:
                assert rel_err(got, ref) < tol, (where, rel_err(got, ref))
        else:
            assert torch.equal(got, ref), where
    else:
        assert got == ref, (where, got, ref)


CASES = {  # (rows' lengths, prompt T, piece)
    "T37-piece8": ([37, 37], 37, 8),
    "T37-piece5": ([37, 37], 37, 5),
    "padded-piece8": ([37, 24], 37, 8),  # row 1: 13 padding tokens, past the first piece
    "padded-piece5": ([37, 24], 37, 5),  # ... past the first two
    "T150-piece70": ([150, 150], 150, 70),  # pieces above the recurrent limit (64): chunk kernels with a state
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_prefill_equals_one_forward(family, case):
    lengths, T, step = CASES[case]
    torch.manual_seed(30)
    model = DeltaNetForCausalLM(tiny(**FAMILY_CONFIGS[family])).eval()
    ids, mask = padded_batch(lengths, T, seed=31)
    mask = mask if min(lengths) < T else None
    counter = ForwardCounter(model)
    with torch.no_grad():
        ref_logits, ref = model._prefill(ids, mask)
        assert counter.lengths == [T]
        logits, cache = model._prefill(ids, mask, step)
    counter.close()
    assert counter.lengths[1:] == pieces(T, step) and len(counter.lengths) > 2  # really in pieces
    assert torch.isfinite(logits).all()
    assert rel_err(logits, ref_logits) < 1e-5
    assert cache.seen_tokens == ref.seen_tokens == T
    assert len(cache.layers) == len(ref.layers)
    for i, (got, want) in enumerate(zip(cache.layers, ref.layers)):
        assert_same_state(got, want, f"layer {i}")
        for block in (got.values() if family == "mamba" else [got]):
            if "len" in block:  # a global KV cache: allocated once at the prompt's length, not doubled per piece
                assert block["k"].shape[2] == T


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_chunked_equals_unchunked(family):
    torch.manual_seed(32)
    model = DeltaNetForCausalLM(tiny(**FAMILY_CONFIGS[family])).eval()
    ids, mask = padded_batch([37, 26], 37, seed=33)  # row 1: 11 padding tokens, past the first piece
    for fast in (True, False):
        ref = model.generate(ids, 9, temperature=0.0, attention_mask=mask, fast=fast, prefill_chunk_size=None)
        counter = ForwardCounter(model)
        out, stats = model.generate(ids, 9, temperature=0.0, attention_mask=mask, fast=fast, prefill_chunk_size=16,
                                    return_stats=True)  # 16 tokens over 2 rows: 8 positions per piece
        counter.close()
        assert counter.prefills() == pieces(37, 8), (fast, counter.lengths)
        assert torch.equal(out, ref), f"fast={fast}"
        assert stats.fast == fast and not stats.cuda_graph and stats.prefill_s > 0 and stats.new_tokens == 9
    # each row continues as it would alone: the padding of a piece with a cache is masked too
    alone = model.generate(ids[1:, 11:], 9, temperature=0.0, prefill_chunk_size=8)
    assert torch.equal(out[1:, 11:], alone)


def test_default_prompt_pieces():
    torch.manual_seed(34)
    model = DeltaNetForCausalLM(tiny(family="deltanet")).eval()
    ids = torch.randint(0, 97, (1, 20))
    counter = ForwardCounter(model)
    for size in (None, 0, 20, 64):  # the whole prompt in one forward
        model.generate(ids, 2, temperature=0.0, prefill_chunk_size=size)
        assert counter.prefills() == [20], size
        counter.lengths.clear()
    model.generate(ids, 2, temperature=0.0, prefill_chunk_size=7)
    assert counter.prefills() == [7, 7, 6]
    counter.lengths.clear()
    # the size counts tokens over all rows: 4 rows, 13 tokens -> 3 positions per piece; fewer tokens than rows -> 1
    model.generate(ids.expand(4, -1), 2, temperature=0.0, prefill_chunk_size=13)
    assert counter.prefills() == [3] * 6 + [2]
    counter.lengths.clear()
    model.generate(ids[:, :3].expand(4, -1), 2, temperature=0.0, prefill_chunk_size=2)
    assert counter.lengths[:3] == [1, 1, 1]  # the prompt's three forwards, before the decoding
    counter.close()
    # the default is one constant, repeated by run.py's config
    assert PREFILL_CHUNK_SIZE == 65536
    cfg = OmegaConf.load(ROOT / "conf" / "config.yaml")
    assert cfg.generation.prefill_chunk_size == PREFILL_CHUNK_SIZE


@pytest.mark.parametrize("bad", [-1, -8192, 2.5, 8.0, "8", True, math.nan])
def test_bad_prefill_chunk_size_is_rejected(bad):
    model = DeltaNetForCausalLM(tiny(family="deltanet"))
    ids = torch.randint(1, 97, (1, 5))
    with pytest.raises(ValueError, match="prefill_chunk_size"):
        model.generate(ids, 2, prefill_chunk_size=bad)
    with pytest.raises(ValueError, match="prefill_chunk_size"):  # also when nothing is generated
        model.generate(ids, 0, prefill_chunk_size=bad)


def test_chunked_prefill_on_the_triton_kernels_equals_one_forward(triton_runnable):
    """DeltaNet's Triton kernels (interpreted on CPU) carry the state across pieces: a chunk-kernel piece of 70
    tokens, then a recurrent one of 10, equal one chunk-kernel forward of 80."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(35)
    model = DeltaNetForCausalLM(tiny(family="deltanet", backend="triton", fused=False)).to(device).eval()
    ids = torch.randint(0, 97, (2, 80), device=device)
    with torch.no_grad():
        ref_logits, ref = model._prefill(ids, None)
        logits, cache = model._prefill(ids, None, 70)
    assert rel_err(logits, ref_logits) < 1e-4
    for i, (got, want) in enumerate(zip(cache.layers, ref.layers)):
        assert_same_state(got, want, f"layer {i}", tol=1e-4)
