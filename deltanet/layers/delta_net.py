"""The DeltaNet token mixer: linear attention whose state is updated with the delta rule.

Per head, with state S ([K, V]):  S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T,  o_t = K^-0.5 S_t^T q_t.

    q, k, v = W_q x, W_k x, W_v x                      (no bias)
    q, k, v = ShortConv(q), ShortConv(k), ShortConv(v)  (depthwise causal, kernel 4; `use_short_conv`)
    q, k    = norm(phi(q)), norm(phi(k))                (phi = `qk_activation`, norm = `qk_norm` (l2 | l1))
    v       = silu(v)
    beta    = sigmoid(W_beta x)                         (one per head; 1 when not `use_beta`)
    o       = delta_rule(q, k, v, beta)                 (kernels: chunk for training, recurrent for decoding)
    o       = RMSNorm_head(o) [* silu(W_g x)]           (`use_output_gate`)
    y       = W_o o
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from kernels.common.utils import MIN_HEAD_DIM

from ..config import DeltaNetConfig
from kernels.conv import conv_chunk_delta_rule, short_conv_multi

from .conv import ShortConvolution
from .norm import RMSNorm
from .ops import matrix_state_op
from .static import copy_state, decode_step, step_linear

__all__ = ["DeltaNet", "delta_rule"]

# Inputs at most this long run through the recurrent kernel outside training (decoding, short prompts).
RECURRENT_MAX_LEN = 64
# The fused projection's width (q, k, v and beta's H logits) is padded with zero weight rows to a multiple of this, so
# that the conv kernels' row stride is divisible by 16 and their loads vectorise ("Aligned rows", kernels/README.md).
ROW_ALIGN = 16


def delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, *,
    backend: str, mode: str, chunk_size: int = 64,
    initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The delta rule through ``ops.matrix_state_op``. backend: 'triton' | 'torch' (resolved, not 'auto'); mode:
    'chunk' | 'recurrent'.  q, k: (B, T, H, K); v: (B, T, H, V); beta: (B, T, H); initial_state: (N, H, K, V)
    float32."""
    return matrix_state_op("delta_rule", q, k, v, beta, backend=backend, mode=mode, chunk_size=chunk_size,
                           initial_state=initial_state, output_final_state=output_final_state, cu_seqlens=cu_seqlens)


