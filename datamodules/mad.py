"""The six MAD tasks (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid Architectures"), generated
vectorised in PyTorch from the paper's definitions, and a `MADDataModule` that picks one by name.

Defaults are MAD-Lab's baseline setting of each task (its ``configs/tasks/<task>.yml`` and ``MADConfig``):

| task | vocab | seq_len | other | train / test |
|---|---|---|---|---|
| in_context_recall | 16 | 128 | keys [0, 8), values [8, 16) | 12,800 / 1,280 |
| fuzzy_in_context_recall | 16 | 128 | key and value motifs of 1..3 tokens, pad token 15 | 12,800 / 1,280 |
| noisy_in_context_recall | 32 | 128 | noise vocabulary 16 ([16, 32)), noise share 0.2 | 12,800 / 1,280 |
| selective_copying | 16 | 256 | 16 tokens to copy, blank 14, copy token 15 | 12,800 / 1,280 |
| compression | 16 | 32 | compression token 15 | 12,800 / 1,280 |
| memorization | 256 | 32 | fixed map of 127 keys, insert token 255 | 256 / 1,280 |

Labels follow the project's convention: aligned with ``input_ids``, ``labels[t + 1]`` is what the logits at t
must predict, -100 where nothing is scored. MAD's own layout is (inputs, targets) with ``targets[t]`` predicted at
t; a row here is MAD's model input followed by one more token, and ``labels = [-100] + targets``. For the recall
tasks that extra token is the sequence's last token (the row is the whole sequence, ``seq_len`` tokens); for
selective copying and memorization it is a filler that no scored position can see (rows of ``seq_len + 1``).

Scored positions (the test targets of MAD): in the recall tasks the value of every key already shown earlier in
the sequence (multi-query), in selective copying the copied tokens, in memorization the value of every key, in
compression every token of the row. MAD trains the three recall tasks on every next token (its training targets
are the shifted inputs) and scores only the values at test; ``MADDataModule(train_all_tokens=True)`` (the
default) does the same, ``False`` trains on the scored positions only.

Compression is MAD's encoder-decoder, not a causal LM: the model's output at the compression token alone is
decoded into every token of the row by MAD's MLP (``deltanet/compression.py``, ``lit_modules/mad.py``), so its
rows carry ``targets`` (``targets[:, i]`` predicted at position i) instead of ``labels``.

A ``(seed, split)`` pair determines the data (``split`` is "train" or "test"); the memorization map depends on
``map_seed`` alone, so train and test share it.

Differences from MAD-Lab's generators, each deliberate:
- selective copying scatters the tokens to copy over uniformly random positions of the prefix (MAD-Lab inserts
  its blanks only before a token to copy, so its prefix always ends with the last token to copy);
- fuzzy recall fills the sequence with pairs and re-presents one earlier pair (chosen uniformly) at the end, where
  MAD-Lab inserts its probe pair at a random position while filling; the motif sizes, vocabularies, padding and
  scoring are MAD's;
- accuracy (``val/acc`` of ``lit_modules.mqar.MQARModule`` and of ``lit_modules.mad.MADCompressionModule``) is the share of scored positions predicted right;
  MAD-Lab's torchmetrics ``MulticlassAccuracy`` averages per class (macro) by default.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from datamodules.mqar import IGNORE_INDEX, epoch_loader, resolve_device

try:  # the generators work without Lightning; the DataModule needs it
    import lightning as L
    _Base = L.LightningDataModule
except ImportError:  # pragma: no cover
    _Base = object

__all__ = ["TASKS", "generate_in_context_recall", "generate_noisy_in_context_recall",
           "generate_fuzzy_in_context_recall", "generate_selective_copying", "generate_compression",
           "generate_memorization", "memorization_map", "generate_task", "MADDataModule"]

SPLITS = ("train", "test")


def _generator(seed: int, split: str) -> torch.Generator:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return torch.Generator().manual_seed(int(seed) * 2 + SPLITS.index(split))


def _check(num_examples: int, seq_len: int, vocab_size: int) -> None:
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")


def _random_subsets(n: int, m: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """(n, k) distinct indices from [0, m) per row, in random order (the first k of a random permutation)."""
    return torch.rand(n, m, generator=gen).argsort(dim=1)[:, :k]


# ---------------------------------------------------------------------------------------------- in-context recall

def generate_in_context_recall(num_examples: int, vocab_size: int = 16, seq_len: int = 128,
                               noise_vocab_size: int = 0, frac_noise: float = 0.0, seed: int = 0,
                               split: str = "train") -> dict[str, torch.Tensor]:
    """Multi-query associative recall over ``seq_len / 2`` two-token slots: ``k v k v ... k v``.

    Keys come from [0, K), values from [K, vocab_size - noise_vocab_size), K = (vocab_size - noise_vocab_size) // 2,
    noise tokens from
    [vocab_size - noise_vocab_size, vocab_size). Each sequence draws its own key-to-value map (each key an
    independent uniform value). Each of the first P - 1 slots (P = seq_len / 2) is a noise pair (two uniform noise
    tokens) with probability ``frac_noise`` (one random slot is always a pair), else a uniform key and its value.
    The last slot re-presents a key shown earlier (uniform over the distinct keys shown) with its value.

    Returns ``{"input_ids": (N, seq_len) long, "labels": (N, seq_len) long}``: ``labels[t] = input_ids[t]`` at the
    value of every slot whose key appeared in an earlier slot (the last slot included), -100 elsewhere.
    """
    _check(num_examples, seq_len, vocab_size)
    if seq_len % 2 or seq_len < 4:
        raise ValueError(f"seq_len must be even and >= 4 (key-value slots, the last one a query), got {seq_len}")
    if not 0.0 <= frac_noise < 1.0:
        raise ValueError(f"frac_noise must lie in [0, 1), got {frac_noise}")
    if frac_noise > 0 and noise_vocab_size < 1:
        raise ValueError(f"frac_noise={frac_noise} needs noise_vocab_size >= 1, got {noise_vocab_size}")
    K = (vocab_size - noise_vocab_size) // 2
    if noise_vocab_size < 0 or K < 1:
        raise ValueError(f"vocab_size={vocab_size} minus noise_vocab_size={noise_vocab_size} must leave at least "
                         f"one key and one value token")
    gen, N, P = _generator(seed, split), num_examples, seq_len // 2
    hi = vocab_size - noise_vocab_size  # values from [K, hi)
    kv_map = torch.randint(K, hi, (N, K), generator=gen)  # (N, K) value of each key
    keys = torch.randint(0, K, (N, P), generator=gen)  # (N, P)
    noise = torch.rand(N, P, generator=gen) < frac_noise  # (N, P)
    noise[:, -1] = False
    noise.scatter_(1, torch.randint(0, P - 1, (N, 1), generator=gen), False)  # at least one pair before the probe
    onehot = torch.nn.functional.one_hot(keys, K) * (~noise).unsqueeze(-1)  # (N, P, K) non-noise key occurrences
    shown = onehot[:, :-1].sum(1) > 0  # (N, K) keys shown before the last slot
    keys[:, -1] = torch.rand(N, K, generator=gen).masked_fill(~shown, -1.0).argmax(1)  # uniform among them
    onehot[:, -1] = torch.nn.functional.one_hot(keys[:, -1], K)
    values = kv_map.gather(1, keys)  # (N, P)
    pairs = torch.stack([keys, values], dim=2)  # (N, P, 2)
    if noise.any():
        filler = torch.randint(vocab_size - noise_vocab_size, vocab_size, (N, P, 2), generator=gen)
        pairs = torch.where(noise.unsqueeze(-1), filler, pairs)
    # A slot is scored when its key was shown in an earlier (non-noise) slot.
    before = onehot.cumsum(1) - onehot  # (N, P, K) earlier occurrences
    scored = (before.gather(2, keys.unsqueeze(-1)).squeeze(-1) > 0) & ~noise  # (N, P)
    input_ids = pairs.reshape(N, seq_len)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, 1::2] = torch.where(scored, values, IGNORE_INDEX)
    return {"input_ids": input_ids, "labels": labels}


def generate_noisy_in_context_recall(num_examples: int, vocab_size: int = 32, seq_len: int = 128,
                                     noise_vocab_size: int = 16, frac_noise: float = 0.2, seed: int = 0,
                                     split: str = "train") -> dict[str, torch.Tensor]:
    """In-context recall with noise pairs from a separate noise vocabulary (see :func:`generate_in_context_recall`)."""
    return generate_in_context_recall(num_examples, vocab_size, seq_len, noise_vocab_size, frac_noise, seed, split)


# ---------------------------------------------------------------------------------------------- fuzzy recall

def generate_fuzzy_in_context_recall(num_examples: int, vocab_size: int = 16, seq_len: int = 128,
                                     k_motif_size: int = 3, v_motif_size: int = 3, seed: int = 0,
                                     split: str = "train") -> dict[str, torch.Tensor]:
    """In-context recall whose keys and values are motifs of several adjacent tokens.

    Vocabulary: keys' tokens [0, K), values' tokens [K, vocab_size - 1), K = (vocab_size - 1) // 2, pad token ``vocab_size - 1``. A key is 1..``k_motif_size`` distinct key
    tokens (size uniform; at test always ``k_motif_size``), a value 1..``v_motif_size`` distinct value tokens
    (size uniform). Pairs fill the sequence left to right while they fit, leaving room for a last pair; a key that
    repeats within a sequence keeps its first value. The last pair re-presents one earlier pair (uniform over the
    pairs); the sequence is left-padded with the pad token to ``seq_len``.

    Returns ``{"input_ids", "labels"}`` (N, seq_len): the value tokens of every pair whose key appeared in an
    earlier pair are labelled with themselves (the last pair always), -100 elsewhere (pads, keys, new values).
    """
    _check(num_examples, seq_len, vocab_size)
    if k_motif_size < 1 or v_motif_size < 1:
        raise ValueError(f"k_motif_size and v_motif_size must be >= 1, got {k_motif_size}, {v_motif_size}")
    K = (vocab_size - 1) // 2
    V0, NV = K, vocab_size - 1 - K  # value tokens [V0, V0 + NV)
    if K < k_motif_size or NV < v_motif_size:
        raise ValueError(f"vocab_size={vocab_size} is too small for motifs of {k_motif_size} key and "
                         f"{v_motif_size} value distinct tokens (keys from {K}, values from {NV} tokens)")
    pair_max = k_motif_size + v_motif_size
    budget = seq_len - 2 * pair_max  # MAD: fill while the length stays below seq_len - probe - one pair
    if budget < 1:
        raise ValueError(f"seq_len={seq_len} must exceed 2 * (k_motif_size + v_motif_size) = {2 * pair_max}")
    gen, N = _generator(seed, split), num_examples
    M = budget // 2 + 2  # candidate pairs: more than can fit (the shortest pair has 2 tokens)
    if split == "train":
        k_size = torch.randint(1, k_motif_size + 1, (N, M), generator=gen)
    else:
        k_size = torch.full((N, M), k_motif_size)
    v_size = torch.randint(1, v_motif_size + 1, (N, M), generator=gen)
    k_tok = torch.stack([_random_subsets(N, K, k_motif_size, gen) for _ in range(M)], 1)  # (N, M, kmax)
    v_tok = torch.stack([_random_subsets(N, NV, v_motif_size, gen) for _ in range(M)], 1) + V0  # (N, M, vmax)
    slot = torch.arange(k_motif_size)
    k_tok = torch.where(slot < k_size.unsqueeze(-1), k_tok, -1)  # unused key slots -1: the key's identity
    same = (k_tok.unsqueeze(2) == k_tok.unsqueeze(1)).all(-1)  # (N, M, M) pair i has pair j's key
    first = same.float().argmax(2)  # (N, M) first pair with the same key (itself when new)
    v_tok = v_tok.gather(1, first.unsqueeze(-1).expand_as(v_tok))  # a repeated key keeps its first value
    v_size = v_size.gather(1, first)
    repeat = first < torch.arange(M)  # (N, M)
    length = k_size + v_size  # (N, M)
    end = length.cumsum(1)
    kept = (end - length) < budget  # MAD's fill loop: add a pair while the sequence is shorter than the budget
    n_kept = kept.sum(1)  # (N,) >= 1
    probe = (torch.rand(N, M, generator=gen) * kept).argmax(1)  # (N,) uniform among kept pairs
    # Append the probe as pair number n_kept (overwriting the first unkept candidate).
    rows = torch.arange(N)
    for t in (k_tok, v_tok):
        t[rows, n_kept] = t[rows, probe]
    k_size[rows, n_kept], v_size[rows, n_kept] = k_size[rows, probe], v_size[rows, probe]
    repeat[rows, n_kept] = True
    kept[rows, n_kept] = True
    length = torch.where(kept, k_size + v_size, 0)
    total = length.sum(1)  # (N,) <= seq_len
    start = seq_len - total.unsqueeze(1) + length.cumsum(1) - length  # (N, M) left-padded start of each pair
    # Pair-local layout [key tokens, value tokens], scattered into the row.
    local = torch.arange(pair_max)
    ks = k_size.unsqueeze(-1)
    in_key = local < ks
    valid = (local < ks + v_size.unsqueeze(-1)) & kept.unsqueeze(-1)  # (N, M, pair_max)
    tok = torch.where(in_key, k_tok.clamp(min=0).gather(2, local.clamp(max=k_motif_size - 1).expand(N, M, -1)),
                      v_tok.gather(2, (local - ks).clamp(0, v_motif_size - 1)))
    lab = torch.where(~in_key & repeat.unsqueeze(-1), tok, IGNORE_INDEX)
    pos = torch.where(valid, start.unsqueeze(-1) + local, seq_len)  # seq_len: a dump column
    input_ids = torch.full((N, seq_len + 1), vocab_size - 1, dtype=torch.long)
    labels = torch.full((N, seq_len + 1), IGNORE_INDEX, dtype=torch.long)
    input_ids.scatter_(1, pos.reshape(N, -1), tok.reshape(N, -1))
    labels.scatter_(1, pos.reshape(N, -1), lab.reshape(N, -1))
    return {"input_ids": input_ids[:, :seq_len].contiguous(), "labels": labels[:, :seq_len].contiguous()}


# ---------------------------------------------------------------------------------------------- selective copying

def generate_selective_copying(num_examples: int, vocab_size: int = 16, seq_len: int = 256,
                               num_tokens_to_copy: int = 16, seed: int = 0,
                               split: str = "train") -> dict[str, torch.Tensor]:
    """Copy the non-blank tokens of a noisy prefix, in order, after a copy token.

    Tokens to copy: C = ``num_tokens_to_copy`` uniform tokens from [0, vocab_size - 2), placed in order at C random
    positions of a prefix of ``seq_len - C - 1`` tokens whose other positions hold the blank ``vocab_size - 2``;
    then the copy token ``vocab_size - 1`` and C + 1 blanks (MAD's C answer positions plus the filler).
    The logits at the j-th blank after the copy token predict the j-th token to copy (MAD's alignment).

    Returns ``{"input_ids", "labels"}`` (N, seq_len + 1): labels at positions ``seq_len - C + 1 + j``.
    """
    _check(num_examples, seq_len, vocab_size)
    C = num_tokens_to_copy
    if vocab_size < 3:
        raise ValueError(f"vocab_size must be >= 3 (content, blank and copy tokens), got {vocab_size}")
    if C < 1 or seq_len <= 2 * C + 1:
        raise ValueError(f"need 1 <= num_tokens_to_copy and seq_len > 2 * num_tokens_to_copy + 1, got "
                         f"num_tokens_to_copy={C}, seq_len={seq_len}")
    gen, N = _generator(seed, split), num_examples
    blank, copy = vocab_size - 2, vocab_size - 1
    prefix = seq_len - C - 1
    to_copy = torch.randint(0, vocab_size - 2, (N, C), generator=gen)
    where = _random_subsets(N, prefix, C, gen).sort(1).values  # (N, C) increasing positions: order kept
    input_ids = torch.full((N, seq_len + 1), blank, dtype=torch.long)
    input_ids[:, :prefix].scatter_(1, where, to_copy)
    input_ids[:, prefix] = copy
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, prefix + 2:] = to_copy
    return {"input_ids": input_ids, "labels": labels}


# ---------------------------------------------------------------------------------------------- compression

def generate_compression(num_examples: int, vocab_size: int = 16, seq_len: int = 32, seed: int = 0,
                         split: str = "train") -> dict[str, torch.Tensor]:
    """MAD's compression: ``x_1 .. x_{L-1} z`` (L = seq_len, z = ``vocab_size - 1``, x uniform over
    [0, vocab_size - 1)), to be reproduced whole from the model's output at z alone (an encoder-decoder:
    ``lit_modules.mad.MADCompressionModule``).  As in MAD every position is scored, z included.

    Returns ``{"input_ids", "targets"}`` (N, L), ``targets == input_ids``: ``targets[:, i]`` is what the decoder
    predicts at position i (not the causal-LM ``labels`` of the other tasks).
    """
    _check(num_examples, seq_len, vocab_size)
    gen, N, L = _generator(seed, split), num_examples, seq_len
    input_ids = torch.full((N, L), vocab_size - 1, dtype=torch.long)
    input_ids[:, :L - 1] = torch.randint(0, vocab_size - 1, (N, L - 1), generator=gen)
    return {"input_ids": input_ids, "targets": input_ids.clone()}


# ---------------------------------------------------------------------------------------------- memorization

def memorization_map(vocab_size: int = 256, map_seed: int = 12345) -> torch.Tensor:
    """The fixed key-to-value map: (K,) values of keys 0..K-1, K = (vocab_size - 1) // 2, distinct values from
    [K, vocab_size - 1). Depends on (vocab_size, map_seed) only."""
    K = (vocab_size - 1) // 2
    if K < 1:
        raise ValueError(f"vocab_size must be >= 3 for memorization (a key, a value, the insert token), got "
                         f"{vocab_size}")
    gen = torch.Generator().manual_seed(int(map_seed))
    return torch.randperm(vocab_size - 1 - K, generator=gen)[:K] + K


def generate_memorization(num_examples: int, vocab_size: int = 256, seq_len: int = 32, map_seed: int = 12345,
                          seed: int = 0, split: str = "train") -> dict[str, torch.Tensor]:
    """Facts learned into the weights: ``k_1 i k_2 i ... k_P i`` (P = seq_len / 2, i = ``vocab_size - 1``), keys
    uniform over the K keys of :func:`memorization_map`; the logits at each insert token predict the value of the
    key before it. The map is the same in every split; only the key draws depend on (seed, split).

    Returns ``{"input_ids", "labels"}`` (N, seq_len + 1) (a trailing insert token as filler): ``labels[2 p + 2]``
    is the value of key ``input_ids[2 p]``.
    """
    _check(num_examples, seq_len, vocab_size)
    if seq_len % 2:
        raise ValueError(f"seq_len must be even (key, insert-token pairs), got {seq_len}")
    kv = memorization_map(vocab_size, map_seed)
    gen, N, P = _generator(seed, split), num_examples, seq_len // 2
    keys = torch.randint(0, kv.numel(), (N, P), generator=gen)
    input_ids = torch.full((N, seq_len + 1), vocab_size - 1, dtype=torch.long)
    input_ids[:, 0:seq_len:2] = keys
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, 2::2] = kv[keys]
    return {"input_ids": input_ids, "labels": labels}


# ---------------------------------------------------------------------------------------------- by name

TASKS = {
    "in_context_recall": (generate_in_context_recall, ("vocab_size", "seq_len", "noise_vocab_size", "frac_noise")),
    "fuzzy_in_context_recall": (generate_fuzzy_in_context_recall,
                                ("vocab_size", "seq_len", "k_motif_size", "v_motif_size")),
    "noisy_in_context_recall": (generate_noisy_in_context_recall,
                                ("vocab_size", "seq_len", "noise_vocab_size", "frac_noise")),
    "selective_copying": (generate_selective_copying, ("vocab_size", "seq_len", "num_tokens_to_copy")),
    "compression": (generate_compression, ("vocab_size", "seq_len")),
    "memorization": (generate_memorization, ("vocab_size", "seq_len", "map_seed")),
}
RECALL_TASKS = ("in_context_recall", "fuzzy_in_context_recall", "noisy_in_context_recall")


def generate_task(task: str, num_examples: int, seed: int, split: str, **settings: Any) -> dict[str, torch.Tensor]:
    """``generate_<task>`` by name with the settings it takes (the others in ``settings`` are ignored)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    fn, names = TASKS[task]
    return fn(num_examples, **{k: settings[k] for k in names if k in settings}, seed=seed, split=split)


