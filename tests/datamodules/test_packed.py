import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datamodules.packed import PackedBatches, TokenFile, write_token_split
from datamodules.prepare import FORMAT_VERSION


def token_file(tmp_path, seed, n_docs=60, max_len=90, n_shards=3):
    """A random prepared split in ``n_shards`` shards, the last one used in part (as at a cap): documents
    [BOS] ... [EOS] of random lengths. Returns the TokenFile, the split's token stream and its document offsets."""
    rng = np.random.default_rng(seed)
    n_shards = min(n_shards, n_docs)
    docs = [np.concatenate([[1], rng.integers(3, 32000, rng.integers(1, max_len)), [2]]) for _ in range(n_docs + 5)]
    cuts = np.linspace(0, n_docs, n_shards + 1).astype(int)
    shards = []
    for k in range(n_shards):
        part = docs[cuts[k]:cuts[k + 1] + (5 if k == n_shards - 1 else 0)]  # 5 documents past the cap on disk
        offsets = np.concatenate([[0], np.cumsum([len(d) for d in part])]).astype(np.int64)
        entry = write_token_split(tmp_path / "train", f"{k:06d}", np.concatenate(part).astype(np.uint16),
                                  offsets)["shards"][0]
        entry["file"] = f"train/{entry['file']}"
        if k == n_shards - 1:
            entry["n_docs"] -= 5
            entry["n_tokens"] = int(offsets[-6])
        shards.append(entry)
    meta = {"format": FORMAT_VERSION, "dtype": "uint16", "splits": {"train": {"shards": shards}}}
    tokens = np.concatenate(docs[:n_docs]).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs[:n_docs]])]).astype(np.int64)
    tf = TokenFile(tmp_path, "train", meta=meta)
    assert tf.n_tokens == len(tokens) and tf.n_docs == n_docs
    return tf, tokens, offsets


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


def test_shards_read_as_one_stream(tmp_path):
    tf, tokens, offsets = token_file(tmp_path, seed=50, n_docs=200, n_shards=7)
    tf.MAX_OPEN = 2  # fewer open maps than shards: maps are reopened as needed
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = int(rng.integers(0, len(tokens)))
        b = int(rng.integers(a, min(len(tokens), a + 400) + 1))
        np.testing.assert_array_equal(tf.read(a, b), tokens[a:b])
        np.testing.assert_array_equal(tf.doc_starts(a, b), offsets[(offsets >= a) & (offsets < b)])
    np.testing.assert_array_equal(tf.offsets, offsets)
    assert len(tf._maps) <= 2
