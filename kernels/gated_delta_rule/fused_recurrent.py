"""Fused recurrent gated delta rule in Triton, token by token with the state in registers: forward only (decoding).

State S is [K, V] per (sequence, head); for every token t::

    S'  = exp(g_t) S_{t-1}
    S_t = S' + beta_t k_t (v_t - S'^T k_t)^T
    o_t = scale * S_t^T q_t

Columns of S (the V axis) evolve independently, so each program owns one (sequence * head, V block) pair and keeps
S[:, V block] ([BK, BV], float32) in registers.  There is no backward: training uses ``chunk_gated_delta_rule``,
and a call that would need gradients raises ValueError instead of returning outputs without them.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ..common.utils import check_triton_runnable, validate_inputs
from .chunk import _validate_g

__all__ = ["fused_recurrent_gated_delta_rule"]


@triton.jit
def fused_recurrent_gated_delta_rule_fwd_kernel(
    q, k, v, g, beta, o, h0, ht, cu_seqlens,
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
    p_v = v + tok * V + o_v
    p_o = o + tok * V + o_v
    p_g = g + tok
    p_beta = beta + tok

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    o_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    if USE_H0:
        b_h += tl.load(h0 + o_state, mask=m_kv, other=0).to(tl.float32)
    for _ in range(0, T_n):
        b_q = tl.load(p_q, mask=m_k, other=0).to(tl.float32)
        b_k = tl.load(p_k, mask=m_k, other=0).to(tl.float32)
        b_v = tl.load(p_v, mask=m_v, other=0).to(tl.float32)
        b_g = tl.load(p_g).to(tl.float32)
        b_beta = tl.load(p_beta).to(tl.float32)
        b_h *= tl.exp(b_g)
        b_e = b_v - tl.sum(b_h * b_k[:, None], axis=0)  # [BV]
        b_h += b_k[:, None] * (b_beta * b_e)[None, :]
        b_o = tl.sum(b_h * b_q[:, None], axis=0) * scale
        tl.store(p_o, b_o.to(p_o.dtype.element_ty), mask=m_v)
        p_q += H * K
        p_k += H * K
        p_v += H * V
        p_o += H * V
        p_g += H
        p_beta += H
    if STORE_FINAL:
        tl.store(ht + o_state, b_h, mask=m_kv)


def fused_recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Gated delta rule token by token in one Triton kernel; forward only, for decoding.

    ``S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, ``o_t = scale * S_t^T q_t``.

    Args:
        q: [B, T, H, K] queries, bfloat16, float16 or float32 (k, v, beta share its dtype and device).
        k: [B, T, H, K] keys.  v: [B, T, H, V] values.  K, V in [16, 256].
        g: [B, T, H] log decays (<= 0 by contract, not checked), float32 or q's dtype.
        beta: [B, T, H] write strengths.
        scale: output scale; default K ** -0.5.
        initial_state: [N, H, K, V] or None (zeros); any supported dtype.
        output_final_state: also return the state after the last token.
        cu_seqlens: None, or [N + 1] int32/int64 offsets packing N sequences into B = 1.

    Returns:
        o: [B, T, H, V] in q's dtype; final_state: [N, H, K, V] float32 or None.

    Raises:
        ValueError: bad shapes, dtypes, devices or cu_seqlens; CPU tensors without ``TRITON_INTERPRET=1``; an input
            that requires grad while grad mode is on (this op has no backward: use ``chunk_gated_delta_rule``).
    """
    N = validate_inputs(q, k, v, beta, initial_state=initial_state, cu_seqlens=cu_seqlens)
    _validate_g(g, q)
    check_triton_runnable(q, k, v, g, beta, initial_state, cu_seqlens)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, g, beta, initial_state)):
        raise ValueError("fused_recurrent_gated_delta_rule is forward-only (decoding) and has no backward: call it "
                         "under torch.no_grad(), or use chunk_gated_delta_rule for training")
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else float(scale)
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    o = torch.empty_like(v)
    ht = q.new_empty(N, H, K, V, dtype=torch.float32) if output_final_state else None
    # as the delta rule's fused forward: BK covers K, small V blocks with one warp (the loop is latency bound)
    BK, BV = triton.next_power_of_2(K), min(triton.next_power_of_2(V), 8)
    fused_recurrent_gated_delta_rule_fwd_kernel[(N * H, triton.cdiv(V, BV))](
        q, k, v, g, beta, o, initial_state, ht, cu_seqlens, scale, T,
        H=H, K=K, V=V, BK=BK, BV=BV, USE_H0=initial_state is not None, STORE_FINAL=output_final_state,
        IS_VARLEN=cu_seqlens is not None, num_warps=1,
    )
    return o, ht
