"""Readable PyTorch form of the fused short convolution (the reference of ``short_conv.py``'s kernels).

    y_t = sum_{j<W} w[:, j] * x_{t - (W-1) + j}     depthwise causal convolution, taps before a sequence start are 0
    a_t = act(y_t)                                  silu | relu | elu + 1 | identity
    o_t = a_t / max(||a_t||_2, eps)                 per group of ``norm_dim`` channels (one head), when given
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["ACTIVATIONS", "activation_fn", "naive_short_conv"]

ACTIVATIONS = ("identity", "silu", "relu", "elu")  # "elu" is elu(x) + 1 (a positive feature map)
NORM_EPS = 1e-6


def activation_fn(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "silu":
        return F.silu(x)
    if name == "relu":
        return F.relu(x)
    if name == "elu":
        return F.elu(x) + 1.0
    if name == "identity":
        return x
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def _positions(cu_seqlens: Optional[torch.Tensor], B: int, T: int, device) -> torch.Tensor:
    """(B, T) position of every token inside its sequence."""
    idx = torch.arange(T, device=device)
    if cu_seqlens is None:
        return idx.expand(B, T)
    cu = cu_seqlens.to(device=device, dtype=torch.long)
    seq = torch.searchsorted(cu[1:], idx, right=True)
    return (idx - cu[seq])[None]


def naive_short_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    activation: str = "identity",
    norm_dim: Optional[int] = None,
    cu_seqlens: Optional[torch.Tensor] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """x: (B, T, D); weight: (D, W); initial_state: (B, D, W - 1), the inputs before x (zeros if None; not with
    cu_seqlens).  Computes in x's dtype.  Returns (o (B, T, D), final state (B, D, W - 1) or None)."""
    B, T, D = x.shape
    W = weight.shape[-1]
    w = weight.reshape(D, W).to(x.dtype)
    prefix = x.new_zeros(B, W - 1, D) if initial_state is None else initial_state.to(x.dtype).transpose(1, 2)
    xp = torch.cat([prefix, x], 1)  # (B, W - 1 + T, D)
    pos = _positions(cu_seqlens, B, T, x.device)  # (B, T)
    y = torch.zeros_like(x)
    for j in range(W):
        shift = W - 1 - j  # tap j reads x_{t - shift}
        tap = xp[:, j:j + T]
        if cu_seqlens is not None:
            tap = tap * (pos >= shift).to(x.dtype)[..., None]
        y = y + tap * w[:, j]
    a = activation_fn(y, activation)
    if norm_dim is not None:
        a = F.normalize(a.view(B, T, D // norm_dim, norm_dim), p=2.0, dim=-1, eps=NORM_EPS).view(B, T, D)
    final = xp[:, xp.shape[1] - (W - 1):].transpose(1, 2).contiguous() if output_final_state else None
    return a, final
