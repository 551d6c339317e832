"""Readable PyTorch form of the fused linear cross-entropy (the reference of ``linear_cross_entropy.py``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["naive_linear_cross_entropy"]


def naive_linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                               ignore_index: int = -100) -> torch.Tensor:
    """Mean over rows with ``labels != ignore_index`` of CE(h @ weight^T, labels).  h: (N, C); weight: (V, C);
    labels: (N,) long.  Logits in h's dtype, upcast to float32 (float64 stays float64).  0 when no row counts."""
    logits = F.linear(h, weight.to(h.dtype))
    logits = logits.double() if h.dtype == torch.float64 else logits.float()
    keep = labels != ignore_index
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum") / keep.sum()
