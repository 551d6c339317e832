"""Fused recurrent delta rule in Triton: forward and backward step through tokens with the state in registers.

State S is [K, V] per (sequence, head); for every token t::

    e_t = v_t - S_{t-1}^T k_t          (the delta-rule error, stored in float32 for the backward)
    S_t = S_{t-1} + beta_t k_t e_t^T
    o_t = scale * S_t^T q_t

Columns of S (the V axis) evolve independently, so each program owns one (sequence * head, V-block) pair and
keeps S[:, V-block] ([BK, BV], float32) in registers.

Backward, with dS the gradient flowing into S_t (from o_t, later tokens and the final state)::

    reverse pass:  dS += scale q_t do_t^T;  du_t = dS^T k_t;  dv_t = beta_t du_t;  dbeta_t = <du_t, e_t>;
                   dk_t = dS (beta_t e_t);  dS -= k_t dv_t^T;         after the loop dS is d initial_state
    forward pass:  dk_t -= S_{t-1} dv_t;  S_t = S_{t-1} + beta_t k_t e_t^T;  dq_t = scale S_t do_t

The forward pass recomputes S from the stored errors e (the same float32 operations as the forward kernel, so
the same states).  dq, dk and dbeta sum over the V axis: each V-block writes a float32 partial, summed after.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ..common.recurrent import fused_recurrent_fwd_kernel
from ..common.utils import check_triton_runnable, validate_inputs

__all__ = ["fused_recurrent_delta_rule"]


@triton.jit
def _seq_bounds(i_n, T, cu_seqlens, IS_VARLEN: tl.constexpr):
    """For sequence i_n: (first token as int64, length)."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        T_n = (eos - bos).to(tl.int32)
    else:
        bos = i_n.to(tl.int64) * T
        T_n = T
    return bos, T_n


@triton.jit
def fused_recurrent_delta_rule_bwd_reverse_kernel(
    q, k, beta, e, do, dht, dh0, dk_part, dv, dbeta_part, cu_seqlens,
    scale,
    T,
    BTH,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_FINAL_STATE_GRADIENT: tl.constexpr,
    STORE_INITIAL_STATE_GRADIENT: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    # Reverse pass over tokens with dS[:, V-block] in registers: dv (float32), the dS u_t part of dk and dbeta
    # (both per-V-block partials), and d initial_state.
    i_nh, i_v = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T_n = _seq_bounds(i_n, T, cu_seqlens, IS_VARLEN)

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]

    # Start at the last token of the sequence.
    tok = (bos + T_n - 1) * H + i_h
    part = i_v.to(tl.int64) * BTH  # offset of this V-block's partial buffers, in tokens*heads
    p_q = q + tok * K + o_k
    p_k = k + tok * K + o_k
    p_e = e + tok * V + o_v
    p_do = do + tok * V + o_v
    p_dv = dv + tok * V + o_v
    p_dk = dk_part + (part + tok) * K + o_k
    p_beta = beta + tok
    p_dbeta = dbeta_part + part + tok

    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    o_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    if USE_FINAL_STATE_GRADIENT:
        b_dh += tl.load(dht + o_state, mask=m_kv, other=0).to(tl.float32)

    for _ in range(0, T_n):
        b_q = tl.load(p_q, mask=m_k, other=0).to(tl.float32)
        b_k = tl.load(p_k, mask=m_k, other=0).to(tl.float32)
        b_e = tl.load(p_e, mask=m_v, other=0)
        b_do = tl.load(p_do, mask=m_v, other=0).to(tl.float32)
        b_beta = tl.load(p_beta).to(tl.float32)
        b_dh += (scale * b_q)[:, None] * b_do[None, :]
        b_du = tl.sum(b_dh * b_k[:, None], axis=0)  # [BV]
        b_dv = b_beta * b_du
        b_dk = tl.sum(b_dh * (b_beta * b_e)[None, :], axis=1)  # [BK]
        b_dbeta = tl.sum(b_du * b_e, axis=0)
        tl.store(p_dv, b_dv, mask=m_v)
        tl.store(p_dk, b_dk, mask=m_k)
        tl.store(p_dbeta, b_dbeta)
        b_dh -= b_k[:, None] * b_dv[None, :]
        p_q -= H * K
        p_k -= H * K
        p_e -= H * V
        p_do -= H * V
        p_dv -= H * V
        p_dk -= H * K
        p_beta -= H
        p_dbeta -= H

    if STORE_INITIAL_STATE_GRADIENT:
        tl.store(dh0 + o_state, b_dh, mask=m_kv)


