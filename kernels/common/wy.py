"""WY representation of a chunk (UT transform): the unit-lower inverse, its forward kernel and its backward.

Within a chunk of BT tokens (rows are tokens), with L = strict_tril(diag(beta) K K^T)::

    A = (I + L)^-1,   W = A diag(beta) K,   U = A diag(beta) V

With a decay (``USE_G``: Gated DeltaNet; ``g`` holds G, the within-chunk cumulative sum of the log decays, float32
[B, T, H]) the chunk has Gamma_ij = exp(G_i - G_j) (i > j, masked before the exp) and::

    L = strict_tril(diag(beta) (Gamma * K K^T)),   W = A diag(beta exp(G)) K,   U = A diag(beta) V

(the derivation is in ``kernels/gated_delta_rule/chunk.py``).  Without ``USE_G`` the kernels compile to the plain
delta rule's code.

``wy_fwd_kernel`` computes A (or loads it), W and U per chunk, fully parallel over chunks and heads;
``wy_bwd_kernel`` goes back through it.  Two forms of the inverse: ``inv_unit_lower_blocked`` (the default; 16 x 16
diagonal blocks and a merge) and ``inv_unit_lower_rows`` (row-by-row forward substitution).  Loops over K and V
blocks are unrolled with ``tl.static_range`` (kernels/README.md: a triton 3.6 miscompile of the ``range`` form).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .launch import ChunkMeta, launch, tile_sizes
from .tiles import chunk_coords, decay_tril, load_tile, store_tile

__all__ = ["inv_unit_lower_blocked", "inv_unit_lower_rows", "wy_bwd", "wy_bwd_kernel", "wy_fwd", "wy_fwd_kernel"]


@triton.jit
def inv_unit_lower_rows(b_L, BT: tl.constexpr):
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
def inv_unit_lower_blocked(b_L, BT: tl.constexpr, PREC: tl.constexpr):
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
def wy_fwd_kernel(
    k, v, beta, A, w, u, g,
    cu_seqlens, chunk_indices,
    T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    LOAD_A: tl.constexpr, BLOCKED_INV: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
    STORE_U: tl.constexpr, USE_G: tl.constexpr = False,
):
    """A = (I + strict_tril(diag(beta) K K^T))^-1 (or loaded when LOAD_A), W = A diag(beta) K, U = A diag(beta) V
    (U only when STORE_U); with USE_G the decayed forms of the module docstring.  Grid: (total chunks * H,),
    chunk-major."""
    i_p = tl.program_id(0)
    i_h = i_p % H
    i_tg = i_p // H
    bos, T_seq, i_c = chunk_coords(i_tg, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    t0 = bos + i_c * BT  # first token of the chunk (int64)
    T_rem = T_seq - i_c * BT  # tokens of the sequence from t0 on

    o_t = tl.arange(0, BT)
    m_t = o_t < T_rem
    b_beta = tl.load(beta + (t0 + o_t) * H + i_h, mask=m_t, other=0.).to(tl.float32)
    if USE_G:
        b_g = tl.load(g + (t0 + o_t) * H + i_h, mask=m_t, other=0.)
    if LOAD_A:
        b_A = load_tile(A + (t0 * H + i_h) * BT, T_rem, BT, H * BT, 0, 0, BT, BT).to(tl.float32)
    else:
        b_KK = tl.zeros([BT, BT], dtype=tl.float32)
        for i_k in tl.static_range((K + BK - 1) // BK):
            b_k = load_tile(k + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
            b_KK += tl.dot(b_k, tl.trans(b_k), input_precision=PREC)
        if USE_G:
            b_KK = b_KK * decay_tril(b_g, T_rem, BT, True)  # Gamma * K K^T
        b_L = tl.where(o_t[:, None] > o_t[None, :], b_KK * b_beta[:, None], 0.)  # L = strict_tril(diag(b) K K^T)
        if BLOCKED_INV:
            b_A = inv_unit_lower_blocked(b_L, BT, PREC)
        else:
            b_A = inv_unit_lower_rows(b_L, BT)
        store_tile(A + (t0 * H + i_h) * BT, b_A, T_rem, BT, H * BT, 0, 0, BT, BT)

    b_Ad = b_A.to(k.dtype.element_ty)
    if USE_G:
        b_bw = b_beta * tl.exp(b_g)  # W's row weights beta exp(G)
    else:
        b_bw = b_beta
    for i_k in tl.static_range((K + BK - 1) // BK):
        b_k = load_tile(k + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
        b_kb = (b_k * b_bw[:, None]).to(b_k.dtype)
        b_w = tl.dot(b_Ad, b_kb, input_precision=PREC)
        store_tile(w + (t0 * H + i_h) * K, b_w, T_rem, K, H * K, 0, i_k * BK, BT, BK)
    if STORE_U:
        for i_v in tl.static_range((V + BV - 1) // BV):
            b_v = load_tile(v + (t0 * H + i_h) * V, T_rem, V, H * V, 0, i_v * BV, BT, BV)
            b_vb = (b_v * b_beta[:, None]).to(b_v.dtype)
            b_u = tl.dot(b_Ad, b_vb, input_precision=PREC)
            store_tile(u + (t0 * H + i_h) * V, b_u, T_rem, V, H * V, 0, i_v * BV, BT, BV)


@triton.jit
def wy_bwd_kernel(
    k, v, beta, A, dw, du, dk_part, dk, dv, dbeta, g, dg_part, dg,
    cu_seqlens, chunk_indices,
    T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, PREC: tl.constexpr, USE_G: tl.constexpr = False,
):
    """Back through W = A diag(b) K, U = A diag(b) V, A = (I + L)^-1, L = strict_tril(diag(b) K K^T):
    dA = dW (bK)^T + dU (bV)^T, dL = -strict_tril(A^T dA A^T), G = diag(b) dL,
    dk = dk_part + b * (A^T dW) + G K + G^T K, dv = b * (A^T dU),
    dbeta = rowsum((A^T dW) * K) + rowsum((A^T dU) * V) + rowsum(dL * K K^T).  Grid: (total chunks * H,).

    With USE_G (W = A diag(b e^G) K, L = strict_tril(diag(b) (Gamma * K K^T))): the b above becomes b e^G in W's
    terms and dL becomes dL * Gamma in L's; the gradient of G is dg_part (the other stages' share) +
    b e^G rowsum((A^T dW) * K) + rowsum(dL * L) - colsum(dL * L), and dg, the gradient of the per-token log decay,
    is its reverse cumulative sum over the chunk."""
    i_p = tl.program_id(0)
    i_h = i_p % H
    i_tg = i_p // H
    bos, T_seq, i_c = chunk_coords(i_tg, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    t0 = bos + i_c * BT
    T_rem = T_seq - i_c * BT
    o_t = tl.arange(0, BT)
    m_t = o_t < T_rem

    b_beta = tl.load(beta + (t0 + o_t) * H + i_h, mask=m_t, other=0.).to(tl.float32)
    b_Ad = load_tile(A + (t0 * H + i_h) * BT, T_rem, BT, H * BT, 0, 0, BT, BT).to(k.dtype.element_ty)
    if USE_G:
        b_g = tl.load(g + (t0 + o_t) * H + i_h, mask=m_t, other=0.)
        b_bw = b_beta * tl.exp(b_g)  # W's row weights
        b_dbw = tl.zeros([BT], dtype=tl.float32)  # rowsum((A^T dW) * K)
    else:
        b_bw = b_beta

    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    b_KK = tl.zeros([BT, BT], dtype=tl.float32)
    b_db = tl.zeros([BT], dtype=tl.float32)
    for i_k in tl.static_range((K + BK - 1) // BK):
        b_k = load_tile(k + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
        b_dw = load_tile(dw + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
        b_kb = (b_k * b_bw[:, None]).to(b_k.dtype)
        b_dA += tl.dot(b_dw, tl.trans(b_kb), input_precision=PREC)
        b_KK += tl.dot(b_k, tl.trans(b_k), input_precision=PREC)
        b_dX = tl.dot(tl.trans(b_Ad), b_dw, input_precision=PREC)
        if USE_G:
            b_dbw += tl.sum(b_dX * b_k.to(tl.float32), 1)
        else:
            b_db += tl.sum(b_dX * b_k.to(tl.float32), 1)
    for i_v in tl.static_range((V + BV - 1) // BV):
        b_v = load_tile(v + (t0 * H + i_h) * V, T_rem, V, H * V, 0, i_v * BV, BT, BV)
        b_du = load_tile(du + (t0 * H + i_h) * V, T_rem, V, H * V, 0, i_v * BV, BT, BV)
        b_vb = (b_v * b_beta[:, None]).to(b_v.dtype)
        b_dA += tl.dot(b_du, tl.trans(b_vb), input_precision=PREC)
        b_dY = tl.dot(tl.trans(b_Ad), b_du, input_precision=PREC)
        b_db += tl.sum(b_dY * b_v.to(tl.float32), 1)
        store_tile(dv + (t0 * H + i_h) * V, (b_dY * b_beta[:, None]), T_rem, V, H * V, 0, i_v * BV, BT, BV)

    b_dA = tl.dot(tl.trans(b_Ad), b_dA.to(b_Ad.dtype), input_precision=PREC)
    b_dA = tl.dot(b_dA.to(b_Ad.dtype), tl.trans(b_Ad), input_precision=PREC)
    b_dL = tl.where(o_t[:, None] > o_t[None, :], -b_dA, 0.)
    if USE_G:
        b_dL = b_dL * decay_tril(b_g, T_rem, BT, True)  # dL * Gamma
        b_dLL = b_dL * b_KK * b_beta[:, None]  # dL * L
        b_dgc = tl.load(dg_part + (t0 + o_t) * H + i_h, mask=m_t, other=0.)
        b_dgc += b_dbw * b_bw + tl.sum(b_dLL, 1) - tl.sum(b_dLL, 0)
        b_db += b_dbw * tl.exp(b_g)
        b_dgc = tl.where(m_t, b_dgc, 0.)
        b_dgt = tl.cumsum(b_dgc, 0)
        tl.store(dg + (t0 + o_t) * H + i_h, tl.sum(b_dgc, 0) - b_dgt + b_dgc, mask=m_t)  # reverse cumsum
    b_db += tl.sum(b_dL * b_KK, 1)
    b_G = (b_dL * b_beta[:, None]).to(b_Ad.dtype)
    for i_k in tl.static_range((K + BK - 1) // BK):
        b_k = load_tile(k + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
        b_dw = load_tile(dw + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
        b_dX = tl.dot(tl.trans(b_Ad), b_dw, input_precision=PREC)
        b_dk = load_tile(dk_part + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK).to(tl.float32)
        b_dk = b_dk + b_dX * b_bw[:, None]
        b_dk += tl.dot(b_G, b_k, input_precision=PREC)
        b_dk += tl.dot(tl.trans(b_G), b_k, input_precision=PREC)
        store_tile(dk + (t0 * H + i_h) * K, b_dk, T_rem, K, H * K, 0, i_k * BK, BT, BK)
    tl.store(dbeta + (t0 + o_t) * H + i_h, b_db.to(dbeta.dtype.element_ty), mask=m_t)


def wy_fwd(m: ChunkMeta, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, A: Optional[torch.Tensor] = None,
           need_u: bool = True, g: Optional[torch.Tensor] = None
           ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """WY representation of every chunk.

    Args:
        m: the call's :class:`ChunkMeta`.
        k: [B, T, H, K], v: [B, T, H, V], beta: [B, T, H], contiguous, one dtype (bfloat16, float16 or float32).
        A: optional [B, T, H, BT] (k's dtype) inverse from an earlier call: loaded instead of computed.
        need_u: also compute U (the backward with kept states needs only W).
        g: optional [B, T, H] float32 within-chunk cumulative log decay G (``cumsum.chunk_local_cumsum``): the
            decayed (Gated DeltaNet) forms of the module docstring.

    Returns:
        (A [B, T, H, BT], w [B, T, H, K], u [B, T, H, V] or None), in k's dtype.
    """
    load_A = A is not None
    if A is None:
        A = k.new_empty(m.B, m.T, m.H, m.BT)
    w = torch.empty_like(k)
    u = torch.empty_like(v) if need_u else None
    BK, BV = tile_sizes(m, "wy_fwd")
    launch(
        m.settings, "wy_fwd", wy_fwd_kernel, (m.NT * m.H,),
        k, v, beta, A, w, u, g, m.cu_seqlens, m.chunk_indices, m.T,
        H=m.H, K=m.K, V=m.V, BT=m.BT, BK=BK, BV=BV,
        LOAD_A=load_A, BLOCKED_INV=m.settings.blocked_inv and m.BT > 16, IS_VARLEN=m.is_varlen, PREC=m.prec,
        STORE_U=need_u, USE_G=g is not None,
    )
    return A, w, u


def wy_bwd(m: ChunkMeta, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, A: torch.Tensor, dw: torch.Tensor,
           du: torch.Tensor, dk_part: torch.Tensor, g: Optional[torch.Tensor] = None,
           dg_part: Optional[torch.Tensor] = None):
    """Gradients back through the WY representation.

    Args:
        m: the call's :class:`ChunkMeta`.
        k: [B, T, H, K], v: [B, T, H, V], beta: [B, T, H], A: [B, T, H, BT] (from :func:`wy_fwd`), one dtype.
        dw: [B, T, H, K] gradient of W; du: [B, T, H, V] gradient of U (= dV'); dk_part: [B, T, H, K] the part of dk
            computed outside the WY representation.  All in k's dtype.
        g: optional [B, T, H] float32 cumulative log decay G (as given to :func:`wy_fwd`); with it dg_part,
            [B, T, H] float32, the gradient of G from the other stages (``chunk_o.bwd_dqkw``).

    Returns:
        (dk [B, T, H, K], dv [B, T, H, V], dbeta [B, T, H]) in k's dtype; with g also dg [B, T, H] float32, the
        gradient of the per-token log decay (before the cumulative sum).
    """
    dk, dv, dbeta = torch.empty_like(k), torch.empty_like(v), torch.empty_like(beta)
    dg = torch.empty_like(g) if g is not None else None
    BK, BV = tile_sizes(m, "wy_bwd")
    launch(
        m.settings, "wy_bwd", wy_bwd_kernel, (m.NT * m.H,),
        k, v, beta, A, dw, du, dk_part, dk, dv, dbeta, g, dg_part, dg, m.cu_seqlens, m.chunk_indices, m.T,
        H=m.H, K=m.K, V=m.V, BT=m.BT, BK=BK, BV=BV, IS_VARLEN=m.is_varlen, PREC=m.prec, USE_G=g is not None,
    )
    if g is None:
        return dk, dv, dbeta
    return dk, dv, dbeta, dg
