import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datamodules.packed import PackedBatches, TokenFile


def token_file(tmp_path, seed, n_docs=60, max_len=90):
    """A random prepared split: documents [BOS] ... [EOS] of random lengths."""
    rng = np.random.default_rng(seed)
    docs = [np.concatenate([[1], rng.integers(3, 32000, rng.integers(1, max_len)), [2]]) for _ in range(n_docs)]
    tokens = np.concatenate(docs).astype(np.uint16)
    tokens.tofile(tmp_path / "train.bin")
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    np.save(tmp_path / "train.idx.npy", offsets)
    return TokenFile(tmp_path, "train"), tokens.astype(np.int64), offsets


def collect(ds, num_workers=0):
    return list(DataLoader(ds, batch_size=None, num_workers=num_workers))


def test_packing_is_exact(tmp_path):
    tf, tokens, _ = token_file(tmp_path, seed=1)
    L, B = 37, 3
    ds = PackedBatches(tf, L, B, shuffle=False)
    batches = collect(ds)
    assert len(batches) == len(ds) == (len(tokens) // L) // B
    flat = torch.cat([b["input_ids"].reshape(-1) for b in batches]).numpy()
    n = len(flat)
    np.testing.assert_array_equal(flat, tokens[:n])  # concatenated batches == the token stream
    assert len(tokens) - n < L * B  # only the partial window and the trim to whole batches are left out
    assert all(b["input_ids"].dtype == torch.int64 and b["input_ids"].shape == (B, L) for b in batches)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_rank_and_worker_shards_disjoint_and_complete(tmp_path, world_size):
    tf, tokens, _ = token_file(tmp_path, seed=10 + world_size)
    L, B = 16, 2
    n_windows = len(tokens) // L
    windows = tokens[:n_windows * L].reshape(n_windows, L)
    position = {"epoch": 3, "batch": 0}
    seen = []
    for rank in range(world_size):
        ds = PackedBatches(tf, L, B, seed=7, rank=rank, world_size=world_size, position=position)
        ref = collect(ds, 0)
        for w in (2, 3):  # any number of workers gives the same batches in the same order
            got = collect(ds, w)
            assert len(got) == len(ref) and all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(got, ref))
        rows = torch.cat([b["input_ids"] for b in ref]).numpy()
        # map each row back to its window index (rows are distinct with overwhelming probability)
        lookup = {r.tobytes(): i for i, r in enumerate(windows)}
        seen += [lookup[r.tobytes()] for r in rows]
    used = (n_windows // (world_size * B)) * world_size * B
    assert len(seen) == len(set(seen)) == used  # disjoint, nothing duplicated; all but the trimmed few
    assert n_windows - used < world_size * B
    # shuffled with a new permutation per epoch
    position["epoch"] = 4
    other = collect(PackedBatches(tf, L, B, seed=7, rank=0, world_size=world_size, position=position))
    assert not torch.equal(other[0]["input_ids"], collect(PackedBatches(
        tf, L, B, seed=7, rank=0, world_size=world_size, position={"epoch": 3, "batch": 0}))[0]["input_ids"])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_position_gives_the_remaining_batches(tmp_path, num_workers):
    tf, _, _ = token_file(tmp_path, seed=20 + num_workers)
    full = collect(PackedBatches(tf, 24, 2, seed=5, position={"epoch": 2, "batch": 0}), num_workers)
    for k in (1, 5, len(full) - 1):
        rest = collect(PackedBatches(tf, 24, 2, seed=5, position={"epoch": 2, "batch": k}), num_workers)
        assert len(rest) == len(full) - k
        assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(rest, full[k:]))
    # a position past the end of an epoch continues in the next one (never an endless run of empty epochs)
    nxt = collect(PackedBatches(tf, 24, 2, seed=5, position={"epoch": 3, "batch": 1}), num_workers)
    late = collect(PackedBatches(tf, 24, 2, seed=5, position={"epoch": 2, "batch": len(full) + 1}), num_workers)
    assert len(late) == len(nxt) and all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(late, nxt))


def test_varlen_boundaries(tmp_path):
    tf, tokens, offsets = token_file(tmp_path, seed=30)
    L, B = 50, 4
    ds = PackedBatches(tf, L, B, seed=3, varlen=True)
    fixed = PackedBatches(tf, L, B, seed=3, varlen=False)
    for b, f in zip(collect(ds), collect(fixed)):
        ids, labels, cu = b["input_ids"], b["labels"], b["cu_seqlens"]
        assert ids.shape == labels.shape == (1, B * L) and cu.dtype == torch.int32
        assert torch.equal(ids.reshape(B, L), f["input_ids"])
        assert cu[0] == 0 and cu[-1] == B * L and (cu[1:] > cu[:-1]).all()
        starts = set(cu[:-1].tolist())
        assert set(range(0, B * L, L)) <= starts  # every window starts a segment
        # every other segment start is a document start: BOS there, EOS right before it
        for s in starts - set(range(0, B * L, L)):
            assert ids[0, s] == 1 and ids[0, s - 1] == 2
        # and every BOS that follows an EOS inside a window starts a segment
        flat = ids[0]
        for s in range(1, B * L):
            if s % L and flat[s] == 1 and flat[s - 1] == 2:
                assert s in starts
        mask = labels[0] == -100
        assert set(torch.nonzero(mask).reshape(-1).tolist()) == starts
        assert torch.equal(labels[0][~mask], ids[0][~mask])


def test_too_small_split_is_a_clear_error(tmp_path):
    tf, tokens, _ = token_file(tmp_path, seed=40, n_docs=2, max_len=5)
    with pytest.raises(ValueError, match="fewer than one batch"):
        PackedBatches(tf, len(tokens), 2)
