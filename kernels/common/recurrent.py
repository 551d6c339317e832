"""The token-by-token forward kernel of the decayed ops' fused recurrent paths (decoding): scalar decay (retention,
``simple_gla``), a decay per key channel (``gla``), the gated delta rule, and the forward of the delta rule's fused
recurrent op.  The decayed ops have no backward here; training uses the chunk ops.

Per token, with S the [K, V] state of one (sequence, head)::

    S <- exp(g_t) S              USE_G:  one log decay per (token, head)
    S <- diag(exp(gk_t)) S       USE_GK: one log decay per key channel
    S <- S + beta_t k_t (v_t - S^T k_t)^T     USE_BETA (the delta rule); else S <- S + k_t v_t^T
    o_t = scale * S^T q_t

With STORE_ERR the delta rule's error ``e_t = v_t - S^T k_t`` is stored in float32: the delta rule's own fused
recurrent op (``delta_rule/fused_recurrent.py``, which has a backward) launches this kernel for its forward and
recomputes the states from e in its backward.

Columns of S (the V axis) evolve independently, so each program owns one (sequence * head, V block) and keeps
S[:, V block] ([BK, BV], float32) in registers: small V blocks with one warp, since the loop is latency bound.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .utils import check_triton_runnable

__all__ = ["fused_recurrent_fwd", "fused_recurrent_fwd_kernel"]


@triton.jit
def fused_recurrent_fwd_kernel(
    q, k, v, g, gk, beta, o, e, h0, ht, cu_seqlens,
    scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, USE_GK: tl.constexpr, USE_BETA: tl.constexpr,
    USE_H0: tl.constexpr, STORE_FINAL: tl.constexpr, IS_VARLEN: tl.constexpr, STORE_ERR: tl.constexpr = False,
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
    p_v = v + tok * V + o_v
    p_o = o + tok * V + o_v
    if STORE_ERR:
        p_e = e + tok * V + o_v
    if USE_G:
        p_g = g + tok
    if USE_GK:
        p_gk = gk + tok * K + o_k
    if USE_BETA:
        p_beta = beta + tok
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    o_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    if USE_H0:
        b_h += tl.load(h0 + o_state, mask=m_kv, other=0).to(tl.float32)
    for _ in range(0, T_n):
        b_q = tl.load(p_q, mask=m_k, other=0).to(tl.float32)
        b_k = tl.load(p_k, mask=m_k, other=0).to(tl.float32)
        b_v = tl.load(p_v, mask=m_v, other=0).to(tl.float32)
        if USE_G:
            b_h *= tl.exp(tl.load(p_g).to(tl.float32))
            p_g += H
        if USE_GK:
            b_h *= tl.exp(tl.load(p_gk, mask=m_k, other=0).to(tl.float32))[:, None]
            p_gk += H * K
        if USE_BETA:
            b_e = b_v - tl.sum(b_h * b_k[:, None], axis=0)  # [BV]
            if STORE_ERR:
                tl.store(p_e, b_e, mask=m_v)
                p_e += H * V
            b_v = tl.load(p_beta).to(tl.float32) * b_e
            p_beta += H
        b_h += b_k[:, None] * b_v[None, :]
        b_o = tl.sum(b_h * b_q[:, None], axis=0) * scale
        tl.store(p_o, b_o.to(p_o.dtype.element_ty), mask=m_v)
        p_q += H * K
        p_k += H * K
        p_v += H * V
        p_o += H * V
    if STORE_FINAL:
        tl.store(ht + o_state, b_h, mask=m_kv)


def fused_recurrent_fwd(
    name: str, chunk_op: str, N: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float],
    initial_state: Optional[torch.Tensor], output_final_state: bool, cu_seqlens: Optional[torch.Tensor],
    g: Optional[torch.Tensor] = None, gk: Optional[torch.Tensor] = None, beta: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Launch :func:`fused_recurrent_fwd_kernel` on validated inputs of the op `name` (its error messages name it and
    the chunk op `chunk_op` to train with).

    Args: N sequences; q, k [B, T, H, K], v [B, T, H, V]; scale (None: K ** -0.5); initial_state [N, H, K, V] or
    None; cu_seqlens [N + 1] or None; g [B, T, H] and/or gk [B, T, H, K] log decays; beta [B, T, H] for the delta rule.

    Returns: o [B, T, H, V] in q's dtype; final state [N, H, K, V] float32 or None.

    Raises: ValueError for CPU tensors without ``TRITON_INTERPRET=1``, or for an input that requires grad while grad
    mode is on (there is no backward).
    """
    inputs = (q, k, v, g, gk, beta, initial_state)
    check_triton_runnable(*inputs, cu_seqlens)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs):
        raise ValueError(f"{name} is forward-only (decoding) and has no backward: call it under torch.no_grad(), or "
                         f"use {chunk_op} for training")
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else float(scale)
    q, k, v = (x.contiguous() for x in (q, k, v))
    g, gk, beta, initial_state = (None if x is None else x.contiguous() for x in (g, gk, beta, initial_state))
    o = torch.empty_like(v)
    ht = q.new_empty(N, H, K, V, dtype=torch.float32) if output_final_state else None
    BK, BV = triton.next_power_of_2(K), min(triton.next_power_of_2(V), 8)
    fused_recurrent_fwd_kernel[(N * H, triton.cdiv(V, BV))](
        q, k, v, g, gk, beta, o, None, initial_state, ht, cu_seqlens, scale, T,
        H=H, K=K, V=V, BK=BK, BV=BV, USE_G=g is not None, USE_GK=gk is not None, USE_BETA=beta is not None,
        USE_H0=initial_state is not None, STORE_FINAL=output_final_state, IS_VARLEN=cu_seqlens is not None,
        num_warps=1,
    )
    return o, ht
