"""Gated linear attention (GLA, Yang, Wang, Shen, Panda, Kim, ICML 2024) as a token mixer: linear attention with a
data-dependent decay per key channel.

Per head, with state S ([K, V]), K = head_dim / 2 (expand_k 0.5) and V = head_dim:
S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,  o_t = K^-0.5 S_t^T q_t.

    q, k = W_q x, W_k x                           (B, T, H, K), no feature map, no short convolution
    v    = W_v x                                  (B, T, H, V)
    g    = logsigmoid(W_g2 W_g1 x + b) / 16       (B, T, H, K): low-rank gate, hidden -> 16 -> H K, normaliser 16
    o    = gla(q, k, v, g)                        (kernels.chunk_gla for training, recurrent for decoding)
    o    = RMSNorm_head(o) * silu(W_r x)          (per-head normalisation and the swish output gate)
    y    = W_o o

The paper's settings: expand_k 0.5, expand_v 1, gate low-rank dimension 16, gate logit normaliser 16 (so a decay
exp(g) stays close to 1 at initialisation).  Decoding state: the GLA state [B, H, K, V] float32 in the model's Cache;
the static decoding step (deltanet/layers/static.py) updates it in place with a few float32 PyTorch ops.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DeltaNetConfig
from .norm import RMSNorm
from .ops import matrix_state_op
from .static import copy_state

__all__ = ["GatedLinearAttention", "gla"]

EXPAND_K = 0.5  # key dim per head = head_dim * EXPAND_K
GATE_LOW_RANK_DIM = 16
GATE_LOGIT_NORMALIZER = 16
# Inputs at most this long run through the recurrent kernel outside training (decoding, short prompts).
RECURRENT_MAX_LEN = 64


def gla(q, k, v, g, *, backend: str, mode: str, chunk_size: int = 64, initial_state=None,
        output_final_state: bool = False, cu_seqlens=None):
    """GLA through ``ops.matrix_state_op``.  q, k, g: (B, T, H, K), g float32 log decays; v: (B, T, H, V)."""
    return matrix_state_op("gla", q, k, v, g, backend=backend, mode=mode, chunk_size=chunk_size,
                           initial_state=initial_state, output_final_state=output_final_state, cu_seqlens=cu_seqlens)


class GatedLinearAttention(nn.Module):
    def __init__(self, config: DeltaNetConfig, layer_idx: int = 0):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        C, H, D = config.hidden_size, config.num_heads, config.head_dim
        DK = int(D * EXPAND_K)
        if DK < 1:
            raise ValueError(f"GLA: head_dim={D} gives key dim {DK} per head (expand_k {EXPAND_K}); need >= 1")
        self.num_heads, self.head_dim, self.key_dim = H, D, DK
        self.q_proj = nn.Linear(C, H * DK, bias=False)
        self.k_proj = nn.Linear(C, H * DK, bias=False)
        self.v_proj = nn.Linear(C, H * D, bias=False)
        self.gk_proj = nn.Sequential(nn.Linear(C, GATE_LOW_RANK_DIM, bias=False),
                                     nn.Linear(GATE_LOW_RANK_DIM, H * DK, bias=True))  # the decay gate
        self.g_proj = nn.Linear(C, H * D, bias=False)  # output gate
        self.o_norm = RMSNorm(D, eps=config.norm_eps)
        self.o_proj = nn.Linear(H * D, C, bias=False)

    def resolve_backend(self, x: torch.Tensor) -> str:
        return self.config.resolve_backend(x.is_cuda)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C)
        state: Optional[dict] = None,
        use_cache: bool = False,
        cu_seqlens: Optional[torch.Tensor] = None,
        mode: Optional[str] = None,
        pad: Optional[torch.Tensor] = None,  # (B, T) bool, True at left padding
        **_: Any,
    ) -> Tuple[torch.Tensor, Optional[dict]]:
        B, T, _ = x.shape
        H, D, DK = self.num_heads, self.head_dim, self.key_dim
        if cu_seqlens is not None and (state is not None or use_cache):
            raise NotImplementedError("GatedLinearAttention: cu_seqlens with a generation cache is not supported")
        state = state or {}
        q = self.q_proj(x).view(B, T, H, DK)
        k = self.k_proj(x).view(B, T, H, DK)
        v = self.v_proj(x).view(B, T, H, D)
        g = (F.logsigmoid(self.gk_proj(x).float()) / GATE_LOGIT_NORMALIZER).view(B, T, H, DK)  # float32, <= 0
        if pad is not None:  # padding writes nothing (k = 0) and does not decay the state (g = 0)
            k = k.masked_fill(pad[..., None, None], 0.0)
            g = g.masked_fill(pad[..., None, None], 0.0)
        if mode is None:
            mode = "recurrent" if (not self.training and T <= RECURRENT_MAX_LEN) else "chunk"
        if mode not in ("chunk", "recurrent"):
            raise ValueError(f"mode must be 'chunk' or 'recurrent', got {mode!r}")
        o, s = gla(q, k, v, g.contiguous(), backend=self.resolve_backend(x), mode=mode,
                   chunk_size=self.config.chunk_size, initial_state=state.get("recurrent_state"),
                   output_final_state=use_cache, cu_seqlens=cu_seqlens)  # (B, T, H, D), (B, H, DK, D) fp32
        o = self.o_norm(o) * F.silu(self.g_proj(x).view(B, T, H, D))
        y = self.o_proj(o.reshape(B, T, H * D))
        return y, ({"recurrent_state": s} if use_cache else None)

    # --- static decoding state (deltanet/layers/static.py) ---

    def init_static_state(self, batch: int, max_len: int, device, dtype) -> dict:
        return {"recurrent_state": torch.zeros(batch, self.num_heads, self.key_dim, self.head_dim, device=device,
                                               dtype=torch.float32)}

    load_static_state = staticmethod(copy_state)

    def step(self, x: torch.Tensor, static: dict, pos: torch.Tensor) -> torch.Tensor:
        """x (B, 1, C) -> (B, 1, C); S <- diag(exp(g)) S + k v^T in place (float32), o = K^-0.5 S^T q."""
        B = x.shape[0]
        H, D, DK = self.num_heads, self.head_dim, self.key_dim
        x1 = x[:, 0]
        q = self.q_proj(x1).view(B, H, DK).float()
        k = self.k_proj(x1).view(B, H, DK).float()
        v = self.v_proj(x1).view(B, H, D).float()
        g = (F.logsigmoid(self.gk_proj(x1).float()) / GATE_LOGIT_NORMALIZER).view(B, H, DK)
        S = static["recurrent_state"]
        S.mul_(g.exp()[..., None]).add_(k[..., None] * v[..., None, :])
        o = (torch.einsum("bhkv,bhk->bhv", S, q) * DK ** -0.5).to(x.dtype)
        o = self.o_norm(o) * F.silu(self.g_proj(x1).view(B, H, D))
        return self.o_proj(o.reshape(B, 1, H * D))