def _feature_map(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "silu":
        return F.silu(x)
    if name == "relu":
        return F.relu(x)
    if name == "elu":
        return F.elu(x) + 1.0
    return x  # identity


def _normalize(x: torch.Tensor, kind: str) -> torch.Tensor:  # (B, T, H, D), over D
    if kind == "l2":
        return F.normalize(x, p=2.0, dim=-1, eps=1e-6)
    # l1: divide by the sum of |x| (= the plain sum for nonnegative feature maps such as relu, elu + 1)
    return x / x.abs().sum(-1, keepdim=True).clamp_min(1e-6)


class DeltaNet(nn.Module):
    def __init__(self, config: DeltaNetConfig, layer_idx: int = 0):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        C, H, D = config.hidden_size, config.num_heads, config.head_dim
        self.num_heads, self.head_dim = H, D
        self.q_proj = nn.Linear(C, H * D, bias=False)
        self.k_proj = nn.Linear(C, H * D, bias=False)
        self.v_proj = nn.Linear(C, H * D, bias=False)
        self.b_proj = nn.Linear(C, H, bias=False) if config.use_beta else None
        if config.use_short_conv:
            self.q_conv = ShortConvolution(H * D, config.conv_size)
            self.k_conv = ShortConvolution(H * D, config.conv_size)
            self.v_conv = ShortConvolution(H * D, config.conv_size)
        self.g_proj = nn.Linear(C, H * D, bias=False) if config.use_output_gate else None
        self.o_norm = RMSNorm(D, eps=config.norm_eps)  # per head, weight shared across heads
        self.o_proj = nn.Linear(H * D, C, bias=False)

    def resolve_backend(self, x: torch.Tensor) -> str:
        return self.config.resolve_backend(x.is_cuda)

    def _beta(self, x: torch.Tensor, pad: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, T, H) writing strengths: sigmoid(W_beta x), or 1 without `use_beta`; 0 at padding, so that padding
        writes nothing into the state (S_t = S_{t-1})."""
        B, T, _ = x.shape
        beta = torch.sigmoid(self.b_proj(x)) if self.b_proj is not None else x.new_ones(B, T, self.num_heads)
        return beta if pad is None else beta.masked_fill(pad[..., None], 0.0)

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
        cfg = self.config
        if cu_seqlens is not None and (state is not None or use_cache):
            raise NotImplementedError("DeltaNet: cu_seqlens with a generation cache is not supported")
        state = state or {}
        if pad is not None:  # padding enters the convolutions as zeros (as before a sequence's start), beta = 0
            x = x.masked_fill(pad[..., None], 0.0)
        new_state: dict = {}
        fused = cfg.use_fused(x.is_cuda) and D >= MIN_HEAD_DIM  # the fused kernels take head dims 16..256
        if mode is None:
            mode = "recurrent" if (not self.training and T <= RECURRENT_MAX_LEN) else "chunk"
        if mode not in ("chunk", "recurrent"):
            raise ValueError(f"mode must be 'chunk' or 'recurrent', got {mode!r}")
        s = None
        if fused and cfg.use_short_conv and cfg.qk_norm == "l2" and not use_cache and "conv_q" not in state:
            # One matmul for q, k, v (and beta's logits: the weights concatenated, same parameters, same init), then
            # conv + feature map + per-head L2 norm in one kernel per part, saving only the projection (kernels/conv)
            joint = mode == "chunk" and cfg.recompute_conv  # the backward recomputes q, k, v from the projection
            beta_in = joint and self.b_proj is not None and pad is None  # sigmoid inside the joint function
            w = [self.q_proj.weight, self.k_proj.weight, self.v_proj.weight] + ([self.b_proj.weight] if beta_in else [])
            if beta_in and ROW_ALIGN > 1 and H % ROW_ALIGN:  # zero rows: a row width the conv kernels load in vectors
                w.append(self.q_proj.weight.new_zeros(ROW_ALIGN - H % ROW_ALIGN, x.shape[-1]))
            qkv = F.linear(x, torch.cat(w))  # (B, T, 3HD [+ H + padding])
            beta = None if beta_in else self._beta(x, pad).to(qkv.dtype)
            convs = ([self.q_conv.weight, self.k_conv.weight, self.v_conv.weight],
                     [cfg.qk_activation, cfg.qk_activation, "silu"], [D, D, None])
            if joint:
                o = conv_chunk_delta_rule(qkv, beta, *convs, H, cu_seqlens, chunk_size=cfg.chunk_size)
            else:
                q, k, v = (t.view(B, T, H, D) for t in short_conv_multi(qkv, *convs, cu_seqlens))
                o, s = delta_rule(q, k, v, beta, backend="triton", mode=mode, chunk_size=cfg.chunk_size,
                                  cu_seqlens=cu_seqlens)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (B, T, H*D)
            if cfg.use_short_conv:
                q, new_state["conv_q"] = self.q_conv(q, state.get("conv_q"), use_cache, cu_seqlens)
                k, new_state["conv_k"] = self.k_conv(k, state.get("conv_k"), use_cache, cu_seqlens)
                v, new_state["conv_v"] = self.v_conv(v, state.get("conv_v"), use_cache, cu_seqlens)
            q = _normalize(_feature_map(q, cfg.qk_activation).view(B, T, H, D), cfg.qk_norm)  # (B, T, H, D)
            k = _normalize(_feature_map(k, cfg.qk_activation).view(B, T, H, D), cfg.qk_norm)
            v = F.silu(v).view(B, T, H, D)
            # The kernels take one dtype for all four; under autocast F.normalize returns float32 while v is bf16.
            dt = v.dtype
            q, k, beta = q.to(dt), k.to(dt), self._beta(x, pad).to(dt)
            o, s = delta_rule(
                q, k, v, beta, backend=self.resolve_backend(x), mode=mode, chunk_size=cfg.chunk_size,
                initial_state=state.get("recurrent_state"), output_final_state=use_cache, cu_seqlens=cu_seqlens,
            )  # (B, T, H, D), (B, H, D, D) fp32
        new_state["recurrent_state"] = s
        g = self.g_proj(x).view(B, T, H, D) if self.g_proj is not None else None
        o = self.o_norm(o, gate=g, fused=fused)  # RMSNorm(o) [* silu(g)], per head
        y = self.o_proj(o.reshape(B, T, H * D))
        return y, (new_state if use_cache else None)

    # ---- static decoding state (deltanet/layers/static.py) ----
    def init_static_state(self, batch: int, max_len: int, device, dtype) -> dict:
        H, D, W = self.num_heads, self.head_dim, self.config.conv_size
        w = [self.q_proj.weight, self.k_proj.weight, self.v_proj.weight] + (
            [self.b_proj.weight] if self.b_proj is not None else []) + (
            [self.g_proj.weight] if self.g_proj is not None else [])
        st = {"recurrent_state": torch.zeros(batch, H, D, D, device=device, dtype=torch.float32),
              "weights": {"in": torch.cat(w).to(device)}}  # (3HD [+ H] [+ HD], C): q, k, v [, beta] [, gate]
        if self.config.use_short_conv:
            for name in ("conv_q", "conv_k", "conv_v"):
                st[name] = torch.zeros(batch, H * D, W - 1, device=device, dtype=dtype)
        return st

    load_static_state = staticmethod(copy_state)

    def step(self, x: torch.Tensor, static: dict, pos: torch.Tensor) -> torch.Tensor:
        """x (B, 1, C) -> (B, 1, C); the conv and delta-rule states in ``static`` are updated in place."""
        B = x.shape[0]
        H, D = self.num_heads, self.head_dim
        cfg = self.config
        xt = x[:, 0]  # (B, C)
        n = H * D
        proj = step_linear(xt, static["weights"]["in"])  # (B, 3HD [+ H] [+ HD]): q, k, v [, beta logits] [, gate], raw
        q, k, v = proj[:, :n], proj[:, n:2 * n], proj[:, 2 * n:3 * n]  # strided views
        c = 3 * n + (H if self.b_proj is not None else 0)
        beta = proj[:, 3 * n:c] if self.b_proj is not None else None  # (B, H) logits; None = 1
        convs = (static["conv_q"], static["conv_k"], static["conv_v"]) if cfg.use_short_conv else None
        weights = (self.q_conv.weight, self.k_conv.weight, self.v_conv.weight) if cfg.use_short_conv else None
        g = proj[:, c:c + n] if self.g_proj is not None else None  # (B, HD) gate
        o = decode_step(self.resolve_backend(x))(  # RMSNorm_head(o) [* silu(g)] inside
            static["recurrent_state"], q, k, v, beta=beta, beta_logits=True, conv_states=convs, conv_weights=weights,
            qk_activation=cfg.qk_activation, qk_norm=cfg.qk_norm, v_activation="silu",
            o_norm_weight=self.o_norm.weight, o_norm_eps=self.o_norm.eps, gate=g)  # (B, H, D)
        return step_linear(o.reshape(B, 1, H * D), self.o_proj.weight)
