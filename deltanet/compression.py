"""MAD's compression task as an encoder-decoder (Poli et al. 2024; MAD-Lab's ``AutoEncoder``).

The backbone (any family's ``DeltaNetModel``) reads ``x_1 .. x_{L-1} z`` and only its output at the last position
z, one vector of the model width, is kept: the whole sequence must pass through it.  This decoder then predicts
every input token from that vector plus a fixed sin-cos position embedding of the token's position, with MAD's
non-expanding MLP:

    e = h_z + pos(i)                                              (C)
    e = GELU(W_2 RMSNorm(GELU(W_1 RMSNorm(e))))                   (C), W_1, W_2: C x C with bias
    logits_i = W_u RMSNorm(e)                                     (vocab), W_u with bias

The decoder is a model of its own next to the LM head, which this task does not use.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers.norm import RMSNorm

__all__ = ["CompressionDecoder", "sincos_positions"]


def sincos_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) float32 fixed position embeddings: sin of position * frequency in the first half, cos in the
    second, frequencies 10000^(-j / (dim / 2)) for j < dim / 2 (an odd dim leaves its last channel 0)."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half, 1))
    angle = torch.arange(length, dtype=torch.float32)[:, None] * freq[None, :]
    out = torch.zeros(length, dim)
    out[:, :half], out[:, half:2 * half] = torch.sin(angle), torch.cos(angle)
    return out


class CompressionDecoder(nn.Module):
    """Decodes ``length`` tokens from one encoding per row (module docstring).

    Args: hidden_size C; vocab_size; max_length, the longest sequence it decodes; eps of its RMSNorms.
    """

    def __init__(self, hidden_size: int, vocab_size: int, max_length: int, eps: float = 1e-6,
                 initializer_range: float = 0.02):
        super().__init__()
        self.max_length = max_length
        self.register_buffer("positions", sincos_positions(max_length, hidden_size), persistent=False)
        self.norm1, self.fc1 = RMSNorm(hidden_size, eps), nn.Linear(hidden_size, hidden_size)
        self.norm2, self.fc2 = RMSNorm(hidden_size, eps), nn.Linear(hidden_size, hidden_size)
        self.norm_out, self.unembed = RMSNorm(hidden_size, eps), nn.Linear(hidden_size, vocab_size)
        for lin in (self.fc1, self.fc2, self.unembed):
            nn.init.normal_(lin.weight, std=initializer_range)
            nn.init.zeros_(lin.bias)

    def forward(self, encoding: torch.Tensor, length: int) -> torch.Tensor:
        """encoding: (B, C) -> logits (B, length, vocab) float32."""
        if length > self.max_length:
            raise ValueError(f"CompressionDecoder: {length} positions, built for at most {self.max_length}")
        x = encoding[:, None, :] + self.positions[:length].to(encoding.dtype)  # (B, L, C)
        x = F.gelu(self.fc1(self.norm1(x)))
        x = F.gelu(self.fc2(self.norm2(x)))
        return self.unembed(self.norm_out(x)).float()
