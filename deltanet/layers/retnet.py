"""RetNet's multi-scale retention (Sun et al., 2023, "Retentive Network") as a token mixer: linear attention with a
fixed decay per head.

Per head h, with state S ([K, V]), K = head_dim, V = retnet_value_factor * head_dim (the paper's 2, torchscale's
``value_factor``) and gamma_h = 1 - 2^(-5 - h) (the paper's multi-scale decays):
S_t = gamma_h S_{t-1} + k_t v_t^T,  o_t = K^-0.5 S_t^T q_t.

    q, k = W_q x, W_k x                               (B, T, H, K), no bias
    v    = W_v x                                      (B, T, H, V)
    q, k = RoPE(q), RoPE(k)                           (relative positions, as the paper's xPos without its decay)
    o    = retention(q, k, v, log gamma)              (kernels.chunk_simple_gla for training, recurrent for decoding)
    o    = GroupNorm_h(o) * silu(W_g x)               (one group per head over the H V channels; swish output gate)
    y    = W_o o                                      (H V -> hidden)

This is the paper's MSR: ``Y = GroupNorm_h(Concat(head_1, ..., head_h))``, ``MSR(X) = (swish(X W_G) * Y) W_O``.
GroupNorm normalises each head's outputs by their mean and variance and applies a per-channel weight and bias
(``retnet_norm="group"``); ``retnet_norm="rms"`` takes a per-head RMSNorm instead (no mean, no bias; fla's retention
layer).  The doubled value width adds 3 hidden * H * head_dim weights per layer (W_v, W_g, W_o), which the family's
default FFN width gives back (deltanet/config.py).  Decoding state: the retention state [B, H, K, V] float32 in the
model's Cache; RoPE takes its positions from the tokens already seen.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DeltaNetConfig
from .attention import RotaryEmbedding, apply_rotary
from .conv import varlen_positions
from .norm import HeadGroupNorm, RMSNorm
from .ops import matrix_state_op
from .static import copy_state, decode_step

__all__ = ["MultiScaleRetention", "retention"]

# Inputs at most this long run through the recurrent kernel outside training (decoding, short prompts).
RECURRENT_MAX_LEN = 64


def retention(q, k, v, g, *, backend: str, mode: str, chunk_size: int = 64, initial_state=None,
              output_final_state: bool = False, cu_seqlens=None):
    """Retention (scalar-decay linear attention) through ``ops.matrix_state_op``.  q, k: (B, T, H, K); v: (B, T, H,
    V); g: (B, T, H) float32 log decays."""
    return matrix_state_op("simple_gla", q, k, v, g, backend=backend, mode=mode, chunk_size=chunk_size,
                           initial_state=initial_state, output_final_state=output_final_state, cu_seqlens=cu_seqlens)


class MultiScaleRetention(nn.Module):
    def __init__(self, config: DeltaNetConfig, layer_idx: int = 0):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        C, H, D = config.hidden_size, config.num_heads, config.head_dim
        DV = config.retnet_value_factor * D
        self.num_heads, self.head_dim, self.value_dim = H, D, DV
        self.q_proj = nn.Linear(C, H * D, bias=False)
        self.k_proj = nn.Linear(C, H * D, bias=False)
        self.v_proj = nn.Linear(C, H * DV, bias=False)
        self.g_proj = nn.Linear(C, H * DV, bias=False)  # output gate
        if config.retnet_norm == "group":
            self.o_norm: nn.Module = HeadGroupNorm(H, DV, eps=config.norm_eps)
        else:
            self.o_norm = RMSNorm(DV, eps=config.norm_eps)
        self.o_proj = nn.Linear(H * DV, C, bias=False)
        self.rotary = RotaryEmbedding(D, config.rope_theta)
        log_gamma = torch.tensor([math.log(1 - 2.0 ** (-5 - h)) for h in range(H)], dtype=torch.float32)
        self.register_buffer("log_gamma", log_gamma, persistent=False)  # (H,), fixed

    def resolve_backend(self, x: torch.Tensor) -> str:
        return self.config.resolve_backend(x.is_cuda)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C)
        state: Optional[dict] = None,
        use_cache: bool = False,
        cu_seqlens: Optional[torch.Tensor] = None,
        offset: int = 0,  # position of x[:, 0] (tokens already in the cache)
        mode: Optional[str] = None,
        pad: Optional[torch.Tensor] = None,  # (B, T) bool, True at left padding
        **_: Any,
    ) -> Tuple[torch.Tensor, Optional[dict]]:
        B, T, _ = x.shape
        H, D, DV = self.num_heads, self.head_dim, self.value_dim
        if cu_seqlens is not None and (state is not None or use_cache):
            raise NotImplementedError("MultiScaleRetention: cu_seqlens with a generation cache is not supported")
        state = state or {}
        q = self.q_proj(x).view(B, T, H, D)
        k = self.k_proj(x).view(B, T, H, D)
        v = self.v_proj(x).view(B, T, H, DV)
        if cu_seqlens is not None:
            pos = varlen_positions(cu_seqlens.to(x.device), T)[1]  # RoPE restarts in every sequence
        else:
            pos = torch.arange(offset, offset + T, device=x.device)
        cos, sin = self.rotary(pos)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        g = self.log_gamma.to(x.device)[None, None, :].expand(B, T, H)  # (B, T, H) float32
        if pad is not None:  # padding writes nothing (k = 0) and does not decay the state (g = 0)
            k = k.masked_fill(pad[..., None, None], 0.0)
            g = g.masked_fill(pad[..., None], 0.0)
        g = g.contiguous()
        if mode is None:
            mode = "recurrent" if (not self.training and T <= RECURRENT_MAX_LEN) else "chunk"
        if mode not in ("chunk", "recurrent"):
            raise ValueError(f"mode must be 'chunk' or 'recurrent', got {mode!r}")
        o, s = retention(q, k, v, g, backend=self.resolve_backend(x), mode=mode, chunk_size=self.config.chunk_size,
                         initial_state=state.get("recurrent_state"), output_final_state=use_cache,
                         cu_seqlens=cu_seqlens)  # (B, T, H, DV), (B, H, D, DV) fp32
        o = self.o_norm(o) * F.silu(self.g_proj(x).view(B, T, H, DV))
        y = self.o_proj(o.reshape(B, T, H * DV))
        return y, ({"recurrent_state": s} if use_cache else None)

    # ---- static decoding state (deltanet/layers/static.py) ----
    def init_static_state(self, batch: int, max_len: int, device, dtype) -> dict:
        H, D, DV = self.num_heads, self.head_dim, self.value_dim
        return {"recurrent_state": torch.zeros(batch, H, D, DV, device=device, dtype=torch.float32)}

    load_static_state = staticmethod(copy_state)

    def step(self, x: torch.Tensor, static: dict, pos: torch.Tensor) -> torch.Tensor:
        """x (B, 1, C) -> (B, 1, C); the retention state in ``static`` is updated in place; RoPE at ``pos``."""
        B = x.shape[0]
        H, D, DV = self.num_heads, self.head_dim, self.value_dim
        q = self.q_proj(x).view(B, 1, H, D)
        k = self.k_proj(x).view(B, 1, H, D)
        v = self.v_proj(x[:, 0])  # (B, H*DV)
        cos, sin = self.rotary(pos.view(1))
        q, k = apply_rotary(q, cos, sin).view(B, H * D), apply_rotary(k, cos, sin).view(B, H * D)
        g = self.log_gamma.to(x.device)[None, :].expand(B, H)
        o = decode_step(self.resolve_backend(x))(static["recurrent_state"], q, k, v, g=g, delta=False)  # (B, H, DV)
        o = self.o_norm(o) * F.silu(self.g_proj(x).view(B, H, DV))  # the forward's norm and gate
        return self.o_proj(o.reshape(B, 1, H * DV))
