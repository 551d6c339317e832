"""Chunkwise parallel delta rule in Triton: forward and backward (WY representation, UT transform).

State ``S`` is ``[K, V]`` per (sequence, head); per token ``S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T`` and
``o_t = scale * S_t^T q_t``.  The sequence is cut into chunks of ``BT`` tokens (rows are tokens).  Within a chunk::

    A  = (I + tril(diag(beta) K K^T, -1))^-1      # UT transform, forward substitution on the BT x BT block
    W  = A diag(beta) K,   U = A diag(beta) V      # WY representation
and across chunks, with S the state before the chunk::

    V' = U - W S                                   # "new values"
    O  = scale * (Q S + tril(Q K^T) V')
    S <- S + K^T V'

Kernels (forward): ``_wy_fwd_kernel`` (A, W, U per chunk, fully parallel), ``_fwd_h_kernel`` (the only sequential one:
one program per (sequence*head, V block) walks the chunks, writes the chunk-boundary states h and V'),
``_fwd_o_kernel`` (outputs, fully parallel).  Backward, with V' and S of a chunk as above:
``dV' = scale * triu(K Q^T) dO + K dS_next``, ``dS = dS_next + scale Q^T dO - W^T dV'`` (``_bwd_dhu_kernel``, reverse
over chunks), then ``dQ = scale (dO S^T + tril(dO V'^T) K)``, ``dK += V' dS_next^T + scale tril(dO V'^T)^T Q``,
``dW = -dV' S^T`` (``_bwd_dqkw_kernel``), and finally back through the WY representation (``_wy_bwd_kernel``):
``dA = dW (bK)^T + dU (bV)^T``, ``dL = -A^T dA A^T`` (strictly lower part), giving dk, dv, dbeta.
The backward recomputes W and U from the stored A, and h and V' too unless KEEP_STATES keeps them (K > 128).

Loops over K and V blocks (at most four: K, V <= 256) are unrolled with ``tl.static_range``.  As ``range`` loops,
triton 3.6 compiled the bf16 K K^T accumulation of ``_wy_fwd_kernel`` wrongly on the H200 once the loop had three or
more iterations (K = 192, 256: A off by 5e-2 relative while fp32 and K <= 128 were exact to rounding;
``python benchmarks/bench_chunk_tuning.py --diag`` shows it stage by stage).

Layout conventions: tensors are [B, T, H, D] contiguous; a chunk is addressed through a base pointer moved (in 64-bit
arithmetic) to its first token, so in-block offsets stay small; (sequence*head) lives on grid axis 0 or is folded
into axis 0 together with the chunk index, so no grid axis limited to 65535 grows with N*H.

Module switches (see the launcher section): LAUNCH (num_warps, num_stages per kernel) and LAUNCH_WIDE (its entries
for K or V > 128), AUTOTUNE (opt-in), KEEP_STATES and FOLD_BLOCKS (both "auto": on only for K or V > 128),
TILES / TILES_WIDE ((BK, BV) per chunk-parallel kernel, at most four blocks per chunk), BLOCKED_INV, SEQ_BV.  A
setting that needs more shared memory than the GPU has (float32 tiles are twice the size) is replaced at launch by
the next smaller one that fits (fewer stages, then 4 warps), remembered per kernel, shape constants and dtype.
FP32_PREC: the tl.dot precision of float32 calls, "tf32x3" (three TF32 tensor-core products, float32-accurate) by
default; bf16/fp16 dots run on tensor cores at their own precision.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from .utils import (
    check_triton_runnable,
    prepare_chunk_indices,
    prepare_chunk_offsets,
    triton_interpret_enabled,
    validate_inputs,
)

__all__ = ["chunk_delta_rule"]


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------



@triton.jit
def _ld(base, R, C, S, r0, c0, BR: tl.constexpr, BC: tl.constexpr):
    """Load the [BR, BC] tile at (r0, c0) of a row-major [R, C] matrix with row stride S (zeros outside).
    Plain masked pointers rather than block pointers: triton >= 3.9 removed block pointers."""
    o_r = r0 + tl.arange(0, BR)
    o_c = c0 + tl.arange(0, BC)
    m = (o_r[:, None] < R) & (o_c[None, :] < C)
    return tl.load(base + o_r[:, None] * S + o_c[None, :], mask=m, other=0.)


@triton.jit
def _st(base, val, R, C, S, r0, c0, BR: tl.constexpr, BC: tl.constexpr):
    """Store the [BR, BC] tile `val` at (r0, c0) of a row-major [R, C] matrix with row stride S (cast to its dtype)."""
    o_r = r0 + tl.arange(0, BR)
    o_c = c0 + tl.arange(0, BC)
    m = (o_r[:, None] < R) & (o_c[None, :] < C)
    tl.store(base + o_r[:, None] * S + o_c[None, :], val.to(base.dtype.element_ty), mask=m)


@triton.jit
def _inv_unit_lower_rows(b_L, BT: tl.constexpr):
    """(I + L)^-1 for strictly lower [BT, BT] L, by forward substitution one row at a time.
    With B = -L, the rows R_i of (I + L)^-1 - I satisfy R_i = B_i + sum_{j<i} B_ij R_j, and rows j < i are final
    when row i is processed."""
    o_t = tl.arange(0, BT)
    b_A = -b_L
    for i in range(1, BT):
        m_i = o_t == i
        b_a = tl.sum(tl.where(m_i[:, None], b_A, 0.), 0)
        b_a = b_a + tl.sum(b_a[:, None] * b_A, 0)
        b_A = tl.where(m_i[:, None], b_a[None, :], b_A)
    return b_A + tl.where(o_t[:, None] == o_t[None, :], 1., 0.)


@triton.jit
def _inv_unit_lower_blocked(b_L, BT: tl.constexpr, PREC: tl.constexpr):
    """(I + L)^-1 for strictly lower [BT, BT] L (BT = 16 * NB, NB <= 4), with 16-row blocks.

    Split L = D + E (D: the 16x16 diagonal blocks, E: strictly below them).  The NB diagonal blocks are inverted
    together by forward substitution (15 steps on an [NB, 16, 16] tile), giving P = (I + D)^-1.  Then
    I + L = (I + D)(I + N) with N = P E, strictly block-lower so N^4 = 0, hence
    (I + L)^-1 = (I + N)^-1 P = (I - N)(I + N^2) P  (four BT x BT dots)."""
    NB: tl.constexpr = BT // 16
    o_t = tl.arange(0, BT)
    o_b = o_t // 16
    o_nb = tl.arange(0, NB)
    o_16 = tl.arange(0, 16)
    m_blk = (o_b[:, None] == o_nb[None, :])[:, :, None]  # [BT, NB, 1]: row's block == column block
    # diagonal blocks of B = -L as [NB, 16, 16]
    b_D = tl.sum(tl.where(m_blk, tl.reshape(-b_L, [BT, NB, 16]), 0.), 1)
    b_D = tl.reshape(b_D, [NB, 16, 16])
    for i in range(1, 16):
        m_i = (o_16 == i)[None, :, None]
        b_a = tl.sum(tl.where(m_i, b_D, 0.), 1)  # [NB, 16]: row i of every block
        b_a = b_a + tl.sum(b_a[:, :, None] * b_D, 1)
        b_D = tl.where(m_i, b_a[:, None, :], b_D)
    # back to a block-diagonal [BT, BT] tile, adding the identity
    b_P = tl.broadcast_to(tl.reshape(b_D, [BT, 1, 16]), [BT, NB, 16])
    b_P = tl.reshape(tl.where(m_blk, b_P, 0.), [BT, BT])
    b_I = tl.where(o_t[:, None] == o_t[None, :], 1., 0.)
    b_P = b_P + b_I
    if NB == 1:
        b_A = b_P
    else:
        b_E = tl.where(o_b[:, None] > o_b[None, :], b_L, 0.)
        b_N = tl.dot(b_P, b_E, input_precision=PREC)
        b_N2 = tl.dot(b_N, b_N, input_precision=PREC)
        b_M = tl.dot(b_I - b_N, b_I + b_N2, input_precision=PREC)
        b_A = tl.dot(b_M, b_P, input_precision=PREC)
    return b_A


@triton.jit
def _block_ids(NB, FOLD: tl.constexpr):
    """(chunk*head program, block index) of a chunk-parallel kernel whose grid has NB K or V blocks per chunk and
    head.  FOLD: a 1-D grid with the blocks of one chunk adjacent (they read the same q, k, dO, V' tiles, which then
    come from L2); otherwise the 2-D grid (chunk * head, block)."""
    if FOLD:
        pid = tl.program_id(0)
        return pid // NB, pid % NB
    else:
        return tl.program_id(0), tl.program_id(1)


@triton.jit
def _chunk_coords(i_tg, T, cu_seqlens, chunk_indices, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """For global chunk i_tg: (bos, T_seq, i_c) = first token of its sequence (int64), sequence length, chunk index
    within the sequence.  Without cu_seqlens every batch row is one sequence of T tokens."""
    if IS_VARLEN:
        i_n = tl.load(chunk_indices + i_tg * 2).to(tl.int64)
        i_c = tl.load(chunk_indices + i_tg * 2 + 1).to(tl.int64)
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        T_seq = eos - bos
    else:
        NT = tl.cdiv(T, BT)
        i_c = (i_tg % NT).to(tl.int64)
        bos = (i_tg // NT).to(tl.int64) * T
        T_seq = T
    return bos, T_seq, i_c


@triton.jit
def _seq_coords(i_n, T, cu_seqlens, chunk_offsets, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """For sequence i_n: (bos, T_seq, NT_seq, boh) = first token (int64), length, number of chunks, first global chunk."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        T_seq = eos - bos
        NT_seq = tl.cdiv(T_seq, BT)
        boh = tl.load(chunk_offsets + i_n).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        T_seq = T
        NT_seq = tl.cdiv(T, BT)
        boh = i_n.to(tl.int64) * NT_seq
    return bos, T_seq, NT_seq, boh


