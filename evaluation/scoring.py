"""Log-probabilities of token continuations, batched by length: the one scoring path of the evaluation.

``continuation_logprobs(model, requests)`` takes requests ``(input_ids, targets)``: ``input_ids`` is the list of tokens
the model reads, ``targets`` the tokens that its *last* ``len(targets)`` positions must predict (so
``input_ids[-len(targets) + 1:] == targets[:-1]``).  It returns, for each request, the summed log-probability of the
targets and whether greedy decoding would have produced every one of them.

Batching: requests are sorted by length (longest first) and packed into batches of at most ``batch_size`` rows and
``max_batch_tokens`` padded tokens.  Rows are padded on the right: every family is causal (delta rule, short
convolution and attention all look only backwards), so padding after a row's tokens changes none of its outputs.
Only the positions that predict a target go through the LM head, in float32 log-softmax, so memory holds the hidden
states (B, T, C), not (B, T, vocab) logits.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

__all__ = ["autocast", "continuation_logprobs", "length_batches", "resolve_device", "resolve_dtype", "token_nll"]

_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
           "float32": torch.float32, "fp32": torch.float32}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` / ``"auto"``: CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Compute dtype. ``"auto"``: bfloat16 autocast on CUDA (the chunk kernel's training precision), float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for a half dtype (weights stay float32, as in training), nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def length_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches, longest first: at most ``batch_size`` rows and (rows x longest) <= the budget.

    A single row longer than ``max_batch_tokens`` still gets a batch of its own.
    """
    if batch_size < 1 or max_batch_tokens < 1:
        raise ValueError(f"batch_size and max_batch_tokens must be >= 1, got {batch_size}, {max_batch_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches:
            b = batches[-1]
            longest = lengths[b[0]]  # sorted: the first row is the longest
            if len(b) < batch_size and (len(b) + 1) * longest <= max_batch_tokens:
                b.append(i)
                continue
        batches.append([i])
    return batches


def _hidden(model, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) -> final hidden states (B, T, C) (after the last norm, before the LM head)."""
    h, _ = model.model(input_ids)
    return h


@torch.no_grad()
def continuation_logprobs(model, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *, batch_size: int = 32,
                          max_batch_tokens: int = 65536, device: torch.device | None = None,
                          dtype: torch.dtype = torch.float32, progress: bool = False,
                          desc: str = "scoring", head_chunk: int = 8192) -> list[tuple[float, bool]]:
    """Summed log-probability of each request's targets, and whether they are the greedy tokens.

    Args:
        model: a :class:`deltanet.DeltaNetForCausalLM` (or anything with ``.model`` returning hidden states and
            ``.lm_head``), in eval mode, on ``device``.
        requests: ``(input_ids, targets)`` pairs of int lists; ``1 <= len(targets) <= len(input_ids)``.
        batch_size: most rows per forward pass.
        max_batch_tokens: most padded tokens (rows x longest row) per forward pass.
        device: where the model is (default: the model's parameters' device).
        dtype: compute dtype (float32, or bfloat16 / float16 under autocast).
        progress: show a tqdm progress bar over requests.
        head_chunk: scored positions per LM-head call (bounds the float32 (positions, vocab) logits: 8192 x 32000
            x 4 bytes = 1 GiB).

    Returns:
        ``[(logprob: float, is_greedy: bool)]`` in the order of ``requests``.
    """
    if device is None:
        device = next(model.parameters()).device
    for inp, tgt in requests:
        if not 1 <= len(tgt) <= len(inp):
            raise ValueError(f"each request needs 1 <= len(targets) <= len(input_ids), got {len(tgt)} and {len(inp)}")
    lengths = [len(inp) for inp, _ in requests]
    out: list[tuple[float, bool] | None] = [None] * len(requests)
    bar = tqdm(total=len(requests), desc=desc, disable=not progress)
    for batch in length_batches(lengths, batch_size, max_batch_tokens):
        T = lengths[batch[0]]
        ids = torch.zeros((len(batch), T), dtype=torch.long)
        rows, cols, targets = [], [], []
        for r, i in enumerate(batch):
            inp, tgt = requests[i]
            ids[r, :len(inp)] = torch.as_tensor(list(inp), dtype=torch.long)
            n = len(tgt)
            rows += [r] * n
            cols += range(len(inp) - n, len(inp))
            targets += list(tgt)
        ids = ids.to(device)
        with autocast(device, dtype):
            h = _hidden(model, ids)  # (B, T, C)
        sel = h[torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)]  # (n, C)
        tgt = torch.as_tensor(targets, device=device)
        tok_lp = torch.empty(len(targets), dtype=torch.float64)
        greedy = torch.empty(len(targets), dtype=torch.bool)
        for s in range(0, len(targets), head_chunk):  # (head_chunk, vocab) float32 logits at a time
            with autocast(device, dtype):
                logits = model.lm_head(sel[s:s + head_chunk])
            logp = F.log_softmax(logits.float(), dim=-1)
            t = tgt[s:s + head_chunk]
            tok_lp[s:s + head_chunk] = logp.gather(-1, t[:, None])[:, 0].double().cpu()
            greedy[s:s + head_chunk] = (logp.argmax(-1) == t).cpu()
        start = 0
        for i in batch:
            n = len(requests[i][1])
            out[i] = (float(tok_lp[start:start + n].sum()), bool(greedy[start:start + n].all()))
            start += n
        bar.update(len(batch))
    bar.close()
    return out  # type: ignore[return-value]


@torch.no_grad()
def token_nll(model, input_ids: torch.Tensor, dtype: torch.dtype = torch.float32,
              head_chunk: int = 4096) -> torch.Tensor:
    """Per-token negative log-likelihood of a batch of full rows: (B, T) -> (B, T - 1) float32.

    ``out[b, t]`` is ``-log p(input_ids[b, t + 1] | input_ids[b, :t + 1])``.  The LM head runs over ``head_chunk``
    positions at a time, so a 32K-token row never materialises (T, vocab) logits at once.
    """
    device = input_ids.device
    with autocast(device, dtype):
        h = _hidden(model, input_ids)[:, :-1]  # (B, T-1, C)
    B, Tm1, C = h.shape
    flat_h, flat_t = h.reshape(-1, C), input_ids[:, 1:].reshape(-1)
    nll = torch.empty(flat_t.numel(), dtype=torch.float32, device=device)
    for s in range(0, flat_t.numel(), head_chunk):
        with autocast(device, dtype):
            logits = model.lm_head(flat_h[s:s + head_chunk])
        nll[s:s + head_chunk] = F.cross_entropy(logits.float(), flat_t[s:s + head_chunk], reduction="none")
    return nll.view(B, Tm1)
