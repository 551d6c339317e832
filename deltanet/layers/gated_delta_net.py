"""The Gated DeltaNet token mixer (Yang, Kautz, Hatamizadeh, ICLR 2025): the delta rule with a data-dependent decay.

Per head, with state S ([K, V]):  S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,  o_t = K^-0.5 S_t^T q_t,
a_t = exp(g_t) in (0, 1].

    q, k, v = W_q x, W_k x, W_v x                          (no bias)
    q, k, v = silu(ShortConv(q)), silu(ShortConv(k)), silu(ShortConv(v))   (depthwise causal, kernel 4)
    q, k    = l2norm(q), l2norm(k)                         (per head)
    beta    = sigmoid(W_b x)                               (one per head)
    g       = -exp(A_log) * softplus(W_a x + dt_bias)      (Mamba2's decay, one per head; float32, <= 0)
    o       = gated_delta_rule(q, k, v, g, beta)           (kernels: chunk for training, recurrent for decoding)
    o       = RMSNorm_head(o) * silu(W_g x)                (output gate)
    y       = W_o o

A_log and dt_bias are initialised as in Mamba2: A = exp(A_log) uniform in [1, 16]; dt log-uniform in [1e-3, 1e-1]
(floored at 1e-4) and dt_bias = softplus^-1(dt) = dt + log(1 - exp(-dt)), so softplus(dt_bias) = dt at W_a x = 0.
Neither gets weight decay (they are 1-D).  Decoding state, as DeltaNet's: the three conv caches and the delta-rule
state [B, H, K, V] float32, in the model's Cache.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DeltaNetConfig
from kernels.conv import short_conv_multi

from .conv import ShortConvolution
from .norm import RMSNorm
from .ops import matrix_state_op
from .static import copy_state, decode_step, step_linear

__all__ = ["GatedDeltaNet", "gated_delta_rule"]

# Inputs at most this long run through the recurrent kernel outside training (decoding, short prompts).
RECURRENT_MAX_LEN = 64


def gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
    backend: str, mode: str, chunk_size: int = 64,
    initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The gated delta rule through ``ops.matrix_state_op``. backend: 'triton' | 'torch'; mode: 'chunk' |
    'recurrent'.  q, k: (B, T, H, K); v: (B, T, H, V); g: (B, T, H) float32; beta: (B, T, H); initial_state:
    (N, H, K, V) float32."""
    return matrix_state_op("gated_delta_rule", q, k, v, g, beta, backend=backend, mode=mode, chunk_size=chunk_size,
                           initial_state=initial_state, output_final_state=output_final_state, cu_seqlens=cu_seqlens)