# ----------------------------------------------------------------------------------------------------------------------
# forward kernels
# ----------------------------------------------------------------------------------------------------------------------


@triton.jit
def _wy_fwd_kernel(
    k, v, beta, A, w, u,
    cu_seqlens, chunk_indices,
    T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    LOAD_A: tl.constexpr, BLOCKED_INV: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
    STORE_U: tl.constexpr,
):
    """A = (I + strict_tril(diag(beta) K K^T))^-1 (or loaded when LOAD_A), W = A diag(beta) K, U = A diag(beta) V
    (U only when STORE_U).  Grid: (total chunks * H,), chunk-major."""
    i_p = tl.program_id(0)
    i_h = i_p % H
    i_tg = i_p // H
    bos, T_seq, i_c = _chunk_coords(i_tg, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    t0 = bos + i_c * BT  # first token of the chunk (int64)
    T_rem = T_seq - i_c * BT  # tokens of the sequence from t0 on

    o_t = tl.arange(0, BT)
    m_t = o_t < T_rem
    b_beta = tl.load(beta + (t0 + o_t) * H + i_h, mask=m_t, other=0.).to(tl.float32)
    if LOAD_A:
        b_A = _ld(A + (t0 * H + i_h) * BT, T_rem, BT, H * BT, 0, 0, BT, BT).to(tl.float32)
    else:
        b_KK = tl.zeros([BT, BT], dtype=tl.float32)
        for i_k in tl.static_range((K + BK - 1) // BK):
            b_k = _ld(k + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
            b_KK += tl.dot(b_k, tl.trans(b_k), input_precision=PREC)
        b_L = tl.where(o_t[:, None] > o_t[None, :], b_KK * b_beta[:, None], 0.)  # L = strict_tril(diag(b) K K^T)
        if BLOCKED_INV:
            b_A = _inv_unit_lower_blocked(b_L, BT, PREC)
        else:
            b_A = _inv_unit_lower_rows(b_L, BT)
        _st(A + (t0 * H + i_h) * BT, b_A, T_rem, BT, H * BT, 0, 0, BT, BT)

    b_Ad = b_A.to(k.dtype.element_ty)
    for i_k in tl.static_range((K + BK - 1) // BK):
        b_k = _ld(k + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
        b_kb = (b_k * b_beta[:, None]).to(b_k.dtype)
        b_w = tl.dot(b_Ad, b_kb, input_precision=PREC)
        _st(w + (t0 * H + i_h) * K, b_w, T_rem, K, H * K, 0, i_k * BK, BT, BK)
    if STORE_U:
        for i_v in tl.static_range((V + BV - 1) // BV):
            b_v = _ld(v + (t0 * H + i_h) * V, T_rem, V, H * V, 0, i_v * BV, BT, BV)
            b_vb = (b_v * b_beta[:, None]).to(b_v.dtype)
            b_u = tl.dot(b_Ad, b_vb, input_precision=PREC)
            _st(u + (t0 * H + i_h) * V, b_u, T_rem, V, H * V, 0, i_v * BV, BT, BV)


@triton.jit
def _fwd_h_kernel(
    k, w, u, v_new, h, h0, ht,
    cu_seqlens, chunk_offsets,
    T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_H0: tl.constexpr, STORE_FINAL: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
):
    """Walk the chunks of one (sequence, head, V block): store the state before each chunk in h, V' = U - W S in
    v_new, then S += K^T V'.  The state [K, BV] stays in registers as up to four [BK, BV] row blocks (K <= 4 * BK;
    one block up to K = 128, blocks of 64 above).  Grid: (N * H, cdiv(V, BV))."""
    i_nh, i_v = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T_seq, NT_seq, boh = _seq_coords(i_n, T, cu_seqlens, chunk_offsets, BT, IS_VARLEN)
    c0 = i_v * BV

    b_h1 = tl.zeros([BK, BV], dtype=tl.float32)
    b_h2 = tl.zeros([BK, BV], dtype=tl.float32)
    b_h3 = tl.zeros([BK, BV], dtype=tl.float32)
    b_h4 = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        p_h0 = h0 + i_nh.to(tl.int64) * K * V
        b_h1 += _ld(p_h0, K, V, V, 0, c0, BK, BV).to(tl.float32)
        if K > BK:
            b_h2 += _ld(p_h0, K, V, V, BK, c0, BK, BV).to(tl.float32)
        if K > 2 * BK:
            b_h3 += _ld(p_h0, K, V, V, 2 * BK, c0, BK, BV).to(tl.float32)
        if K > 3 * BK:
            b_h4 += _ld(p_h0, K, V, V, 3 * BK, c0, BK, BV).to(tl.float32)

    for i_c in range(NT_seq):
        t0 = bos + i_c * BT
        T_rem = T_seq - i_c * BT
        p_h = h + ((boh + i_c) * H + i_h) * K * V
        p_w = w + (t0 * H + i_h) * K
        p_k = k + (t0 * H + i_h) * K
        _st(p_h, b_h1, K, V, V, 0, c0, BK, BV)
        b_v = _ld(u + (t0 * H + i_h) * V, T_rem, V, H * V, 0, c0, BT, BV).to(tl.float32)
        b_v -= tl.dot(_ld(p_w, T_rem, K, H * K, 0, 0, BT, BK), b_h1.to(w.dtype.element_ty), input_precision=PREC)
        if K > BK:
            _st(p_h, b_h2, K, V, V, BK, c0, BK, BV)
            b_v -= tl.dot(_ld(p_w, T_rem, K, H * K, 0, BK, BT, BK), b_h2.to(w.dtype.element_ty),
                          input_precision=PREC)
        if K > 2 * BK:
            _st(p_h, b_h3, K, V, V, 2 * BK, c0, BK, BV)
            b_v -= tl.dot(_ld(p_w, T_rem, K, H * K, 0, 2 * BK, BT, BK), b_h3.to(w.dtype.element_ty),
                          input_precision=PREC)
        if K > 3 * BK:
            _st(p_h, b_h4, K, V, V, 3 * BK, c0, BK, BV)
            b_v -= tl.dot(_ld(p_w, T_rem, K, H * K, 0, 3 * BK, BT, BK), b_h4.to(w.dtype.element_ty),
                          input_precision=PREC)
        _st(v_new + (t0 * H + i_h) * V, b_v, T_rem, V, H * V, 0, c0, BT, BV)
        b_vd = b_v.to(k.dtype.element_ty)
        b_h1 += tl.dot(tl.trans(_ld(p_k, T_rem, K, H * K, 0, 0, BT, BK)), b_vd, input_precision=PREC)
        if K > BK:
            b_h2 += tl.dot(tl.trans(_ld(p_k, T_rem, K, H * K, 0, BK, BT, BK)), b_vd, input_precision=PREC)
        if K > 2 * BK:
            b_h3 += tl.dot(tl.trans(_ld(p_k, T_rem, K, H * K, 0, 2 * BK, BT, BK)), b_vd, input_precision=PREC)
        if K > 3 * BK:
            b_h4 += tl.dot(tl.trans(_ld(p_k, T_rem, K, H * K, 0, 3 * BK, BT, BK)), b_vd, input_precision=PREC)

    if STORE_FINAL:
        p_ht = ht + i_nh.to(tl.int64) * K * V
        _st(p_ht, b_h1, K, V, V, 0, c0, BK, BV)
        if K > BK:
            _st(p_ht, b_h2, K, V, V, BK, c0, BK, BV)
        if K > 2 * BK:
            _st(p_ht, b_h3, K, V, V, 2 * BK, c0, BK, BV)
        if K > 3 * BK:
            _st(p_ht, b_h4, K, V, V, 3 * BK, c0, BK, BV)


@triton.jit
def _fwd_o_kernel(
    q, k, v_new, h, o,
    cu_seqlens, chunk_indices,
    scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, PREC: tl.constexpr, FOLD: tl.constexpr,
):
    """O = scale * (Q S + tril(Q K^T) V') per chunk.  Grid: (total chunks * H, cdiv(V, BV))."""
    i_p, i_v = _block_ids(tl.cdiv(V, BV), FOLD)
    i_h = i_p % H
    i_tg = i_p // H
    bos, T_seq, i_c = _chunk_coords(i_tg, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    t0 = bos + i_c * BT
    T_rem = T_seq - i_c * BT
    o_t = tl.arange(0, BT)

    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_s = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in tl.static_range((K + BK - 1) // BK):
        b_q = _ld(q + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
        b_k = _ld(k + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
        b_h = _ld(h + (i_tg.to(tl.int64) * H + i_h) * K * V, K, V, V, i_k * BK, i_v * BV, BK, BV)
        b_o += tl.dot(b_q, b_h, input_precision=PREC)
        b_s += tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
    b_s = tl.where(o_t[:, None] >= o_t[None, :], b_s, 0.)
    b_vn = _ld(v_new + (t0 * H + i_h) * V, T_rem, V, H * V, 0, i_v * BV, BT, BV)
    b_o = (b_o + tl.dot(b_s.to(b_vn.dtype), b_vn, input_precision=PREC)) * scale
    _st(o + (t0 * H + i_h) * V, b_o, T_rem, V, H * V, 0, i_v * BV, BT, BV)


# ----------------------------------------------------------------------------------------------------------------------
# backward kernels
# ----------------------------------------------------------------------------------------------------------------------


@triton.jit
def _bwd_dv_local_kernel(
    q, k, do, dv_local,
    cu_seqlens, chunk_indices,
    scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, PREC: tl.constexpr, FOLD: tl.constexpr,
):
    """The within-chunk part of dV': scale * triu(K Q^T) dO (kept off the sequential walk).
    Grid: (total chunks * H, cdiv(V, BV))."""
    i_p, i_v = _block_ids(tl.cdiv(V, BV), FOLD)
    i_h = i_p % H
    i_tg = i_p // H
    bos, T_seq, i_c = _chunk_coords(i_tg, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    t0 = bos + i_c * BT
    T_rem = T_seq - i_c * BT
    o_t = tl.arange(0, BT)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in tl.static_range((K + BK - 1) // BK):
        b_q = _ld(q + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
        b_k = _ld(k + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
        b_A += tl.dot(b_k, tl.trans(b_q), input_precision=PREC)
    b_A = tl.where(o_t[:, None] <= o_t[None, :], b_A * scale, 0.)
    b_do = _ld(do + (t0 * H + i_h) * V, T_rem, V, H * V, 0, i_v * BV, BT, BV)
    b_dv = tl.dot(b_A.to(b_do.dtype), b_do, input_precision=PREC)
    _st(dv_local + (t0 * H + i_h) * V, b_dv, T_rem, V, H * V, 0, i_v * BV, BT, BV)


@triton.jit
def _bwd_dhu_kernel(
    q, k, w, do, dv_local, dv_new, dh, dht, dh0,
    cu_seqlens, chunk_offsets,
    scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr, INLINE_DV: tl.constexpr, IS_VARLEN: tl.constexpr,
    PREC: tl.constexpr,
):
    """Reverse walk over the chunks of one (sequence, head, V block) with dS = gradient of the state after the chunk:
    store dS in dh, dV' = dv_local + K dS, then dS <- dS + scale Q^T dO - W^T dV'.  dS is held as up to four
    [BK, BV] row blocks, as in _fwd_h_kernel.  With INLINE_DV (only when K <= BK) dv_local = scale * triu(K Q^T) dO
    is computed here from the q, k tiles the step loads anyway (it is off the dS dependency chain).
    Grid: (N * H, cdiv(V, BV))."""
    o_t = tl.arange(0, BT)
    i_nh, i_v = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T_seq, NT_seq, boh = _seq_coords(i_n, T, cu_seqlens, chunk_offsets, BT, IS_VARLEN)
    c0 = i_v * BV
    dt = q.dtype.element_ty

    b_dh1 = tl.zeros([BK, BV], dtype=tl.float32)
    b_dh2 = tl.zeros([BK, BV], dtype=tl.float32)
    b_dh3 = tl.zeros([BK, BV], dtype=tl.float32)
    b_dh4 = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        p_dht = dht + i_nh.to(tl.int64) * K * V
        b_dh1 += _ld(p_dht, K, V, V, 0, c0, BK, BV).to(tl.float32)
        if K > BK:
            b_dh2 += _ld(p_dht, K, V, V, BK, c0, BK, BV).to(tl.float32)
        if K > 2 * BK:
            b_dh3 += _ld(p_dht, K, V, V, 2 * BK, c0, BK, BV).to(tl.float32)
        if K > 3 * BK:
            b_dh4 += _ld(p_dht, K, V, V, 3 * BK, c0, BK, BV).to(tl.float32)

    for i_r in range(NT_seq):
        i_c = NT_seq - 1 - i_r
        t0 = bos + i_c * BT
        T_rem = T_seq - i_c * BT
        p_dh = dh + ((boh + i_c) * H + i_h) * K * V
        p_q = q + (t0 * H + i_h) * K
        p_k = k + (t0 * H + i_h) * K
        p_w = w + (t0 * H + i_h) * K
        b_q = _ld(p_q, T_rem, K, H * K, 0, 0, BT, BK)
        b_k = _ld(p_k, T_rem, K, H * K, 0, 0, BT, BK)
        b_w = _ld(p_w, T_rem, K, H * K, 0, 0, BT, BK)
        b_do = _ld(do + (t0 * H + i_h) * V, T_rem, V, H * V, 0, c0, BT, BV)
        if INLINE_DV:
            b_A = tl.dot(b_k, tl.trans(b_q), input_precision=PREC)
            b_A = tl.where(o_t[:, None] <= o_t[None, :], b_A * scale, 0.)
            b_dv = tl.dot(b_A.to(dt), b_do, input_precision=PREC)
        else:
            b_dv = _ld(dv_local + (t0 * H + i_h) * V, T_rem, V, H * V, 0, c0, BT, BV).to(tl.float32)
        _st(p_dh, b_dh1, K, V, V, 0, c0, BK, BV)
        b_dv += tl.dot(b_k, b_dh1.to(dt), input_precision=PREC)
        if K > BK:
            _st(p_dh, b_dh2, K, V, V, BK, c0, BK, BV)
            b_dv += tl.dot(_ld(p_k, T_rem, K, H * K, 0, BK, BT, BK), b_dh2.to(dt), input_precision=PREC)
        if K > 2 * BK:
            _st(p_dh, b_dh3, K, V, V, 2 * BK, c0, BK, BV)
            b_dv += tl.dot(_ld(p_k, T_rem, K, H * K, 0, 2 * BK, BT, BK), b_dh3.to(dt), input_precision=PREC)
        if K > 3 * BK:
            _st(p_dh, b_dh4, K, V, V, 3 * BK, c0, BK, BV)
            b_dv += tl.dot(_ld(p_k, T_rem, K, H * K, 0, 3 * BK, BT, BK), b_dh4.to(dt), input_precision=PREC)
        _st(dv_new + (t0 * H + i_h) * V, b_dv, T_rem, V, H * V, 0, c0, BT, BV)
        b_dvd = b_dv.to(dt)
        b_dh1 += tl.dot(tl.trans((b_q * scale).to(dt)), b_do, input_precision=PREC)
        b_dh1 -= tl.dot(tl.trans(b_w), b_dvd, input_precision=PREC)
        if K > BK:
            b_q = _ld(p_q, T_rem, K, H * K, 0, BK, BT, BK)
            b_w = _ld(p_w, T_rem, K, H * K, 0, BK, BT, BK)
            b_dh2 += tl.dot(tl.trans((b_q * scale).to(dt)), b_do, input_precision=PREC)
            b_dh2 -= tl.dot(tl.trans(b_w), b_dvd, input_precision=PREC)
        if K > 2 * BK:
            b_q = _ld(p_q, T_rem, K, H * K, 0, 2 * BK, BT, BK)
            b_w = _ld(p_w, T_rem, K, H * K, 0, 2 * BK, BT, BK)
            b_dh3 += tl.dot(tl.trans((b_q * scale).to(dt)), b_do, input_precision=PREC)
            b_dh3 -= tl.dot(tl.trans(b_w), b_dvd, input_precision=PREC)
        if K > 3 * BK:
            b_q = _ld(p_q, T_rem, K, H * K, 0, 3 * BK, BT, BK)
            b_w = _ld(p_w, T_rem, K, H * K, 0, 3 * BK, BT, BK)
            b_dh4 += tl.dot(tl.trans((b_q * scale).to(dt)), b_do, input_precision=PREC)
            b_dh4 -= tl.dot(tl.trans(b_w), b_dvd, input_precision=PREC)

    if STORE_DH0:
        p_dh0 = dh0 + i_nh.to(tl.int64) * K * V
        _st(p_dh0, b_dh1, K, V, V, 0, c0, BK, BV)
        if K > BK:
            _st(p_dh0, b_dh2, K, V, V, BK, c0, BK, BV)
        if K > 2 * BK:
            _st(p_dh0, b_dh3, K, V, V, 2 * BK, c0, BK, BV)
        if K > 3 * BK:
            _st(p_dh0, b_dh4, K, V, V, 3 * BK, c0, BK, BV)


@triton.jit
def _bwd_dqkw_kernel(
    q, k, v_new, do, h, dh, dv_new, dq, dk, dw,
    cu_seqlens, chunk_indices,
    scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, PREC: tl.constexpr, FOLD: tl.constexpr,
):
    """Per chunk, with S = h (state before), dS = dh (gradient of the state after), D = tril(dO V'^T):
    dQ = scale (dO S^T + D K), dK_partial = V' dS^T + scale D^T Q, dW = -dV' S^T.
    Grid: (total chunks * H, cdiv(K, BK))."""
    i_p, i_k = _block_ids(tl.cdiv(K, BK), FOLD)
    i_h = i_p % H
    i_tg = i_p // H
    bos, T_seq, i_c = _chunk_coords(i_tg, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    t0 = bos + i_c * BT
    T_rem = T_seq - i_c * BT
    o_t = tl.arange(0, BT)
    o_hs = (i_tg.to(tl.int64) * H + i_h) * K * V

    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)
    b_ds = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in tl.static_range((V + BV - 1) // BV):
        b_vn = _ld(v_new + (t0 * H + i_h) * V, T_rem, V, H * V, 0, i_v * BV, BT, BV)
        b_do = _ld(do + (t0 * H + i_h) * V, T_rem, V, H * V, 0, i_v * BV, BT, BV)
        b_dv = _ld(dv_new + (t0 * H + i_h) * V, T_rem, V, H * V, 0, i_v * BV, BT, BV)
        b_h = _ld(h + o_hs, K, V, V, i_k * BK, i_v * BV, BK, BV)
        b_dh = _ld(dh + o_hs, K, V, V, i_k * BK, i_v * BV, BK, BV)
        b_ds += tl.dot(b_do, tl.trans(b_vn), input_precision=PREC)
        b_dq += tl.dot(b_do, tl.trans(b_h), input_precision=PREC)
        b_dk += tl.dot(b_vn, tl.trans(b_dh), input_precision=PREC)
        b_dw += tl.dot(b_dv, tl.trans(b_h), input_precision=PREC)
    b_ds = tl.where(o_t[:, None] >= o_t[None, :], b_ds * scale, 0.)
    b_q = _ld(q + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
    b_k = _ld(k + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
    b_dsd = b_ds.to(b_q.dtype)
    b_dq = b_dq * scale + tl.dot(b_dsd, b_k, input_precision=PREC)
    b_dk += tl.dot(tl.trans(b_dsd), b_q, input_precision=PREC)
    _st(dq + (t0 * H + i_h) * K, b_dq, T_rem, K, H * K, 0, i_k * BK, BT, BK)
    _st(dk + (t0 * H + i_h) * K, b_dk, T_rem, K, H * K, 0, i_k * BK, BT, BK)
    _st(dw + (t0 * H + i_h) * K, (-b_dw), T_rem, K, H * K, 0, i_k * BK, BT, BK)


@triton.jit
def _wy_bwd_kernel(
    k, v, beta, A, dw, du, dk_part, dk, dv, dbeta,
    cu_seqlens, chunk_indices,
    T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
):
    """Back through W = A diag(b) K, U = A diag(b) V, A = (I + L)^-1, L = strict_tril(diag(b) K K^T):
    dA = dW (bK)^T + dU (bV)^T, dL = -strict_tril(A^T dA A^T), G = diag(b) dL,
    dk = dk_part + b * (A^T dW) + G K + G^T K, dv = b * (A^T dU),
    dbeta = rowsum((A^T dW) * K) + rowsum((A^T dU) * V) + rowsum(dL * K K^T).  Grid: (total chunks * H,)."""
    i_p = tl.program_id(0)
    i_h = i_p % H
    i_tg = i_p // H
    bos, T_seq, i_c = _chunk_coords(i_tg, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    t0 = bos + i_c * BT
    T_rem = T_seq - i_c * BT
    o_t = tl.arange(0, BT)
    m_t = o_t < T_rem

    b_beta = tl.load(beta + (t0 + o_t) * H + i_h, mask=m_t, other=0.).to(tl.float32)
    b_Ad = _ld(A + (t0 * H + i_h) * BT, T_rem, BT, H * BT, 0, 0, BT, BT).to(k.dtype.element_ty)

    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    b_KK = tl.zeros([BT, BT], dtype=tl.float32)
    b_db = tl.zeros([BT], dtype=tl.float32)
    for i_k in tl.static_range((K + BK - 1) // BK):
        b_k = _ld(k + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
        b_dw = _ld(dw + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
        b_kb = (b_k * b_beta[:, None]).to(b_k.dtype)
        b_dA += tl.dot(b_dw, tl.trans(b_kb), input_precision=PREC)
        b_KK += tl.dot(b_k, tl.trans(b_k), input_precision=PREC)
        b_dX = tl.dot(tl.trans(b_Ad), b_dw, input_precision=PREC)
        b_db += tl.sum(b_dX * b_k.to(tl.float32), 1)
    for i_v in tl.static_range((V + BV - 1) // BV):
        b_v = _ld(v + (t0 * H + i_h) * V, T_rem, V, H * V, 0, i_v * BV, BT, BV)
        b_du = _ld(du + (t0 * H + i_h) * V, T_rem, V, H * V, 0, i_v * BV, BT, BV)
        b_vb = (b_v * b_beta[:, None]).to(b_v.dtype)
        b_dA += tl.dot(b_du, tl.trans(b_vb), input_precision=PREC)
        b_dY = tl.dot(tl.trans(b_Ad), b_du, input_precision=PREC)
        b_db += tl.sum(b_dY * b_v.to(tl.float32), 1)
        _st(dv + (t0 * H + i_h) * V, (b_dY * b_beta[:, None]), T_rem, V, H * V, 0, i_v * BV, BT, BV)

    b_dA = tl.dot(tl.trans(b_Ad), b_dA.to(b_Ad.dtype), input_precision=PREC)
    b_dA = tl.dot(b_dA.to(b_Ad.dtype), tl.trans(b_Ad), input_precision=PREC)
    b_dL = tl.where(o_t[:, None] > o_t[None, :], -b_dA, 0.)
    b_db += tl.sum(b_dL * b_KK, 1)
    b_G = (b_dL * b_beta[:, None]).to(b_Ad.dtype)
    for i_k in tl.static_range((K + BK - 1) // BK):
        b_k = _ld(k + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
        b_dw = _ld(dw + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
        b_dX = tl.dot(tl.trans(b_Ad), b_dw, input_precision=PREC)
        b_dk = _ld(dk_part + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK).to(tl.float32) + b_dX * b_beta[:, None]
        b_dk += tl.dot(b_G, b_k, input_precision=PREC)
        b_dk += tl.dot(tl.trans(b_G), b_k, input_precision=PREC)
        _st(dk + (t0 * H + i_h) * K, b_dk, T_rem, K, H * K, 0, i_k * BK, BT, BK)
    tl.store(dbeta + (t0 + o_t) * H + i_h, b_db.to(dbeta.dtype.element_ty), mask=m_t)


# ----------------------------------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------------------------------


# Launch settings per kernel (num_warps, num_stages), and the algorithm switches; a module-level table so that
# benchmarks/bench_chunk_tuning.py can sweep them. Values chosen from that sweep on an H200 (see
# benchmarks/NOTES_delta_rule.md).  With AUTOTUNE (opt-in: DELTANET_AUTOTUNE=1; compiled CUDA only) each kernel
# instead picks its settings among TUNE_CONFIGS the first time it meets a new (dtype, H, K, V, chunk size, ...) and
# keeps them.  Off by default: its key has no T, so it keeps what it picked at the first sequence length, and on the
# H200 that made T = 32768 11% slower (4.87 vs 4.36 ms fwd+bwd) after tuning at T = 2048.  The pick also depends on
# timing, so two autotuned runs may round differently.
LAUNCH = {
    "wy_fwd": (4, 2),
    "fwd_h": (4, 2),
    "fwd_o": (4, 2),
    "bwd_dv_local": (4, 2),
    "bwd_dhu": (4, 2),
    "bwd_dqkw": (4, 2),
    "wy_bwd": (4, 2),
}
AUTOTUNE = os.environ.get("DELTANET_AUTOTUNE", "0") == "1"
TUNE_CONFIGS = {
    "parallel": [(4, 2), (8, 2), (2, 2), (8, 1)],  # chunk-parallel kernels (their K/V loops are unrolled)
    "sequential": [(4, 2), (8, 2), (2, 2)],  # the two walks over chunks (fwd_h, bwd_dhu)
}
_SEQUENTIAL = ("fwd_h", "bwd_dhu")
_TUNED: dict = {}
# Settings for "wide" calls (K or V > 128) where they differ from the above: LAUNCH_WIDE (num_warps, num_stages) per
# kernel, and per chunk-parallel kernel the (BK, BV) tile, TILES (every call) and TILES_WIDE (wide calls), which
# override _Meta's default 64 x 64 blocks.  Filled from benchmarks/bench_chunk_tuning.py's sweep at (4, 4096, 8, 256).
# Sweep of 2026-11-28 (benchmarks/results/chunk/s3c2_tune_k256.json): with 8 warps the two walks hold their four
# [64, 64] float32 state blocks in 64 rather than 128 registers per thread; fwd_h 0.386 -> 0.281 ms, bwd_dhu (with
# dv_local) 0.601 -> 0.532 ms.  The V block stays 64 (32 is faster for fwd_h alone, slower for the pair).
LAUNCH_WIDE: dict = {"fwd_h": (8, 2), "bwd_dhu": (8, 2)}
TILES: dict = {}
TILES_WIDE: dict = {}
BLOCKED_INV = True  # (I + L)^-1 by 16x16 diagonal blocks + merge (False: row-by-row substitution on BT x BT)
SEQ_BV = None  # V block of the sequential kernels (None: 32 for K <= 128, 64 above; see _Meta)
# Whether the backward reuses the forward's chunk states h and V' (kept in memory) instead of re-running the state walk:
# True, False, or "auto" = only for K > 128, where the walk is the largest part of the backward (0.38 of ~2.6 ms at
# (4, 4096, 8, 256)) and h is 4x the size of q (2 * K * V bytes per chunk and head in bf16).  At K <= 128 the
# recomputation is cheaper than the memory (24 layers of a 340M model would keep ~1.6 GB more at B = 8, T = 2048).
KEEP_STATES = "auto"
# tl.dot precision of float32 calls (bf16/fp16 operands multiply exactly on tensor cores whatever this says):
# "tf32x3" splits each operand into a TF32 high and low part and sums three tensor-core products; "ieee" multiplies on
# CUDA cores.  Measured on the H200 (benchmarks/bench_fp32_precision.py, NOTES_delta_rule.md v8): both are ~2e-7 to
# 7e-7 from float64 on o, state and every gradient; "ieee" is 5x slower at (2, 333, 2, 128, 100) and 18x at
# (2, 2048, 4, 128, 128), two of its backward kernels take 29-77 s each to compile (tf32x3: 5-11 s), and the float32
# GPU test at K = 200, V = 256 had not finished after ~540 s (tf32x3: 0.5 s warm, ~70 s of compiles cold).  "tf32"
# alone keeps a 10-bit mantissa: not float32 accuracy.
FP32_PREC = "tf32x3"


def _is_wide(K: int, V: int) -> bool:
    """Whether a call takes the LAUNCH_WIDE / TILES_WIDE settings."""
    return K > 128 or V > 128


def _keep_states(K: int) -> bool:
    return KEEP_STATES is True or (KEEP_STATES == "auto" and K > 128)


# Grid of the chunk-parallel kernels with several K or V blocks per chunk (fwd_o, dv_local: V blocks; bwd_dqkw: K
# blocks): True folds the blocks into grid axis 0 next to each other (they share their q, k, dO, V' tiles through L2),
# False keeps them on axis 1 (then the blocks of one chunk run ~N*H*chunks programs apart), "auto" folds at more than
# two blocks (K or V > 128; not yet measured: at K, V <= 128 the 2-D grid is the measured setting).
FOLD_BLOCKS = "auto"


def _block_grid(m: "_Meta", nb: int):
    """(grid, fold) for a chunk-parallel kernel with nb blocks per chunk and head."""
    fold = FOLD_BLOCKS is True or (FOLD_BLOCKS == "auto" and nb > 2)
    return ((m.NT * m.H * nb,) if fold else (m.NT * m.H, nb)), fold


def tuned_configs() -> dict:
    """What AUTOTUNE picked so far: {kernel: {key: 'num_warps=.., num_stages=..'}} (for benchmark reports)."""
    return {name: {str(k): f"num_warps={c.num_warps}, num_stages={c.num_stages}" for k, c in t.cache.items()}
            for name, t in _TUNED.items()}


def _launch(name: str, kernel, grid, *args, **consts) -> None:
    """Launch `kernel` with its LAUNCH settings, or through a triton.autotune wrapper (built once per kernel, keyed
    on every constexpr argument plus the tensors' dtypes) when AUTOTUNE is on and the kernels are compiled."""
    global AUTOTUNE
    if AUTOTUNE and not triton_interpret_enabled():
        tuned = _TUNED.get(name)
        if tuned is None:
            kind = "sequential" if name in _SEQUENTIAL else "parallel"
            configs = [triton.Config({}, num_warps=w, num_stages=st) for w, st in TUNE_CONFIGS[kind]]
            tuned = _TUNED[name] = triton.autotune(configs=configs, key=sorted(consts))(kernel)
        try:
            tuned[grid](*args, **consts)
            return
        except Exception as e:  # noqa: BLE001 - an autotuner fault must not stop training: warn, use fixed settings
            AUTOTUNE = False
            warnings.warn(f"chunk_delta_rule: autotuning {name} failed ({type(e).__name__}: {e}); using the fixed "
                          "LAUNCH settings from now on", RuntimeWarning)
    cfg = (LAUNCH_WIDE.get(name) if _is_wide(consts["K"], consts["V"]) else None) or LAUNCH[name]
    key = None
    if _FALLBACK:  # built only once some launch has fallen back (kept off the usual launch path)
        key = (name, cfg, tuple(sorted(consts.items())), args[0].dtype)
        cfg = _FALLBACK.get(key, cfg)
    while True:
        try:
            kernel[grid](*args, **consts, num_warps=cfg[0], num_stages=cfg[1])
            return
        except OutOfResources:  # raised before the kernel runs: nothing was written, so a retry is safe
            smaller = _smaller_launch(cfg)
            if smaller is None:
                raise
            if key is None:
                key = (name, cfg, tuple(sorted(consts.items())), args[0].dtype)
            cfg = _FALLBACK[key] = smaller


# Launch settings that replaced a LAUNCH / LAUNCH_WIDE entry because it needed more shared memory than the GPU has,
# per (kernel, setting asked for, constexprs, dtype): float32 tiles are twice the size of bf16 ones (the K = 200..256 float32 backward
# walk needs 245,760 bytes at num_stages=2 with 8 warps, the H200 has 232,448).
_FALLBACK: dict = {}


def _smaller_launch(cfg):
    """The next (num_warps, num_stages) to try after an out-of-shared-memory error: fewer pipeline stages first,
    then 4 warps; None when nothing smaller is left."""
    num_warps, num_stages = cfg
    if num_stages > 1:
        return num_warps, num_stages - 1
    if num_warps > 4:
        return 4, 1
    return None


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _tiles(m: "_Meta", name: str):
    """(BK, BV) of a chunk-parallel kernel: TILES, else TILES_WIDE for K or V > 128, else _Meta's 64 x 64 blocks
    (each capped at the padded K, V)."""
    t = TILES.get(name) or (TILES_WIDE.get(name) if _is_wide(m.K, m.V) else None)
    if t is None:
        return m.BK, m.BV
    BK, BV = min(t[0], _pow2(m.K)), min(t[1], _pow2(m.V))
    if triton.cdiv(m.K, BK) > 4 or triton.cdiv(m.V, BV) > 4:
        # on the H200, bwd_dqkw with BK = 32 and wy_bwd with BV = 32 at K = V = 256 (8 blocks per chunk) faulted with
        # an illegal memory access (benchmarks/results/chunk/s3c3_tune_k256_isolated.json); never run untested there
        raise ValueError(f"chunk_delta_rule: tile {t} for {name} gives more than 4 blocks per chunk at K={m.K}, "
                         f"V={m.V}; use BK >= K/4 and BV >= V/4")
    return BK, BV



class _Meta:
    """Shapes and launch constants shared by the forward and backward launchers of one call."""

    def __init__(self, q: torch.Tensor, v: torch.Tensor, cu_seqlens: Optional[torch.Tensor], chunk_size: int):
        self.B, self.T, self.H, self.K = q.shape
        self.V = v.shape[-1]
        self.BT = chunk_size
        self.is_varlen = cu_seqlens is not None
        if self.is_varlen:
            self.N = cu_seqlens.numel() - 1
            self.chunk_indices = prepare_chunk_indices(cu_seqlens, chunk_size)
            self.chunk_offsets = prepare_chunk_offsets(cu_seqlens, chunk_size)
            self.NT = self.chunk_indices.shape[0]  # chunks over all sequences
        else:
            self.N = self.B
            self.chunk_indices = self.chunk_offsets = None
            self.NT = self.B * triton.cdiv(self.T, chunk_size)
        self.cu_seqlens = cu_seqlens
        self.prec = FP32_PREC if q.dtype == torch.float32 else "tf32"
        self.BK = min(64, _pow2(self.K))  # K block: <= 4 of them cover K <= 256
        self.BV = min(64, _pow2(self.V))
        # sequential kernels: all of K in one [BKs, BV] state tile up to K = 128, else row blocks of 64
        self.BKs = _pow2(self.K) if self.K <= 128 else 64
        self.BVs = min(SEQ_BV if SEQ_BV is not None else (64 if self.K > 128 else 32), _pow2(self.V))


def _wy_fwd(m: _Meta, k, v, beta, A=None, need_u=True):
    """Returns (A, w, u); A is computed unless given (the backward recomputes W, U from the stored A); u is None
    unless need_u."""
    load_A = A is not None
    if A is None:
        A = k.new_empty(m.B, m.T, m.H, m.BT)
    w = torch.empty_like(k)
    u = torch.empty_like(v) if need_u else None
    BK, BV = _tiles(m, "wy_fwd")
    _launch(
        "wy_fwd", _wy_fwd_kernel, (m.NT * m.H,),
        k, v, beta, A, w, u, m.cu_seqlens, m.chunk_indices, m.T,
        H=m.H, K=m.K, V=m.V, BT=m.BT, BK=BK, BV=BV,
        LOAD_A=load_A, BLOCKED_INV=BLOCKED_INV and m.BT > 16, IS_VARLEN=m.is_varlen, PREC=m.prec, STORE_U=need_u,
    )
    return A, w, u


def _fwd_h(m: _Meta, k, w, u, initial_state, output_final_state):
    h = k.new_empty(m.NT, m.H, m.K, m.V)
    v_new = torch.empty_like(u)
    ht = k.new_empty(m.N, m.H, m.K, m.V, dtype=torch.float32) if output_final_state else None
    grid = (m.N * m.H, triton.cdiv(m.V, m.BVs))
    _launch(
        "fwd_h", _fwd_h_kernel, grid,
        k, w, u, v_new, h, initial_state, ht, m.cu_seqlens, m.chunk_offsets, m.T,
        H=m.H, K=m.K, V=m.V, BT=m.BT, BK=m.BKs, BV=m.BVs,
        USE_H0=initial_state is not None, STORE_FINAL=output_final_state, IS_VARLEN=m.is_varlen, PREC=m.prec,
    )
    return h, v_new, ht


def _fwd_o(m: _Meta, q, k, v_new, h, scale):
    o = torch.empty_like(v_new)
    BK, BV = _tiles(m, "fwd_o")
    grid, fold = _block_grid(m, triton.cdiv(m.V, BV))
    _launch(
        "fwd_o", _fwd_o_kernel, grid,
        q, k, v_new, h, o, m.cu_seqlens, m.chunk_indices, scale, m.T,
        H=m.H, K=m.K, V=m.V, BT=m.BT, BK=BK, BV=BV, IS_VARLEN=m.is_varlen, PREC=m.prec, FOLD=fold,
    )
    return o


def _bwd_dv_local(m: _Meta, q, k, do, scale):
    dv_local = torch.empty_like(do)
    BK, BV = _tiles(m, "bwd_dv_local")
    grid, fold = _block_grid(m, triton.cdiv(m.V, BV))
    _launch(
        "bwd_dv_local", _bwd_dv_local_kernel, grid,
        q, k, do, dv_local, m.cu_seqlens, m.chunk_indices, scale, m.T,
        H=m.H, K=m.K, V=m.V, BT=m.BT, BK=BK, BV=BV, IS_VARLEN=m.is_varlen, PREC=m.prec, FOLD=fold,
    )
    return dv_local


def _bwd_dhu(m: _Meta, q, k, w, do, dht, scale, need_dh0):
    inline_dv = m.BKs >= m.K
    dv_local = None if inline_dv else _bwd_dv_local(m, q, k, do, scale)
    dh = q.new_empty(m.NT, m.H, m.K, m.V)
    dv_new = torch.empty_like(do)
    dh0 = q.new_empty(m.N, m.H, m.K, m.V, dtype=torch.float32) if need_dh0 else None
    grid = (m.N * m.H, triton.cdiv(m.V, m.BVs))
    _launch(
        "bwd_dhu", _bwd_dhu_kernel, grid,
        q, k, w, do, dv_local, dv_new, dh, dht, dh0, m.cu_seqlens, m.chunk_offsets, scale, m.T,
        H=m.H, K=m.K, V=m.V, BT=m.BT, BK=m.BKs, BV=m.BVs,
        USE_DHT=dht is not None, STORE_DH0=need_dh0, INLINE_DV=inline_dv, IS_VARLEN=m.is_varlen, PREC=m.prec,
    )
    return dv_new, dh, dh0


def _bwd_dqkw(m: _Meta, q, k, v_new, do, h, dh, dv_new, scale):
    dq, dk_part, dw = torch.empty_like(q), torch.empty_like(k), torch.empty_like(k)
    BK, BV = _tiles(m, "bwd_dqkw")
    grid, fold = _block_grid(m, triton.cdiv(m.K, BK))
    _launch(
        "bwd_dqkw", _bwd_dqkw_kernel, grid,
        q, k, v_new, do, h, dh, dv_new, dq, dk_part, dw, m.cu_seqlens, m.chunk_indices, scale, m.T,
        H=m.H, K=m.K, V=m.V, BT=m.BT, BK=BK, BV=BV, IS_VARLEN=m.is_varlen, PREC=m.prec, FOLD=fold,
    )
    return dq, dk_part, dw


def _wy_bwd(m: _Meta, k, v, beta, A, dw, du, dk_part):
    dk, dv, dbeta = torch.empty_like(k), torch.empty_like(v), torch.empty_like(beta)
    BK, BV = _tiles(m, "wy_bwd")
    _launch(
        "wy_bwd", _wy_bwd_kernel, (m.NT * m.H,),
        k, v, beta, A, dw, du, dk_part, dk, dv, dbeta, m.cu_seqlens, m.chunk_indices, m.T,
        H=m.H, K=m.K, V=m.V, BT=m.BT, BK=BK, BV=BV, IS_VARLEN=m.is_varlen, PREC=m.prec,
    )
    return dk, dv, dbeta


def chunk_delta_rule_fwd(q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens, chunk_size):
    """Forward pass on contiguous, validated inputs. Returns (o, final_state or None, A, h, v_new)."""
    m = _Meta(q, v, cu_seqlens, chunk_size)
    A, w, u = _wy_fwd(m, k, v, beta)
    h, v_new, ht = _fwd_h(m, k, w, u, initial_state, output_final_state)
    o = _fwd_o(m, q, k, v_new, h, scale)
    return o, ht, A, h, v_new


def chunk_delta_rule_bwd(q, k, v, beta, A, scale, initial_state, do, dht, cu_seqlens, chunk_size, h=None, v_new=None):
    """Backward pass: recomputes W, U (from the stored A) and, unless the forward's h and V' are given, the chunk
    states h and V'; then runs the gradient kernels.  Returns (dq, dk, dv, dbeta, dh0 or None)."""
    m = _Meta(q, v, cu_seqlens, chunk_size)
    _, w, u = _wy_fwd(m, k, v, beta, A=A, need_u=h is None)  # U only feeds the state walk
    if h is None:
        h, v_new, _ = _fwd_h(m, k, w, u, initial_state, False)
    dv_new, dh, dh0 = _bwd_dhu(m, q, k, w, do, dht, scale, initial_state is not None)
    dq, dk_part, dw = _bwd_dqkw(m, q, k, v_new, do, h, dh, dv_new, scale)
    dk, dv, dbeta = _wy_bwd(m, k, v, beta, A, dw, dv_new, dk_part)
    return dq, dk, dv, dbeta, dh0


class ChunkDeltaRuleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens, chunk_size):
        o, ht, A, h, v_new = chunk_delta_rule_fwd(q, k, v, beta, scale, initial_state, output_final_state,
                                                  cu_seqlens, chunk_size)
        if not _keep_states(q.shape[-1]):
            h = v_new = None  # the backward recomputes them
        ctx.save_for_backward(q, k, v, beta, A, initial_state, cu_seqlens, h, v_new)
        ctx.scale, ctx.chunk_size = scale, chunk_size
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, beta, A, initial_state, cu_seqlens, h, v_new = ctx.saved_tensors
        do = do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        dq, dk, dv, dbeta, dh0 = chunk_delta_rule_bwd(q, k, v, beta, A, ctx.scale, initial_state, do, dht,
                                                      cu_seqlens, ctx.chunk_size, h, v_new)
        if dh0 is not None:
            dh0 = dh0.to(initial_state.dtype)
        return dq, dk, dv, dbeta, None, dh0, None, None, None


def chunk_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    chunk_size: int = 64,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    r"""Delta rule, chunkwise parallel (WY representation / UT transform), forward and backward in Triton.

    Per (sequence, head), with state ``S`` of shape [K, V] starting at ``initial_state`` (zeros if None)::

        S_t = S_{t-1} + beta_t * k_t (v_t - S_{t-1}^T k_t)^T
        o_t = scale * S_t^T q_t

    q and k are used as given (no normalisation here; the layer normalises them).

    Args:
        q: [B, T, H, K] queries, bfloat16, float16 or float32 (CUDA, or CPU under ``TRITON_INTERPRET=1``).
        k: [B, T, H, K] keys, same dtype and device as q.
        v: [B, T, H, V] values, same dtype. K and V may each be any size in [16, 256] (powers of two or not).
        beta: [B, T, H] writing strengths (usually in (0, 1)), same dtype.
        scale: output scale; default ``K ** -0.5``.
        initial_state: optional [N, H, K, V] state before the first token (any supported dtype; gradients flow to it).
        output_final_state: also return the state after the last token, [N, H, K, V] float32.
        cu_seqlens: optional [N + 1] int32/int64 cumulative sequence lengths (starting at 0, ending at T) packing N
            sequences into B = 1; chunks never cross sequence boundaries and each sequence starts from its own
            initial_state row.
        chunk_size: tokens per chunk, 16, 32 or 64 (default 64).

    Returns:
        o: [B, T, H, V] in q's dtype; final_state: [N, H, K, V] float32, or None unless ``output_final_state``.

    Raises:
        ValueError: wrong shapes, dtypes or devices, non-monotone ``cu_seqlens``, or CPU tensors without
            ``TRITON_INTERPRET=1`` (use ``kernels.naive_chunk_delta_rule`` there).

    Example::

        >>> B, T, H, K, V = 2, 1000, 4, 64, 64
        >>> q = F.normalize(torch.randn(B, T, H, K, device="cuda", dtype=torch.bfloat16), dim=-1)
        >>> k = F.normalize(torch.randn(B, T, H, K, device="cuda", dtype=torch.bfloat16), dim=-1)
        >>> v = torch.randn(B, T, H, V, device="cuda", dtype=torch.bfloat16)
        >>> beta = torch.rand(B, T, H, device="cuda", dtype=torch.bfloat16)
        >>> o, state = chunk_delta_rule(q, k, v, beta, output_final_state=True)  # o: [2, 1000, 4, 64]
    """
    validate_inputs(q, k, v, beta, initial_state=initial_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    check_triton_runnable(q, k, v, beta, initial_state, cu_seqlens)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    q, k, v, beta = (x.contiguous() for x in (q, k, v, beta))
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.contiguous()
    return ChunkDeltaRuleFunction.apply(q, k, v, beta, float(scale), initial_state, bool(output_final_state),
                                        cu_seqlens, int(chunk_size))
