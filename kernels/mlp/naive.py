"""Readable PyTorch form of the SwiGLU tail (the reference of ``swiglu.py``):  y = (silu(g) * u) @ W^T."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["naive_swiglu_linear"]


def naive_swiglu_linear(g: torch.Tensor, u: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """g, u: (..., I); weight: (C, I) -> (..., C), in g's dtype."""
    return F.linear(F.silu(g) * u, weight.to(g.dtype))