class GatedDeltaNet(nn.Module):
    def __init__(self, config: DeltaNetConfig, layer_idx: int = 0):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        C, H, D = config.hidden_size, config.num_heads, config.head_dim
        self.num_heads, self.head_dim = H, D
        self.q_proj = nn.Linear(C, H * D, bias=False)
        self.k_proj = nn.Linear(C, H * D, bias=False)
        self.v_proj = nn.Linear(C, H * D, bias=False)
        self.a_proj = nn.Linear(C, H, bias=False)  # decay input
        self.b_proj = nn.Linear(C, H, bias=False)  # beta
        self.q_conv = ShortConvolution(H * D, config.conv_size)
        self.k_conv = ShortConvolution(H * D, config.conv_size)
        self.v_conv = ShortConvolution(H * D, config.conv_size)
        self.A_log = nn.Parameter(torch.empty(H))
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.g_proj = nn.Linear(C, H * D, bias=False)  # output gate
        self.o_norm = RMSNorm(D, eps=config.norm_eps)  # per head, weight shared across heads
        self.o_proj = nn.Linear(H * D, C, bias=False)
        self.reset_decay_parameters()

    @torch.no_grad()
    def reset_decay_parameters(self) -> None:
        """Mamba2's init: A ~ U[1, 16], A_log = log A; dt = exp(U[log 1e-3, log 1e-1]) >= 1e-4, dt_bias = softplus^-1(dt)."""
        self.A_log.copy_(torch.empty_like(self.A_log).uniform_(1.0, 16.0).log())
        dt = torch.exp(torch.empty_like(self.dt_bias).uniform_(math.log(1e-3), math.log(1e-1))).clamp_min(1e-4)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def resolve_backend(self, x: torch.Tensor) -> str:
        return self.config.resolve_backend(x.is_cuda)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C)
        state: Optional[dict] = None,  # from a previous call with use_cache=True
        use_cache: bool = False,
        cu_seqlens: Optional[torch.Tensor] = None,
        mode: Optional[str] = None,  # 'chunk' | 'recurrent'; None: recurrent for short inputs outside training
        pad: Optional[torch.Tensor] = None,  # (B, T) bool, True at left padding
        **_: Any,
    ) -> Tuple[torch.Tensor, Optional[dict]]:
        B, T, _ = x.shape
        H, D = self.num_heads, self.head_dim
        if cu_seqlens is not None and (state is not None or use_cache):
            raise NotImplementedError("GatedDeltaNet: cu_seqlens with a generation cache is not supported")
        state = state or {}
        if pad is not None:  # padding enters the convolutions as zeros ...
            x = x.masked_fill(pad[..., None], 0.0)
        new_state: dict = {}
        fused = self.config.use_fused(x.is_cuda)
        if fused and not use_cache and "conv_q" not in state:
            # as DeltaNet's fused glue: one matmul for q, k, v, then conv + SiLU (+ per-head L2 norm for q, k) in one
            # Triton kernel per part (kernels/conv), the same numbers as the plain lines below
            qkv = F.linear(x, torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]))
            convs = ([self.q_conv.weight, self.k_conv.weight, self.v_conv.weight], ["silu"] * 3, [D, D, None])
            q, k, v = (t.view(B, T, H, D) for t in short_conv_multi(qkv, *convs, cu_seqlens))
        else:
            q, new_state["conv_q"] = self.q_conv(self.q_proj(x), state.get("conv_q"), use_cache, cu_seqlens)
            k, new_state["conv_k"] = self.k_conv(self.k_proj(x), state.get("conv_k"), use_cache, cu_seqlens)
            v, new_state["conv_v"] = self.v_conv(self.v_proj(x), state.get("conv_v"), use_cache, cu_seqlens)
            q = F.normalize(F.silu(q).view(B, T, H, D), p=2.0, dim=-1, eps=1e-6)  # (B, T, H, D)
            k = F.normalize(F.silu(k).view(B, T, H, D), p=2.0, dim=-1, eps=1e-6)
            v = F.silu(v).view(B, T, H, D)
        beta = torch.sigmoid(self.b_proj(x))  # (B, T, H)
        g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias.float())  # (B, T, H) fp32
        if pad is not None:  # ... and leave the state as it is (beta = 0 and a = exp(0) = 1: S_t = S_{t-1})
            beta = beta.masked_fill(pad[..., None], 0.0)
            g = g.masked_fill(pad[..., None], 0.0)
        dt = v.dtype  # one dtype for q, k, v, beta (autocast gives float32 from F.normalize)
        q, k, beta = q.to(dt), k.to(dt), beta.to(dt)
        if mode is None:
            mode = "recurrent" if (not self.training and T <= RECURRENT_MAX_LEN) else "chunk"
        if mode not in ("chunk", "recurrent"):
            raise ValueError(f"mode must be 'chunk' or 'recurrent', got {mode!r}")
        o, s = gated_delta_rule(
            q, k, v, g, beta, backend=self.resolve_backend(x), mode=mode, chunk_size=self.config.chunk_size,
            initial_state=state.get("recurrent_state"), output_final_state=use_cache, cu_seqlens=cu_seqlens,
        )  # (B, T, H, D), (B, H, D, D) fp32
        new_state["recurrent_state"] = s
        o = self.o_norm(o, gate=self.g_proj(x).view(B, T, H, D), fused=fused)  # RMSNorm(o) * silu(gate), per head
        y = self.o_proj(o.reshape(B, T, H * D))
        return y, (new_state if use_cache else None)

    # ---- static decoding state (deltanet/layers/static.py) ----
    def init_static_state(self, batch: int, max_len: int, device, dtype) -> dict:
        H, D, W = self.num_heads, self.head_dim, self.config.conv_size
        w = [self.q_proj.weight, self.k_proj.weight, self.v_proj.weight, self.a_proj.weight, self.b_proj.weight,
             self.g_proj.weight]
        st = {"recurrent_state": torch.zeros(batch, H, D, D, device=device, dtype=torch.float32),
              "weights": {"in": torch.cat(w).to(device)}}  # (3HD + 2H + HD, C): q, k, v, a, b, gate in one product
        for name in ("conv_q", "conv_k", "conv_v"):
            st[name] = torch.zeros(batch, H * D, W - 1, device=device, dtype=dtype)
        return st

    load_static_state = staticmethod(copy_state)

    def step(self, x: torch.Tensor, static: dict, pos: torch.Tensor) -> torch.Tensor:
        """x (B, 1, C) -> (B, 1, C); the conv and gated delta-rule states in ``static`` are updated in place."""
        B = x.shape[0]
        H, D = self.num_heads, self.head_dim
        xt = x[:, 0]  # (B, C)
        n = H * D
        proj = step_linear(xt, static["weights"]["in"])  # (B, 3HD + 2H + HD): q, k, v, a, b, gate raw
        beta = proj[:, 3 * n + H:3 * n + 2 * H]  # (B, H) logits
        g = -self.A_log.float().exp() * F.softplus(proj[:, 3 * n:3 * n + H].float() + self.dt_bias.float())  # (B, H)
        o = decode_step(self.resolve_backend(x))(
            static["recurrent_state"], proj[:, :n], proj[:, n:2 * n], proj[:, 2 * n:3 * n], beta=beta,
            beta_logits=True, g=g,
            conv_states=(static["conv_q"], static["conv_k"], static["conv_v"]),
            conv_weights=(self.q_conv.weight, self.k_conv.weight, self.v_conv.weight),
            qk_activation="silu", qk_norm="l2", v_activation="silu", o_norm_weight=self.o_norm.weight,
            o_norm_eps=self.o_norm.eps, gate=proj[:, 3 * n + 2 * H:])  # (B, H, D): RMSNorm(o) * silu(gate) inside
        return step_linear(o.reshape(B, 1, H * D), self.o_proj.weight)
