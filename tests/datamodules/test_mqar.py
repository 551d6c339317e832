"""MQAR generator: Zoology's layout, answers, power-law spacing, seeds; the DataModule's loaders."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.mqar import (MQARDataModule, answer_index, generate_mqar, generate_mqar_mixture,
                              power_law_probs)

T, P, V = 128, 8, 512


def _gen(n=256, seed=0, **kw):
    return generate_mqar(n, seq_len=kw.pop("seq_len", T), num_kv_pairs=kw.pop("num_kv_pairs", P),
                         vocab_size=kw.pop("vocab_size", V), seed=seed, **kw)


def test_keys_and_values_disjoint_ranges_distinct_per_sequence():
    d = _gen(seed=1)
    x = d["input_ids"]
    keys, values = x[:, 0:2 * P:2], x[:, 1:2 * P:2]  # (N, P) context: k v k v ...
    assert keys.min() >= 1 and keys.max() < V // 2
    assert values.min() >= V // 2 and values.max() < V
    for row in (keys, values):  # without replacement within each example
        assert (row.sort(1).values.diff(1) > 0).all()
    # across examples the draws cover the ranges (uniform, not a fixed subset)
    assert keys.unique().numel() > 0.8 * (V // 2 - 1) and values.unique().numel() > 0.8 * (V // 2)


def test_each_query_is_answered_by_its_value_and_only_queries_are_labelled():
    d = _gen(seed=2)
    x, y, qpos = d["input_ids"], d["labels"], d["query_pos"]
    assert ((y != -100).sum(1) == P).all()
    assert (qpos >= 2 * P).all() and (qpos <= T - 2).all() and ((qpos - 2 * P) % 2 == 0).all()
    for n in range(x.shape[0]):
        kv = {int(x[n, 2 * i]): int(x[n, 2 * i + 1]) for i in range(P)}
        labelled = (y[n] != -100).nonzero().flatten()
        assert sorted((labelled - 1).tolist()) == sorted(qpos[n].tolist())
        queried = [int(x[n, t - 1]) for t in labelled]
        assert sorted(queried) == sorted(kv)  # every key is queried exactly once
        for t in labelled:  # labels[t] is predicted by the logits at t - 1, where the query key sits
            assert int(y[n, t]) == kv[int(x[n, t - 1])]


def test_non_query_positions_are_noise_or_zero():
    noisy = _gen(seed=3)["input_ids"][:, 2 * P:]
    assert noisy.unique().numel() > V // 2  # uniform noise over the whole vocabulary
    d = _gen(seed=3, random_non_queries=False)
    region = d["input_ids"][:, 2 * P:].clone()
    region.scatter_(1, d["query_pos"] - 2 * P, 0)
    assert (region == 0).all()


def test_query_gaps_follow_zoology_power_law():
    """Gap marginals match Zoology's own sampler, np.random.choice(space, P, replace=False, p=power law)."""
    n, seq_len, p = 5000, 64, 4
    space = (seq_len - 2 * p) // 2
    gaps = (generate_mqar(n, seq_len, p, vocab_size=256, seed=4)["query_pos"] - 2 * p) // 2  # (n, p)
    assert ((gaps.sort(1).values.diff(1)) > 0).all()  # distinct slots
    probs = power_law_probs(space, 0.01).numpy()
    rng = np.random.default_rng(0)
    ref = np.stack([rng.choice(space, size=p, replace=False, p=probs) for _ in range(n)])
    ours = torch.bincount(gaps.flatten(), minlength=space).double().numpy() / gaps.numel()
    theirs = np.bincount(ref.flatten(), minlength=space) / ref.size
    assert np.abs(ours - theirs).max() < 0.015, (ours[:6], theirs[:6])
    assert ours[0] > 5 * ours[space // 2]  # small gaps dominate: queries come soon after the context
    # a = 1 is uniform spacing
    flat = (generate_mqar(n, seq_len, p, vocab_size=256, power_a=1.0, seed=5)["query_pos"] - 2 * p) // 2
    c = torch.bincount(flat.flatten(), minlength=space).double() / flat.numel()
    assert (c - 1 / space).abs().max() < 0.015


def test_same_seed_same_data_other_seed_different():
    a, b, c = _gen(seed=7), _gen(seed=7), _gen(seed=8)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["input_ids"], c["input_ids"])


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        generate_mqar(4, seq_len=31, num_kv_pairs=2, vocab_size=64)
    with pytest.raises(ValueError):
        generate_mqar(4, seq_len=32, num_kv_pairs=9, vocab_size=64)  # 4P > T
    with pytest.raises(ValueError):
        generate_mqar(4, seq_len=64, num_kv_pairs=4, vocab_size=64)  # vocab must exceed seq_len
    with pytest.raises(ValueError):
        MQARDataModule(train_seed=3, test_seed=3)


