"""MAD task generators: every row checked against an independent per-row reading of the task's rules (labels,
values, noise placement, copy order, fuzzy motifs, the fixed memorization map), seeds, bad arguments, the
DataModule, and the config table against the generators' defaults."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from datamodules.mad import (TASKS, MADDataModule, generate_compression, generate_fuzzy_in_context_recall,
                             generate_in_context_recall, generate_memorization, generate_noisy_in_context_recall,
                             generate_selective_copying, generate_task, memorization_map)

ROOT = Path(__file__).resolve().parents[2]
IGN = -100


def _rows(d):
    return zip(d["input_ids"].tolist(), d["labels"].tolist())


def _check_recall_row(x, y, K, hi, noise_lo):
    """Walk one in-context-recall row slot by slot: expected labels from the rules alone."""
    seen: dict[int, int] = {}
    slots = [(x[i], x[i + 1]) for i in range(0, len(x), 2)]
    for s, (k, v) in enumerate(slots):
        if k >= noise_lo:  # a noise slot: both tokens noise, unlabelled
            assert v >= noise_lo and y[2 * s] == IGN and y[2 * s + 1] == IGN
            continue
        assert 0 <= k < K and K <= v < hi, (k, v)
        assert y[2 * s] == IGN
        assert y[2 * s + 1] == (v if k in seen else IGN)
        if k in seen:
            assert seen[k] == v, "a key keeps its value within a sequence"
        seen[k] = v
    assert slots[-1][0] < noise_lo and y[-1] == x[-1] != IGN, "the last slot queries a key shown before"


def test_in_context_recall_rows_follow_the_rules():
    V, T = 8, 20  # keys [0, 4), values [4, 8)
    d = generate_in_context_recall(300, vocab_size=V, seq_len=T, seed=1)
    assert d["input_ids"].shape == d["labels"].shape == (300, T)
    for x, y in _rows(d):
        _check_recall_row(x, y, K=4, hi=8, noise_lo=8)
    # the per-sequence map is random: across sequences a key meets several values
    x = d["input_ids"]
    assert x[:, 1::2][x[:, 0::2] == 0].unique().numel() == 4


def test_noisy_recall_puts_noise_only_in_whole_slots_and_scores_no_noise():
    V, NV, T = 12, 4, 40  # keys [0, 4), values [4, 8), noise [8, 12)
    d = generate_noisy_in_context_recall(400, vocab_size=V, seq_len=T, noise_vocab_size=NV, frac_noise=0.5, seed=2)
    for x, y in _rows(d):
        _check_recall_row(x, y, K=4, hi=8, noise_lo=8)
        assert any(x[i] < 8 for i in range(0, T - 2, 2)), "at least one pair before the query"
    slots = d["input_ids"][:, 0:-2:2]  # keys of the first P - 1 slots
    share = (slots >= 8).float().mean().item()
    assert 0.42 < share < 0.52, share  # frac_noise=0.5, less the one slot kept a pair
    assert d["input_ids"][d["input_ids"] >= 8].unique().tolist() == [8, 9, 10, 11]


def _parse_fuzzy(x, K, pad):
    """Split a fuzzy row into (start, key tuple, value tuple): keys are runs of key tokens, values of value tokens."""
    i = 0
    while x[i] == pad:
        i += 1
    assert pad not in x[i:], "padding only on the left"
    pairs = []
    while i < len(x):
        s = i
        while x[i] < K:
            i += 1
        k = tuple(x[s:i])
        j = i
        while i < len(x) and x[i] >= K:
            i += 1
        pairs.append((s, k, tuple(x[j:i])))
        assert k and x[j:i], "every pair has a key and a value"
    return pairs


@pytest.mark.parametrize("split", ["train", "test"])
def test_fuzzy_recall_motifs_values_and_labels(split):
    V, T, KM, VM = 12, 40, 2, 3  # key tokens [0, 5), value tokens [5, 11), pad 11
    d = generate_fuzzy_in_context_recall(300, vocab_size=V, seq_len=T, k_motif_size=KM, v_motif_size=VM, seed=3,
                                         split=split)
    k_sizes, n_scored_pairs = set(), 0
    for x, y in _rows(d):
        pairs = _parse_fuzzy(x, K=5, pad=11)
        seen: dict[tuple, tuple] = {}
        want = [IGN] * T
        for s, k, v in pairs:
            k_sizes.add(len(k))
            assert 1 <= len(k) <= KM and 1 <= len(v) <= VM
            assert len(set(k)) == len(k) and len(set(v)) == len(v), "distinct tokens within a motif"
            assert all(5 <= t < 11 for t in v)
            if k in seen:
                assert seen[k] == v, "a repeated key keeps its first value"
                want[s + len(k):s + len(k) + len(v)] = list(v)
                n_scored_pairs += 1
            seen.setdefault(k, v)
        assert y == want
        assert pairs[-1][1] in {k for _, k, _ in pairs[:-1]}, "the last pair re-presents an earlier one"
    assert k_sizes == ({1, 2} if split == "train" else {KM}), "test keys always have the largest motif size"
    assert n_scored_pairs > 300  # repeats besides the last pair occur (short keys repeat often)


def test_selective_copying_copies_the_non_blank_tokens_in_order():
    V, T, C = 6, 20, 4  # content [0, 4), blank 4, copy 5
    d = generate_selective_copying(300, vocab_size=V, seq_len=T, num_tokens_to_copy=C, seed=4)
    assert d["input_ids"].shape == (300, T + 1)
    prefix = T - C - 1
    positions = set()
    for x, y in _rows(d):
        content = [t for t in x[:prefix] if t != 4]
        positions.update(i for i in range(prefix) if x[i] != 4)
        assert len(content) == C and all(0 <= t < 4 for t in content)
        assert x[prefix] == 5 and x[prefix + 1:] == [4] * (C + 1)
        assert y == [IGN] * (prefix + 2) + content  # logits at the j-th blank after the copy token: token j
    assert positions == set(range(prefix)), "tokens to copy may sit anywhere in the prefix"


def test_compression_rows_are_the_sequence_and_its_compression_token_all_scored():
    V, L = 5, 6
    d = generate_compression(50, vocab_size=V, seq_len=L, seed=5)
    assert set(d) == {"input_ids", "targets"} and d["input_ids"].shape == d["targets"].shape == (50, L)
    assert torch.equal(d["targets"], d["input_ids"])
    x = d["input_ids"]
    assert bool((x[:, -1] == V - 1).all()) and bool(((x[:, :-1] >= 0) & (x[:, :-1] < V - 1)).all())
    assert not torch.equal(x, generate_compression(50, vocab_size=V, seq_len=L, seed=5, split="test")["input_ids"])


def test_memorization_map_is_fixed_and_labels_are_its_values():
    V, T = 11, 8  # keys [0, 5), values [5, 10), insert token 10
    kv = memorization_map(V, map_seed=7).tolist()
    assert len(kv) == 5 and sorted(kv) == sorted(set(kv)) and all(5 <= v < 10 for v in kv)
    assert memorization_map(V, map_seed=8).tolist() != kv  # the map seed decides it
    train = generate_memorization(100, vocab_size=V, seq_len=T, map_seed=7, seed=0, split="train")
    test = generate_memorization(100, vocab_size=V, seq_len=T, map_seed=7, seed=0, split="test")
    for d in (train, test):
        assert d["input_ids"].shape == (100, T + 1)
        for x, y in _rows(d):
            assert x[1::2] == [10] * (T // 2) and x[-1] == 10
            want = [IGN] * (T + 1)
            for p in range(T // 2):
                want[2 * p + 2] = kv[x[2 * p]]
            assert y == want
    assert not torch.equal(train["input_ids"], test["input_ids"])
    assert train["input_ids"][:, 0:T:2].unique().tolist() == [0, 1, 2, 3, 4]


def _small(task):
    return dict(vocab_size=32 if task == "noisy_in_context_recall" else (64 if task == "memorization" else 16),
                seq_len=32, noise_vocab_size=16 if task == "noisy_in_context_recall" else 0,
                frac_noise=0.2 if task == "noisy_in_context_recall" else 0.0, num_tokens_to_copy=4,
                k_motif_size=2, v_motif_size=2)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_seed_and_split_determine_the_data(task):
    a = generate_task(task, 64, 3, "train", **_small(task))
    b = generate_task(task, 64, 3, "train", **_small(task))
    scored = "targets" if task == "compression" else "labels"  # compression: one target per position
    assert set(a) == {"input_ids", scored} and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["input_ids"], generate_task(task, 64, 3, "test", **_small(task))["input_ids"])
    assert not torch.equal(a["input_ids"], generate_task(task, 64, 4, "train", **_small(task))["input_ids"])
    assert ((a[scored] != IGN).sum(1) > 0).all(), "every row scores something"


@pytest.mark.parametrize("call, match", [
    (lambda: generate_in_context_recall(4, seq_len=7), "seq_len"),
    (lambda: generate_in_context_recall(4, vocab_size=17, noise_vocab_size=16), "vocab_size"),
    (lambda: generate_in_context_recall(4, frac_noise=1.0, noise_vocab_size=4, vocab_size=20), "frac_noise"),
    (lambda: generate_in_context_recall(4, frac_noise=0.2, noise_vocab_size=0), "noise_vocab_size"),
    (lambda: generate_in_context_recall(0), "num_examples"),
    (lambda: generate_fuzzy_in_context_recall(4, vocab_size=6, k_motif_size=3), "vocab_size"),
    (lambda: generate_fuzzy_in_context_recall(4, seq_len=12), "seq_len"),
    (lambda: generate_fuzzy_in_context_recall(4, k_motif_size=0), "k_motif_size"),
    (lambda: generate_selective_copying(4, seq_len=33, num_tokens_to_copy=16), "num_tokens_to_copy"),
    (lambda: generate_selective_copying(4, vocab_size=2), "vocab_size"),
    (lambda: generate_memorization(4, vocab_size=2), "vocab_size"),
    (lambda: generate_memorization(4, seq_len=9), "seq_len"),
    (lambda: generate_compression(4, seq_len=1), "seq_len"),
    (lambda: generate_task("recall", 4, 0, "train"), "task"),
    (lambda: generate_compression(4, split="val"), "split"),
    (lambda: MADDataModule(task="copying"), "task"),
    (lambda: MADDataModule(num_train_examples=0), "num_train_examples"),
])
def test_bad_arguments_raise_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_datamodule_trains_recall_on_every_token_and_tests_on_the_values():
    dm = MADDataModule(task="in_context_recall", vocab_size=16, seq_len=16, num_train_examples=24,
                       num_test_examples=10, batch_size=8, seed=5)
    train = next(iter(dm.train_dataloader()))
    assert train["input_ids"].shape == (8, 16) and torch.equal(train["labels"], train["input_ids"])
    test = list(dm.val_dataloader())
    assert [b["input_ids"].shape[0] for b in test] == [8, 2]
    want = generate_in_context_recall(10, vocab_size=16, seq_len=16, seed=5, split="test")
    assert torch.equal(torch.cat([b["labels"] for b in test]), want["labels"])
    scored = MADDataModule(task="in_context_recall", seq_len=16, num_train_examples=8, batch_size=8,
                           train_all_tokens=False, seed=5)
    scored.setup()
    assert torch.equal(scored.train_set["labels"],
                       generate_in_context_recall(8, seq_len=16, seed=5, split="train")["labels"])
    copy = MADDataModule(task="selective_copying", num_train_examples=8, batch_size=8, seq_len=20,
                         num_tokens_to_copy=4)  # train_all_tokens concerns the recall tasks only
    copy.setup()
    assert (copy.train_set["labels"] == IGN).sum() == 8 * (21 - 4)


def test_train_order_is_a_function_of_shuffle_seed_and_epoch():
    def order(epoch, shuffle_seed=7):
        dm = MADDataModule(task="compression", seq_len=8, num_train_examples=16, batch_size=4, seed=1,
                           shuffle_seed=shuffle_seed, device="cpu")
        dm.set_epoch(epoch)
        return torch.cat([b["input_ids"] for b in dm.train_dataloader()])
    assert torch.equal(order(0), order(0)) and torch.equal(order(2), order(2))
    assert not torch.equal(order(0), order(1)) and not torch.equal(order(0), order(0, shuffle_seed=8))
    assert sorted(order(0).tolist()) == sorted(order(1).tolist())  # one epoch: every example once


def test_config_table_is_mad_baseline_and_the_generators_defaults():
    """conf/data/mad.yaml's per-task settings equal each generate_<task>'s defaults (MAD-Lab's baselines)."""
    table = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "data" / "mad.yaml").mad_tasks)
    assert set(table) == set(TASKS)
    for task, (fn, names) in TASKS.items():
        defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items() if k in names}
        assert {k: table[task][k] for k in defaults if k != "map_seed"} == \
            {k: v for k, v in defaults.items() if k != "map_seed"}, task
        assert table[task]["num_train_examples"] == (256 if task == "memorization" else 12_800)
        assert table[task]["train_steps"] == 200 * table[task]["num_train_examples"] // 128  # 200 epochs, batch 128