@triton.jit
def fused_recurrent_delta_rule_bwd_forward_kernel(
    k, beta, e, h0, do, dv, dq_part, dk_part, cu_seqlens,
    scale,
    T,
    BTH,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    # Forward pass recomputing S from the stored errors: dq_t = scale S_t do_t and the -S_{t-1} dv_t part of dk_t.
    i_nh, i_v = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T_n = _seq_bounds(i_n, T, cu_seqlens, IS_VARLEN)

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]

    tok = bos * H + i_h
    part = i_v.to(tl.int64) * BTH
    p_k = k + tok * K + o_k
    p_e = e + tok * V + o_v
    p_do = do + tok * V + o_v
    p_dv = dv + tok * V + o_v
    p_dq = dq_part + (part + tok) * K + o_k
    p_dk = dk_part + (part + tok) * K + o_k
    p_beta = beta + tok

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        o_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
        b_h += tl.load(h0 + o_state, mask=m_kv, other=0).to(tl.float32)

    for _ in range(0, T_n):
        b_k = tl.load(p_k, mask=m_k, other=0).to(tl.float32)
        b_e = tl.load(p_e, mask=m_v, other=0)
        b_do = tl.load(p_do, mask=m_v, other=0).to(tl.float32)
        b_dv = tl.load(p_dv, mask=m_v, other=0)
        b_beta = tl.load(p_beta).to(tl.float32)
        b_dk = tl.load(p_dk, mask=m_k, other=0) - tl.sum(b_h * b_dv[None, :], axis=1)
        tl.store(p_dk, b_dk, mask=m_k)
        b_h += b_k[:, None] * (b_beta * b_e)[None, :]
        b_dq = tl.sum(b_h * b_do[None, :], axis=1) * scale
        tl.store(p_dq, b_dq, mask=m_k)
        p_k += H * K
        p_e += H * V
        p_do += H * V
        p_dv += H * V
        p_dq += H * K
        p_dk += H * K
        p_beta += H