def test_mixture_has_each_pair_count():
    d = generate_mqar_mixture(300, 64, [2, 4, 8], seed=0, vocab_size=256)
    counts = (d["labels"] != -100).sum(1)
    assert sorted(counts.unique().tolist()) == [2, 4, 8]
    assert [(counts == c).sum().item() for c in (2, 4, 8)] == [100, 100, 100]


def test_datamodule_train_and_test_differ_and_batches_are_dicts():
    dm = MQARDataModule(vocab_size=V, seq_len=T, num_kv_pairs=P, num_train_examples=64, num_test_examples=16,
                        batch_size=8, device="cpu", train_seed=0, test_seed=1)
    dm.setup()
    train_rows = {tuple(r) for r in dm.train_set["input_ids"].tolist()}
    assert not any(tuple(r) in train_rows for r in dm.test_set["input_ids"].tolist())
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "labels", "answer_pos", "answer"}
    assert batch["input_ids"].shape == (8, T) and batch["input_ids"].dtype == torch.long
    assert ((batch["labels"] != -100).sum(1) == P).all()
    rows = torch.arange(8).unsqueeze(1)
    assert batch["answer_pos"].shape == (8, P)
    assert torch.equal(batch["answer"], batch["labels"][rows, batch["answer_pos"] + 1])
    val = list(dm.val_dataloader())
    assert sum(b["input_ids"].shape[0] for b in val) == 16
    assert torch.equal(torch.cat([b["input_ids"] for b in val]), dm.test_set["input_ids"])


def test_answer_index_lists_every_labelled_position_in_order_with_fixed_width():
    d = generate_mqar_mixture(40, 64, [2, 4, 8], seed=3, vocab_size=256)
    pos, ans = answer_index(d["labels"])
    assert pos.shape == ans.shape == (40, 8)
    for n in range(40):
        labelled = ((d["labels"][n, 1:] != -100).nonzero().flatten()).tolist()  # t with labels[t + 1] set
        k = len(labelled)
        assert pos[n, :k].tolist() == labelled and (ans[n, k:] == -100).all() and (pos[n, k:] == 0).all()
        assert ans[n, :k].tolist() == d["labels"][n, [t + 1 for t in labelled]].tolist()


class _Trainer:  # the two attributes the DataModule reads from Lightning's Trainer
    def __init__(self, epoch: int, reload: int = 1):
        self.current_epoch, self.reload_dataloaders_every_n_epochs = epoch, reload


def test_fresh_train_data_draws_a_new_set_per_epoch_and_epoch_0_is_the_fixed_set():
    kw = dict(vocab_size=V, seq_len=T, num_kv_pairs=P, num_train_examples=32, num_test_examples=8, batch_size=8,
              device="cpu")
    fixed = MQARDataModule(**kw)
    fixed.setup()
    dm = MQARDataModule(**kw, fresh_train_data=True)
    dm.trainer = _Trainer(0)
    dm.train_dataloader()
    assert torch.equal(dm.train_set["input_ids"], fixed.train_set["input_ids"])
    test_set = dm.test_set
    dm.trainer = _Trainer(2)  # a resume into epoch 2 gets epoch 2's set directly
    dm.train_dataloader()
    want = generate_mqar(32, T, P, vocab_size=V, seed=0 + 1000 * 2)
    assert torch.equal(dm.train_set["input_ids"], want["input_ids"]) and dm.test_set is test_set
    dm.trainer = _Trainer(3, reload=0)
    with pytest.raises(ValueError, match="reload_dataloaders_every_n_epochs=1"):
        dm.train_dataloader()


def test_epoch_shuffle_order_depends_on_seed_and_epoch_only():
    from datamodules.mqar import EpochShuffle

    s = EpochShuffle(50, seed=4, epoch=2)
    first = list(s)
    torch.manual_seed(123)  # the global random state plays no part
    assert list(s) == first and sorted(first) == list(range(50))
    s.set_epoch(3)
    assert list(s) != first and list(EpochShuffle(50, seed=4, epoch=3)) == list(s)
    assert list(EpochShuffle(50, seed=5, epoch=2)) != first
    torch.manual_seed(7)
    a = MQARDataModule(vocab_size=V, seq_len=T, num_kv_pairs=P, num_train_examples=32, num_test_examples=8,
                       batch_size=8, device="cpu")
    assert a.shuffle_seed == 7  # the run's seed by default
