"""Fused recurrent gated linear attention (per-key-channel decay) in Triton, token by token: forward only (decoding).

``S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T``, ``o_t = scale * S_t^T q_t``; each program owns one (sequence * head,
V block) and keeps S[:, V block] ([BK, BV], float32) in registers.  No backward: training uses ``chunk_gla``, and a
call that would need gradients raises ValueError.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ..common.utils import check_triton_runnable, validate_inputs
from .chunk import validate_gk

__all__ = ["fused_recurrent_gla"]


@triton.jit
def fused_recurrent_gla_fwd_kernel(
    q, k, v, g, o, h0, ht, cu_seqlens,
    scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
    USE_H0: tl.constexpr, STORE_FINAL: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    """One (sequence * head, V block) walks its tokens.  Grid: (N * H, cdiv(V, BV))."""
    i_nh, i_v = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        T_n = (tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos).to(tl.int32)
    else:
        bos = i_n.to(tl.int64) * T
        T_n = T
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    tok = bos * H + i_h  # 64-bit token * head offset
    p_q = q + tok * K + o_k
    p_k = k + tok * K + o_k
    p_g = g + tok * K + o_k
    p_v = v + tok * V + o_v
    p_o = o + tok * V + o_v
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    o_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    if USE_H0:
        b_h += tl.load(h0 + o_state, mask=m_kv, other=0).to(tl.float32)
    for _ in range(0, T_n):
        b_q = tl.load(p_q, mask=m_k, other=0).to(tl.float32)
        b_k = tl.load(p_k, mask=m_k, other=0).to(tl.float32)
        b_g = tl.load(p_g, mask=m_k, other=0).to(tl.float32)
        b_v = tl.load(p_v, mask=m_v, other=0).to(tl.float32)
        b_h = b_h * tl.exp(b_g)[:, None] + b_k[:, None] * b_v[None, :]
        b_o = tl.sum(b_h * b_q[:, None], axis=0) * scale
        tl.store(p_o, b_o.to(p_o.dtype.element_ty), mask=m_v)
        p_q += H * K
        p_k += H * K
        p_g += H * K
        p_v += H * V
        p_o += H * V
    if STORE_FINAL:
        tl.store(ht + o_state, b_h, mask=m_kv)


def fused_recurrent_gla(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """GLA token by token in one Triton kernel; forward only, for decoding.

    Args: as :func:`kernels.chunk_gla` without ``chunk_size`` (q, k, g: [B, T, H, K], g log decays <= 0 in float32
    or q's dtype; v: [B, T, H, V]; initial_state: [N, H, K, V]; cu_seqlens: [N + 1]).

    Returns: o [B, T, H, V] in q's dtype; final_state [N, H, K, V] float32 or None.

    Raises: ValueError for bad inputs, CPU tensors without ``TRITON_INTERPRET=1``, or an input that requires grad
    while grad mode is on (no backward here: use ``chunk_gla``).
    """
    N = validate_inputs(q, k, v, q.new_empty(q.shape[:3]), initial_state=initial_state, cu_seqlens=cu_seqlens)
    validate_gk(g, q)
    check_triton_runnable(q, k, v, g, initial_state, cu_seqlens)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, g, initial_state)):
        raise ValueError("fused_recurrent_gla is forward-only (decoding) and has no backward: call it under "
                         "torch.no_grad(), or use chunk_gla for training")
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else float(scale)
    q, k, v, g = (x.contiguous() for x in (q, k, v, g))
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    o = torch.empty_like(v)
    ht = q.new_empty(N, H, K, V, dtype=torch.float32) if output_final_state else None
    BK, BV = triton.next_power_of_2(K), min(triton.next_power_of_2(V), 8)
    fused_recurrent_gla_fwd_kernel[(N * H, triton.cdiv(V, BV))](
        q, k, v, g, o, initial_state, ht, cu_seqlens, scale, T,
        H=H, K=K, V=V, BK=BK, BV=BV, USE_H0=initial_state is not None, STORE_FINAL=output_final_state,
        IS_VARLEN=cu_seqlens is not None, num_warps=1,
    )
    return o, ht
