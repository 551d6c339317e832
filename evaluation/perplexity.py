"""Perplexities computed with the model's own loss, outside lm-eval.

- :func:`document_loglikelihood`: one document's log-likelihood in disjoint windows of ``context_length`` predicted
  tokens, BOS first: the quantity that lm-eval's rolling loglikelihood (Wikitext word perplexity) sums.
- :func:`validation_perplexity`: token-level perplexity of a prepared corpus split (the training corpus's
  ``validation`` token file), in the training windows of ``seq_len`` tokens: ``exp(sum NLL / predicted tokens)``.
- :func:`perplexity_by_position`: mean NLL at each position of long sequences (up to 32K tokens), binned; the
  length-extrapolation curve.  :func:`plot_perplexity_by_position` draws it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from evaluation.scoring import autocast, token_nll

__all__ = ["document_loglikelihood", "validation_perplexity", "perplexity_by_position", "plot_perplexity_by_position",
           "position_table_markdown"]


@torch.no_grad()
def document_loglikelihood(model, tokens: Sequence[int], bos_id: int, context_length: int,
                           dtype: torch.dtype = torch.float32) -> float:
    """log p(tokens | BOS) scored in windows of at most ``context_length`` input tokens.

    The stream ``[BOS] + tokens`` is predicted ``context_length`` tokens at a time, each window seeing no earlier
    context than its own tokens, except the last, shorter one, which reads the ``context_length`` tokens before its
    end (lm-eval's rolling windows: every token is predicted once, and the last window has a full context).
    Uses ``model(input_ids, labels=...).loss`` (the training loss path), not the evaluation's scoring path.
    """
    if context_length < 1:
        raise ValueError(f"context_length must be >= 1, got {context_length}")
    device = next(model.parameters()).device
    stream = torch.tensor([int(bos_id)] + [int(t) for t in tokens], device=device)
    n = stream.numel() - 1  # predicted tokens: stream[1..n]
    total = 0.0
    for a in range(1, n + 1, context_length):
        b = min(a + context_length - 1, n)  # this window predicts stream[a..b]
        piece = stream[max(0, b - context_length):b + 1][None]  # (1, <= context_length + 1)
        labels = piece.clone()
        labels[0, :piece.shape[1] - (b - a + 1)] = -100  # only stream[a..b] are scored
        with autocast(device, dtype):
            loss = model(piece, labels=labels).loss
        total -= float(loss) * (b - a + 1)
    return total


@torch.no_grad()
def validation_perplexity(model, tokens: np.ndarray, seq_len: int, batch_size: int = 8,
                          max_windows: int | None = None, dtype: torch.dtype = torch.float32,
                          progress: bool = True) -> dict[str, float]:
    """Token-level perplexity of a token stream read in consecutive windows of ``seq_len`` (the last partial window
    is left out, as in training's validation).

    Args:
        tokens: (N,) integer token ids (a memory-mapped split file is fine).
        seq_len: window length in tokens (each window predicts ``seq_len - 1`` tokens).
        batch_size: windows per forward pass.
        max_windows: evaluate only the first this many windows (None: all).

    Returns:
        ``{"loss": mean NLL in nats, "ppl": exp(loss), "tokens": predicted tokens, "windows": windows}``.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    n_windows = len(tokens) // seq_len
    if max_windows is not None:
        n_windows = min(n_windows, int(max_windows))
    if n_windows == 0:
        raise ValueError(f"{len(tokens)} tokens make no window of seq_len={seq_len}")
    device = next(model.parameters()).device
    nll_sum, count = 0.0, 0
    for s in tqdm(range(0, n_windows, batch_size), desc="validation perplexity", disable=not progress):
        w = range(s, min(s + batch_size, n_windows))
        x = torch.from_numpy(np.stack([np.asarray(tokens[i * seq_len:(i + 1) * seq_len], dtype=np.int64)
                                       for i in w])).to(device)
        nll = token_nll(model, x, dtype=dtype)
        nll_sum += float(nll.double().sum())
        count += nll.numel()
    loss = nll_sum / count
    return {"loss": loss, "ppl": math.exp(loss), "tokens": float(count), "windows": float(n_windows)}


@torch.no_grad()
def perplexity_by_position(model, tokens: np.ndarray, max_len: int = 32768, bin_size: int = 1024,
                           num_sequences: int | None = None, dtype: torch.dtype = torch.float32,
                           progress: bool = True) -> dict:
    """Mean NLL against position over ``num_sequences`` consecutive sequences of ``max_len`` tokens of one stream.

    Args:
        tokens: (N,) token ids of a long held-out text, N >= max_len (otherwise max_len shrinks to N).
        max_len: sequence length; position p is predicted from the p tokens before it in its sequence.
        bin_size: positions per row of the table.
        num_sequences: sequences to average over (None: as many as the stream holds).

    Returns:
        ``{"max_len", "sequences", "bins": [{"start", "end", "loss", "ppl"}], "loss_by_position": [float]}``.
    """
    if max_len < 2 or bin_size < 1:
        raise ValueError(f"need max_len >= 2 and bin_size >= 1, got {max_len}, {bin_size}")
    max_len = min(max_len, len(tokens))
    if max_len < 2:
        raise ValueError(f"the long file has {len(tokens)} tokens: too few for a perplexity curve")
    n = len(tokens) // max_len
    if num_sequences is not None:
        n = min(n, int(num_sequences))
    device = next(model.parameters()).device
    total = torch.zeros(max_len - 1, dtype=torch.float64)
    for i in tqdm(range(n), desc="perplexity by position", disable=not progress):
        x = torch.from_numpy(np.asarray(tokens[i * max_len:(i + 1) * max_len], dtype=np.int64))[None].to(device)
        total += token_nll(model, x, dtype=dtype)[0].double().cpu()
    mean = (total / n).tolist()  # index t: NLL of the token at position t + 1
    bins = []
    for start in range(0, max_len - 1, bin_size):
        chunk = mean[start:start + bin_size]
        loss = sum(chunk) / len(chunk)
        bins.append({"start": start + 1, "end": start + len(chunk), "loss": loss, "ppl": math.exp(loss)})
    return {"max_len": max_len, "sequences": n, "bin_size": bin_size, "bins": bins, "loss_by_position": mean}


def position_table_markdown(curve: dict) -> str:
    lines = [f"Perplexity by position: {curve['sequences']} sequence(s) of {curve['max_len']} tokens", "",
             "| positions | loss | ppl |", "| --- | ---: | ---: |"]
    lines += [f"| {b['start']}-{b['end']} | {b['loss']:.4f} | {b['ppl']:.2f} |" for b in curve["bins"]]
    return "\n".join(lines) + "\n"


def plot_perplexity_by_position(curve: dict, path: str | Path, title: str = "") -> Path:
    """PNG of the binned perplexity against position (log-scaled x axis)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [(b["start"] + b["end"]) / 2 for b in curve["bins"]]
    y = [b["ppl"] for b in curve["bins"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, y, marker="o", markersize=3)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("position (tokens)")
    ax.set_ylabel(f"perplexity (mean over {curve['bin_size']}-token bins)")
    ax.set_title(title or f"Perplexity by position ({curve['sequences']} x {curve['max_len']} tokens)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
