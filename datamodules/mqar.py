"""Multi-query associative recall (MQAR), as in Zoology (Arora et al. 2023), generated vectorised in PyTorch.

One example of length T with P key-value pairs (vocabulary V):

    k_1 v_1 k_2 v_2 ... k_P v_P | x x k_3 x x x k_1 x ... x        (x = random noise token, or 0)
    <------- context: 2P ------> <------- query region: T - 2P ----->

- keys are drawn without replacement from [1, V/2), values without replacement from [V/2, V) (disjoint ranges);
- every key is queried exactly once, at an even offset 2g of the query region; the gaps g are drawn without
  replacement from g in [0, (T - 2P)/2) with Zoology's power law p(g) ~ (g + 1)^(a - 1), a = 0.01 (small gaps
  are much more likely: a query tends to come soon after the context);
- the answer to the query at position t is the key's value. Labels follow the project's (Hugging Face) convention,
  aligned with input_ids and shifted inside the model: ``labels[t + 1] = value`` (what the logits at t must
  predict), -100 everywhere else, so the loss and accuracy cover the query positions only;
- with ``random_non_queries`` the rest of the query region is uniform noise from [0, V), as in Zoology.

Zoology samples with NumPy row by row; here the weighted sampling without replacement is the Gumbel-top-k trick
(exactly the same distribution as successive sampling, ``np.random.choice(replace=False, p=p)``), run on whole
blocks of rows at once, on any device.  A (seed, device) pair determines the data; CPU and CUDA streams differ.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

try:  # the generator works without Lightning; the DataModule needs it
    import lightning as L
    _Base = L.LightningDataModule
except ImportError:  # pragma: no cover
    _Base = object

__all__ = ["generate_mqar", "power_law_probs", "answer_index", "MQARDataset", "EpochShuffle", "MQARDataModule"]

IGNORE_INDEX = -100


def power_law_probs(space: int, power_a: float = 0.01) -> torch.Tensor:
    """Zoology's gap distribution over g = 0..space-1: p(g) = a (g + 1)^(a - 1), normalised. a = 1 is uniform."""
    g = torch.arange(1, space + 1, dtype=torch.float64)
    p = power_a * g ** (power_a - 1.0)
    return p / p.sum()