class MADDataModule(_Base):
    """One MAD task's seeded train and test sets (different splits of one seed, so they differ).

    Args:
        task: one of :data:`TASKS`.
        vocab_size, seq_len, noise_vocab_size, frac_noise, num_tokens_to_copy, k_motif_size, v_motif_size,
            map_seed: the task's settings (each generator takes its own; see ``generate_<task>``).
        num_train_examples / num_test_examples: set sizes; the train set is reshuffled every epoch.
        seed: data seed; train uses (seed, "train"), test (seed, "test").
        shuffle_seed: seed of the train order (`EpochShuffle`: a new order every epoch that depends on (seed, epoch)
            alone, so Lightning and `lit_modules.fast_loop` see the same batches); None takes
            ``torch.initial_seed()`` when the DataModule is built, i.e. the run's ``seed``.
        train_all_tokens: recall tasks only: train on every next token as MAD does (its training targets are the
            shifted inputs); the test set always scores only the task's positions.
        batch_size: sequences per batch; num_workers: DataLoader workers (0: the tensors are in memory).
    """

    def __init__(self, task: str = "in_context_recall", vocab_size: int = 16, seq_len: int = 128,
                 num_train_examples: int = 12_800, num_test_examples: int = 1_280, noise_vocab_size: int = 0,
                 frac_noise: float = 0.0, num_tokens_to_copy: int = 16, k_motif_size: int = 3,
                 v_motif_size: int = 3, map_seed: int = 12345, seed: int = 0, train_all_tokens: bool = True,
                 batch_size: int = 128, num_workers: int = 0, device: str = "auto",
                 shuffle_seed: Optional[int] = None):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
        for name, n in (("num_train_examples", num_train_examples), ("num_test_examples", num_test_examples),
                        ("batch_size", batch_size)):
            if n < 1:
                raise ValueError(f"{name} must be >= 1, got {n}")
        self.task = task
        self.settings = dict(vocab_size=vocab_size, seq_len=seq_len, noise_vocab_size=noise_vocab_size,
                             frac_noise=frac_noise, num_tokens_to_copy=num_tokens_to_copy,
                             k_motif_size=k_motif_size, v_motif_size=v_motif_size, map_seed=map_seed)
        self.num_train_examples, self.num_test_examples = num_train_examples, num_test_examples
        self.seed, self.train_all_tokens = seed, train_all_tokens
        self.batch_size, self.num_workers = batch_size, num_workers
        self.device = resolve_device(device)
        self.shuffle_seed = int(torch.initial_seed() if shuffle_seed is None else shuffle_seed) % 2**31
        self._epoch = 0  # the epoch whose order the next train loader serves
        self.train_set: Optional[dict[str, torch.Tensor]] = None
        self.test_set: Optional[dict[str, torch.Tensor]] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is None:
            self.train_set = generate_task(self.task, self.num_train_examples, self.seed, "train", **self.settings)
            if self.train_all_tokens and self.task in RECALL_TASKS:
                self.train_set["labels"] = self.train_set["input_ids"].clone()
            self.train_set = {k: v.to(self.device) for k, v in self.train_set.items()}
        if self.test_set is None:
            self.test_set = {k: v.to(self.device) for k, v in
                             generate_task(self.task, self.num_test_examples, self.seed, "test", **self.settings).items()}

    def _loader(self, tensors: dict[str, torch.Tensor], shuffle: bool) -> DataLoader:
        n = next(iter(tensors.values())).shape[0]
        return epoch_loader(tensors, self.batch_size, self.shuffle_seed if shuffle else None, self._epoch,
                            self.num_workers, drop_last=shuffle and n >= self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next `train_dataloader` serve epoch `epoch`'s order (Lightning also sets it on the sampler)."""
        self._epoch = int(epoch)

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            self.set_epoch(trainer.current_epoch)  # also right after a resume into a later epoch
        self.setup()
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.test_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