def _block_sizes(K: int, V: int, backward: bool) -> Tuple[int, int, int]:
    """(BK, BV, num_warps).  BK covers all of K: the state's K axis stays in one program.

    The step-by-step loop is latency-bound, so the forward uses many small programs (BV = 8, one warp: reductions
    stay inside the warp, and many resident programs hide load latency).  The backward keeps BV up to 32 with two
    warps, because dq, dk and dbeta are summed over V-blocks through float32 partial buffers of NV times their size.
    """
    BK = triton.next_power_of_2(K)
    if not backward:
        return BK, min(triton.next_power_of_2(V), 8), 1
    return BK, min(triton.next_power_of_2(V), 32, max(8, 4096 // BK)), 2


def fused_recurrent_delta_rule_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: float,
    initial_state: Optional[torch.Tensor],
    output_final_state: bool,
    cu_seqlens: Optional[torch.Tensor],
    N: int,
    store_err: bool,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Launch the forward kernel; returns (o [B, T, H, V] in q.dtype, final_state float32 or None, e float32 or None)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    BK, BV, num_warps = _block_sizes(K, V, backward=False)
    o = torch.empty_like(v, dtype=q.dtype)
    e = torch.empty(B, T, H, V, dtype=torch.float32, device=q.device) if store_err else None
    ht = q.new_empty(N, H, K, V, dtype=torch.float32) if output_final_state else None
    grid = (N * H, triton.cdiv(V, BV))
    fused_recurrent_fwd_kernel[grid](  # common/recurrent.py's token loop, with the errors stored
        q, k, v, None, None, beta, o, e, initial_state, ht, cu_seqlens, scale, T,
        H=H, K=K, V=V, BK=BK, BV=BV, USE_G=False, USE_GK=False, USE_BETA=True,
        USE_H0=initial_state is not None, STORE_FINAL=output_final_state, IS_VARLEN=cu_seqlens is not None,
        STORE_ERR=store_err, num_warps=num_warps,
    )
    return o, ht, e


def fused_recurrent_delta_rule_bwd(
    q: torch.Tensor,
    k: torch.Tensor,
    beta: torch.Tensor,
    e: torch.Tensor,
    do: torch.Tensor,
    dht: Optional[torch.Tensor],
    scale: float,
    initial_state: Optional[torch.Tensor],
    cu_seqlens: Optional[torch.Tensor],
    N: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Launch the two backward kernels; returns float32 (dq, dk, dv, dbeta, dh0 or None)."""
    B, T, H, K = q.shape
    V = e.shape[-1]
    BK, BV, num_warps = _block_sizes(K, V, backward=True)
    NV = triton.cdiv(V, BV)
    BTH = B * T * H
    dq_part = q.new_empty(NV, B, T, H, K, dtype=torch.float32)
    dk_part = q.new_empty(NV, B, T, H, K, dtype=torch.float32)
    dbeta_part = q.new_empty(NV, B, T, H, dtype=torch.float32)
    dv = q.new_empty(B, T, H, V, dtype=torch.float32)
    dh0 = q.new_empty(N, H, K, V, dtype=torch.float32) if initial_state is not None else None
    grid = (N * H, NV)
    fused_recurrent_delta_rule_bwd_reverse_kernel[grid](
        q, k, beta, e, do, dht, dh0, dk_part, dv, dbeta_part, cu_seqlens,
        scale, T, BTH,
        H=H, K=K, V=V, BK=BK, BV=BV,
        USE_FINAL_STATE_GRADIENT=dht is not None,
        STORE_INITIAL_STATE_GRADIENT=dh0 is not None,
        IS_VARLEN=cu_seqlens is not None,
        num_warps=num_warps,
    )
    fused_recurrent_delta_rule_bwd_forward_kernel[grid](
        k, beta, e, initial_state, do, dv, dq_part, dk_part, cu_seqlens,
        scale, T, BTH,
        H=H, K=K, V=V, BK=BK, BV=BV,
        USE_INITIAL_STATE=initial_state is not None,
        IS_VARLEN=cu_seqlens is not None,
        num_warps=num_warps,
    )
    return dq_part.sum(0), dk_part.sum(0), dv, dbeta_part.sum(0), dh0


class FusedRecurrentDeltaRuleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens, N, store_err):
        o, ht, e = fused_recurrent_delta_rule_fwd(
            q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens, N, store_err
        )
        ctx.save_for_backward(q, k, beta, e, initial_state, cu_seqlens)
        ctx.scale, ctx.N, ctx.v_dtype = scale, N, v.dtype
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, beta, e, initial_state, cu_seqlens = ctx.saved_tensors
        if e is None:
            raise RuntimeError("fused_recurrent_delta_rule: backward called on a forward run without gradients")
        dq, dk, dv, dbeta, dh0 = fused_recurrent_delta_rule_bwd(
            q, k, beta, e, do.contiguous(), None if dht is None else dht.contiguous(),
            ctx.scale, initial_state, cu_seqlens, ctx.N,
        )
        dh0 = None if dh0 is None else dh0.to(initial_state.dtype)
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(ctx.v_dtype), dbeta.to(beta.dtype),
                None, dh0, None, None, None, None)


def fused_recurrent_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Delta rule, token by token, in fused Triton kernels (forward and backward).

    ``S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T``, ``o_t = scale * S_t^T q_t``, with S [K, V]
    per sequence and head.  q and k are used as given (no normalisation).

    Args:
        q: [B, T, H, K] queries, bfloat16, float16 or float32 (k, v, beta share its dtype and device).
        k: [B, T, H, K] keys (the layer L2-normalises them; the kernel does not).
        v: [B, T, H, V] values. K and V may be any size in [16, 256], powers of two or not.
        beta: [B, T, H] write strengths, usually in (0, 1).
        scale: output scale; default None means K ** -0.5.
        initial_state: [N, H, K, V] or None (zeros); any supported dtype. N = B, or the number of packed
            sequences when ``cu_seqlens`` is given. Receives a gradient.
        output_final_state: default False; when True also return the final state.
        cu_seqlens: None, or [N + 1] int32/int64 offsets (0 = cu_seqlens[0] <= ... <= cu_seqlens[N] = T)
            packing N variable-length sequences into B = 1. States never cross sequence boundaries.

    Returns:
        o: [B, T, H, V] in q's dtype.
        final_state: [N, H, K, V] float32 (differentiable: its gradient flows back), or None.

    Raises:
        ValueError: bad shapes, dtypes, devices or cu_seqlens; CPU tensors without ``TRITON_INTERPRET=1``.

    Example:
        >>> B, T, H, K, V = 2, 1000, 4, 64, 64
        >>> q, k = (torch.nn.functional.normalize(torch.randn(B, T, H, K, device="cuda"), dim=-1) for _ in range(2))
        >>> v, beta = torch.randn(B, T, H, V, device="cuda"), torch.rand(B, T, H, device="cuda").sigmoid()
        >>> o, s = fused_recurrent_delta_rule(q, k, v, beta, output_final_state=True)  # o: [2, 1000, 4, 64]
    """
    N = validate_inputs(q, k, v, beta, initial_state=initial_state, cu_seqlens=cu_seqlens)
    check_triton_runnable(q, k, v, beta, initial_state, cu_seqlens)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    q, k, v, beta = (x.contiguous() for x in (q, k, v, beta))
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.contiguous()
    store_err = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (q, k, v, beta, initial_state)
    )
    return FusedRecurrentDeltaRuleFunction.apply(
        q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens, N, store_err
    )