def _topk_without_replacement(logits: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of k draws without replacement from softmax(logits) per row (Gumbel-top-k); order is random."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    gumbel = -torch.log(-torch.log(u.clamp_(1e-30, 1.0 - 1e-7)))
    return torch.topk(logits + gumbel, k, dim=-1, sorted=False).indices


def _distinct_uniform(n: int, k: int, low: int, high: int, generator: torch.Generator,
                      device: torch.device) -> torch.Tensor:
    """(n, k) integers from [low, high), distinct within each row, uniform over k-subsets (random order).

    Draw with replacement, then redraw the repeated slots until none is left: the procedure commutes with any
    relabelling of [low, high), so every k-subset is equally likely.  For k << high - low it costs O(n k log k),
    not the O(n (high - low)) of sorting random keys over the whole range."""
    x = torch.randint(low, high, (n, k), generator=generator, device=device)
    while True:
        s, order = torch.sort(x, dim=1, stable=True)
        rep_sorted = torch.zeros_like(s, dtype=torch.bool)
        rep_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
        if not bool(rep_sorted.any()):
            return x
        rep = torch.zeros_like(rep_sorted).scatter_(1, order, rep_sorted)
        x[rep] = torch.randint(low, high, (int(rep.sum()),), generator=generator, device=device)


def generate_mqar(
    num_examples: int,
    seq_len: int = 512,
    num_kv_pairs: int = 64,
    vocab_size: int = 8192,
    power_a: float = 0.01,
    random_non_queries: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    block_size: int = 8192,
) -> dict[str, torch.Tensor]:
    """Generate ``num_examples`` MQAR sequences.

    Returns ``{"input_ids": (N, T) long, "labels": (N, T) long (-100 but at query answers),
    "query_pos": (N, P) long (positions of the query keys; the answer is ``labels[n, query_pos + 1]``)}``.
    Rows are generated in blocks of ``block_size`` rows.
    """
    T, P, V = seq_len, num_kv_pairs, vocab_size
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    if T % 2:
        raise ValueError(f"seq_len must be even, got {T}")
    if P < 1 or 4 * P > T:
        raise ValueError(f"need 1 <= num_kv_pairs and 4 * num_kv_pairs <= seq_len, got P={P}, T={T}")
    if V <= T or V // 2 - 1 < P:
        raise ValueError(f"vocab_size={V} must exceed seq_len={T} and hold {P} distinct keys in [1, V/2)")
    if not power_a > 0:
        raise ValueError(f"power_a must be positive, got {power_a}")
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    context = 2 * P
    space = (T - context) // 2  # candidate query slots: even offsets of the query region
    gap_logits = power_law_probs(space, power_a).log().float().to(device)  # (space,)

    input_ids = torch.empty(num_examples, T, dtype=torch.long, device=device)
    labels = torch.full((num_examples, T), IGNORE_INDEX, dtype=torch.long, device=device)
    query_pos = torch.empty(num_examples, P, dtype=torch.long, device=device)
    for start in range(0, num_examples, block_size):
        n = min(block_size, num_examples - start)
        keys = _distinct_uniform(n, P, 1, V // 2, gen, device)  # (n, P) in [1, V/2)
        values = _distinct_uniform(n, P, V // 2, V, gen, device)  # (n, P) in [V/2, V)
        gaps = _topk_without_replacement(gap_logits.expand(n, -1), P, gen)  # (n, P) distinct, power law
        qpos = context + 2 * gaps  # (n, P), <= T - 2
        if random_non_queries:
            x = torch.randint(0, V, (n, T), generator=gen, device=device)
        else:
            x = torch.zeros(n, T, dtype=torch.long, device=device)
        x[:, 0:context:2] = keys
        x[:, 1:context:2] = values
        x.scatter_(1, qpos, keys)  # the i-th key is queried at qpos[:, i]
        y = labels[start:start + n]
        y.scatter_(1, qpos + 1, values)  # the logits at qpos predict labels[qpos + 1]
        input_ids[start:start + n] = x
        query_pos[start:start + n] = qpos
    return {"input_ids": input_ids, "labels": labels, "query_pos": query_pos}


def generate_mqar_mixture(
    num_examples: int, seq_len: int, kv_pairs: Sequence[int], seed: int, **kwargs: Any
) -> dict[str, torch.Tensor]:
    """Equal shares of several pair counts at one sequence length (Zoology trains on such mixtures), shuffled.

    ``query_pos`` is dropped: its width differs between shares (use ``labels != -100``)."""
    kv_pairs = list(kv_pairs)
    sizes = [num_examples // len(kv_pairs) + (i < num_examples % len(kv_pairs)) for i in range(len(kv_pairs))]
    parts = [generate_mqar(n, seq_len, p, seed=seed * 1009 + i, **kwargs)
             for i, (n, p) in enumerate(zip(sizes, kv_pairs)) if n > 0]
    out = {k: torch.cat([d[k] for d in parts]) for k in ("input_ids", "labels")}
    device = out["input_ids"].device
    perm = torch.randperm(num_examples, generator=torch.Generator(device=device).manual_seed(seed), device=device)
    return {k: v[perm] for k, v in out.items()}


def answer_index(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """The labelled positions of every row with one fixed width P (the most labels any row has).

    labels: (N, T) long, aligned with input_ids. Returns ``answer_pos (N, P)``, the positions t whose logits
    predict ``labels[t + 1]``, in increasing order, and ``answer (N, P)``, those labels, ``ignore_index`` where a
    row has fewer than P (mixtures of pair counts); the padded slots point at position 0.
    """
    target = labels[:, 1:]  # (N, T-1)
    mask = target != ignore_index
    width = max(1, int(mask.sum(1).max()))
    order = torch.sort(mask.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :width]  # labelled first
    answer = target.gather(1, order)
    return order.masked_fill(answer == ignore_index, 0), answer


class MQARDataset(Dataset):
    """Rows of pre-generated tensors as dicts; ``__getitems__`` lets the DataLoader fetch a batch in one index.

    A row is ``{"input_ids": (T,), "labels": (T,), "answer_pos": (P,), "answer": (P,)}`` (see `answer_index`), or
    for rows with one target per position (MAD's compression) ``{"input_ids": (T,), "targets": (T,)}``.
    """

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = {k: v for k, v in tensors.items() if k in ("input_ids", "labels", "targets")}
        if "labels" in self.tensors:
            self.tensors["answer_pos"], self.tensors["answer"] = answer_index(self.tensors["labels"])
        self.n = next(iter(self.tensors.values())).shape[0]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}

    def __getitems__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(idx, dtype=torch.long)
        device = self.tensors["input_ids"].device
        if device.type == "cuda":  # from pinned memory the copy does not wait for the GPU's queue
            index = index.pin_memory().to(device, non_blocking=True)
        return {k: v[index] for k, v in self.tensors.items()}


def _identity(batch: Any) -> Any:
    return batch


class EpochShuffle(Sampler[int]):
    """A random order of ``range(n)`` that depends on (seed, epoch) alone, not on the global random state.

    Every iteration in one epoch gives the same order (Lightning starts the train iterator twice in an epoch whose
    loader it reloads), so any loop that sets the same epoch (`lit_modules.fast_loop`) sees the same batches.
    Lightning calls `set_epoch` at the start of each epoch.
    """

    def __init__(self, n: int, seed: int, epoch: int = 0):
        self.n, self.seed, self.epoch = n, int(seed), int(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())


def resolve_device(device: str) -> str:
    """A DataModule's ``device``: "auto" is CUDA when available, else CPU."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def epoch_loader(tensors: dict[str, torch.Tensor], batch_size: int, shuffle_seed: Optional[int], epoch: int,
                 num_workers: int, drop_last: bool) -> DataLoader:
    """Batches of ``MQARDataset(tensors)``: in `EpochShuffle`'s order of (shuffle_seed, epoch), or in order when
    ``shuffle_seed`` is None (the test sets)."""
    data = MQARDataset(tensors)
    sampler = EpochShuffle(len(data), shuffle_seed, epoch) if shuffle_seed is not None else None
    return DataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=num_workers,
                      collate_fn=_identity, persistent_workers=num_workers > 0)


class MQARDataModule(_Base):
    """Seeded MQAR train and test sets (Zoology: 100K train, 3K test; different seeds, so they differ).

    Args:
        vocab_size, seq_len, num_kv_pairs, power_a, random_non_queries: the task (see :func:`generate_mqar`).
        num_train_examples / num_test_examples: sizes; the train set is reshuffled every epoch.
        train_seed / test_seed: generator seeds of the two sets.
        train_kv_pairs: optional list of pair counts; the train set is then an equal mixture of them (the test set
            keeps ``num_kv_pairs``).
        shuffle_seed: seed of the train order (`EpochShuffle`, a new order every epoch); None takes
            ``torch.initial_seed()`` when the DataModule is built, i.e. the run's ``seed``.
        fresh_train_data: draw a new train set every epoch, seeded ``train_seed + 1000 * epoch`` (epoch 0 is the
            fixed set), instead of reshuffling Zoology's fixed one: with the fixed 100K set a width-64 model
            memorises it (train loss 0.003, test loss 0.40, benchmarks/results/mqar.md). Needs the Trainer to ask
            for a new loader every epoch: ``trainer.reload_dataloaders_every_n_epochs=1``.
        batch_size: micro-batch (sequences); num_workers: DataLoader workers (0: the tensors are in memory).
        device: where the sets are generated and kept: "auto" (CUDA when available: a GPU-resident set, batches
            are index gathers on the GPU, no host work per step; keep num_workers=0 then), "cpu" or "cuda".
    """

    def __init__(
        self,
        vocab_size: int = 8192,
        seq_len: int = 512,
        num_kv_pairs: int = 64,
        num_train_examples: int = 100_000,
        num_test_examples: int = 3_000,
        power_a: float = 0.01,
        random_non_queries: bool = True,
        train_seed: int = 0,
        test_seed: int = 1,
        train_kv_pairs: Optional[Iterable[int]] = None,
        fresh_train_data: bool = False,
        shuffle_seed: Optional[int] = None,
        batch_size: int = 128,
        num_workers: int = 0,
        device: str = "auto",
    ):
        super().__init__()
        if train_seed == test_seed:
            raise ValueError(f"train_seed and test_seed must differ (got {train_seed}): the test set must be unseen")
        self.vocab_size, self.seq_len, self.num_kv_pairs = vocab_size, seq_len, num_kv_pairs
        self.num_train_examples, self.num_test_examples = num_train_examples, num_test_examples
        self.power_a, self.random_non_queries = power_a, random_non_queries
        self.train_seed, self.test_seed = train_seed, test_seed
        self.train_kv_pairs = [int(p) for p in train_kv_pairs] if train_kv_pairs else None
        self.fresh_train_data = bool(fresh_train_data)
        self.shuffle_seed = int(torch.initial_seed() if shuffle_seed is None else shuffle_seed) % 2**31
        self._epoch = 0  # the epoch the next train loader serves (and whose set `train_set` holds when fresh)
        self.batch_size, self.num_workers, self.device = batch_size, num_workers, resolve_device(device)
        self.train_set: Optional[dict[str, torch.Tensor]] = None
        self.test_set: Optional[dict[str, torch.Tensor]] = None

    def _task(self) -> dict[str, Any]:
        return dict(vocab_size=self.vocab_size, power_a=self.power_a, random_non_queries=self.random_non_queries,
                    device=self.device)

    def _train_set(self, epoch: int) -> dict[str, torch.Tensor]:
        seed = self.train_seed + 1000 * epoch
        if self.train_kv_pairs:
            return generate_mqar_mixture(self.num_train_examples, self.seq_len, self.train_kv_pairs, seed=seed,
                                         **self._task())
        return generate_mqar(self.num_train_examples, self.seq_len, self.num_kv_pairs, seed=seed, **self._task())

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is None:
            self.train_set = self._train_set(self._epoch if self.fresh_train_data else 0)
        if self.test_set is None:
            self.test_set = generate_mqar(self.num_test_examples, self.seq_len, self.num_kv_pairs,
                                          seed=self.test_seed, **self._task())

    def _loader(self, tensors: dict[str, torch.Tensor], shuffle: bool) -> DataLoader:
        return epoch_loader(tensors, self.batch_size, self.shuffle_seed if shuffle else None, self._epoch,
                            self.num_workers, drop_last=shuffle)

    def set_epoch(self, epoch: int) -> None:
        """Make the next `train_dataloader` serve epoch `epoch`: its order, and with ``fresh_train_data`` its set."""
        if self.fresh_train_data and epoch != self._epoch:
            self.train_set = None
        self._epoch = int(epoch)

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            if self.fresh_train_data and trainer.reload_dataloaders_every_n_epochs != 1:
                raise ValueError("data.fresh_train_data=true draws a new train set per epoch and needs "
                                 "trainer.reload_dataloaders_every_n_epochs=1 (got "
                                 f"{trainer.reload_dataloaders_every_n_epochs}): the set would never change")
            self.set_epoch(trainer.current_epoch)  # also right after a resume into a later epoch
        self.setup()
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.test_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
