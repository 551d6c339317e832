"""RMSNorm (computed in float32, cast back to the input dtype), optionally with a residual add or an output gate;
HeadGroupNorm, a GroupNorm with one group per head (RetNet's output norm).

``fused=True`` runs the Triton kernel of ``kernels/norm`` (one pass, saves the sum and one rstd per row); the plain
form below is the CPU path and the reference the tests hold it to.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from kernels.norm import rms_norm

__all__ = ["HeadGroupNorm", "RMSNorm", "autocast_dtype"]


def autocast_dtype(x: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype autocast casts matmul inputs to on x's device, or None outside autocast."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None, gate: Optional[torch.Tensor] = None,
                fused: bool = False):
        """x: (..., dim).  With ``residual`` (..., dim): normalises s = x + residual and returns (y, s).  With
        ``gate`` (..., dim): returns RMSNorm(x) * silu(gate).  Fused, y comes out in the autocast dtype when autocast
        is on (the same numbers as the float32 result cast by the next matmul)."""
        if fused:
            out = autocast_dtype(x) if gate is None else None
            return rms_norm(x, self.weight, self.eps, residual=residual, gate=gate, out_dtype=out)
        s = x if residual is None else x + residual
        sf = s.float()
        y = sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + self.eps)
        y = (y * self.weight.float()).to(s.dtype)
        if gate is not None:
            y = y * F.silu(gate)
        return y if residual is None else (y, s)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class HeadGroupNorm(nn.Module):
    """GroupNorm over the ``num_heads * head_dim`` channels of a multi-head output with one group per head (RetNet's
    ``GroupNorm_h``, Sun et al., 2023): each head's outputs of one token are normalised by their own mean and
    variance, ``(x - mean) / sqrt(var + eps)``, then scaled and shifted per channel (weight and bias of
    ``num_heads * head_dim``).  Computed in float32 (``F.group_norm``), cast back to the input dtype."""

    def __init__(self, num_heads: int, head_dim: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads, self.head_dim, self.eps = num_heads, head_dim, eps
        self.weight = nn.Parameter(torch.ones(num_heads * head_dim))
        self.bias = nn.Parameter(torch.zeros(num_heads * head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., num_heads, head_dim) -> the same shape and dtype."""
        shape = x.shape
        if tuple(shape[-2:]) != (self.num_heads, self.head_dim):
            raise ValueError(f"HeadGroupNorm({self.num_heads}, {self.head_dim}) got input of shape {tuple(shape)}")
        y = F.group_norm(x.reshape(-1, self.num_heads * self.head_dim).float(), self.num_heads,
                         self.weight.float(), self.bias.float(), self.eps)
        return y.view(shape).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_heads} heads of {self.head_dim}, eps={self.eps}"
