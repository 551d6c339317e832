"""Readable PyTorch form of the fused RMSNorm (the reference of ``rms_norm.py``'s kernels).

    s = x + residual                      (when a residual is given; s is returned too: the new residual stream)
    y = s / sqrt(mean(s^2) + eps) * w     (over the last dimension, in float32)
    y = y * silu(gate)                    (when a gate is given: the DeltaNet output gate)
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ["naive_rms_norm"]


def naive_rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    residual: Optional[torch.Tensor] = None,
    gate: Optional[torch.Tensor] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """x, residual, gate: (..., C); weight: (C,).  Returns y, or (y, s) with a residual; both in s's dtype
    (the promotion of x's and residual's dtypes), computed in float32 (float64 for float64 inputs)."""
    s = x if residual is None else x + residual
    cd = torch.float64 if s.dtype == torch.float64 else torch.float32
    sf = s.to(cd)
    y = sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps) * weight.to(cd)
    if gate is not None:
        y = y * F.silu(gate.to(cd))
    y = y.to(s.dtype)
    return y if residual is None else (y, s)
