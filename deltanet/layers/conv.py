"""Depthwise causal short convolution with a cached-state step function."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from kernels.conv import short_conv

__all__ = ["ShortConvolution", "varlen_positions"]


def varlen_positions(cu_seqlens: torch.Tensor, T: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """For B = 1 packed batches: (sequence id, position inside its sequence) of every token, both (T,) long."""
    cu = cu_seqlens.to(dtype=torch.long)
    if cu.dim() != 1 or cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) != T or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"cu_seqlens must be non-decreasing from 0 to T={T}, got {cu.tolist()}")
    idx = torch.arange(T, device=cu.device)
    seq_id = torch.searchsorted(cu[1:], idx, right=True)  # (T,)
    return seq_id, idx - cu[seq_id]


class ShortConvolution(nn.Module):
    """Depthwise causal Conv1d over time (no bias, no activation), kernel ``kernel_size`` (4 in DeltaNet).

    ``forward(x, cache)`` with x: (B, T, D) and cache: (B, D, kernel_size - 1), the last inputs seen before x (zeros
    at the start).  Returns (y (B, T, D), new cache or None).  The same call does training, prefill and one-token
    decoding steps, so cached decoding is exactly the full convolution.
    """

    def __init__(self, dim: int, kernel_size: int = 4):
        super().__init__()
        self.dim, self.kernel_size = dim, kernel_size
        self.weight = nn.Parameter(torch.empty(dim, 1, kernel_size))  # (D, 1, W) as nn.Conv1d(groups=D)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv1d's default

    def forward(
        self,
        x: torch.Tensor,  # (B, T, D)
        cache: Optional[torch.Tensor] = None,  # (B, D, W - 1)
        output_final_state: bool = False,
        cu_seqlens: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        B, T, D = x.shape
        W = self.kernel_size
        if cu_seqlens is not None:
            if cache is not None or output_final_state:
                raise NotImplementedError("ShortConvolution: a cache with cu_seqlens is not supported")
            return self._varlen(x, cu_seqlens), None
        xt = x.transpose(1, 2)  # (B, D, T)
        prefix = xt.new_zeros(B, D, W - 1) if cache is None else cache.to(xt.dtype)
        xp = torch.cat([prefix, xt], dim=-1)  # (B, D, W - 1 + T)
        y = F.conv1d(xp, self.weight, groups=D)  # (B, D, T)
        new_cache = xp[..., xp.shape[-1] - (W - 1):] if output_final_state else None
        return y.transpose(1, 2), new_cache

    def step(self, x: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
        """One decoding token, in place: x (B, D), cache (B, D, W - 1) a static buffer -> y (B, D).  The window of
        the last W inputs is formed once, the output is its dot product with the taps (in float32, as F.conv1d
        accumulates), the cache becomes its tail."""
        window = torch.cat([cache, x.to(cache.dtype)[..., None]], dim=-1)  # (B, D, W)
        y = (window.float() * self.weight[:, 0, :].float()).sum(-1)
        cache.copy_(window[..., 1:])
        return y.to(x.dtype)

    def fused(self, x: torch.Tensor, activation: str = "identity", norm_dim: Optional[int] = None,
              cu_seqlens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Training path on CUDA: convolution, ``activation`` and (with ``norm_dim``) the per-head L2 norm in one
        Triton kernel that saves only x (kernels/conv); no cache.  x: (B, T, D) -> (B, T, D) in x's dtype."""
        return short_conv(x, self.weight, activation, norm_dim, cu_seqlens)

    def _varlen(self, x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """Packed sequences (B = 1): y_t = sum_j w[W-1-j] x_{t-j}, taps that cross a sequence start are dropped."""
        if x.shape[0] != 1:
            raise ValueError(f"with cu_seqlens the batch size must be 1, got x {tuple(x.shape)}")
        T, W = x.shape[1], self.kernel_size
        _, pos = varlen_positions(cu_seqlens.to(x.device), T)  # (T,)
        w = self.weight[:, 0, :].to(x.dtype)  # (D, W)
        y = x * w[:, W - 1]
        for j in range(1, W):
            shifted = F.pad(x, (0, 0, j, 0))[:, :T]  # x_{t-j}, zeros before 0
            y = y + shifted * w[:, W - 1 - j] * (pos >= j).to(x.dtype)[None, :, None]
        return y
