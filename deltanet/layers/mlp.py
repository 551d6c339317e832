"""SwiGLU feed-forward (Llama)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels.mlp import swiglu_linear

from .static import is_step_input, step_linear

__all__ = ["SwiGLU"]


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); no biases.

    ``fused=True``: the product and the down projection run as one autograd function that keeps only gate(x) and
    up(x) for the backward (kernels/mlp), instead of autograd's four (N, intermediate) activations."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, fused: bool = False) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        if fused and is_step_input(x):  # a decoding step
            return step_linear(step_linear(x, self.gate_proj.weight, self.up_proj.weight), self.down_proj.weight)
        if fused:
            return swiglu_linear(self.gate_proj(x), self.up_proj(x), self.down_proj.weight)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
