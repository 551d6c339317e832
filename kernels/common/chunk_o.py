"""Output and local gradients of each chunk, fully parallel over chunks and heads.

With S = h the state before a chunk, dS = dh the gradient of the state after it, V' the new values and dV' their
gradient (``chunk_h.py``)::

    O  = scale * (Q S + tril(Q K^T) V')                               (fwd_o_kernel)
    D  = tril(dO V'^T)
    dQ = scale * (dO S^T + D K),  dK_part = V' dS^T + scale D^T Q,  dW = -dV' S^T      (bwd_dqkw_kernel)

With a decay (``USE_G``; Gamma_ij = exp(G_i - G_j) for i >= j, G_C at the chunk's last token, dS the gradient of
the state after the chunk)::

    O  = scale * (diag(exp(G)) Q S + (Gamma * tril(Q K^T)) V')
    D  = Gamma * tril(dO V'^T)
    dQ = scale * (diag(exp(G)) dO S^T + D K),  dK_part = diag(exp(G_C - G)) V' dS^T + scale D^T Q,  dW = -dV' S^T

and bwd_dqkw also writes, per K block, its share of dG, the gradient of the cumulative log decay: rowsum(dQ_S * Q)
(dQ_S = the diag(exp(G)) dO S^T term), rowsum(M) - colsum(M) with M = scale D * (Q K^T), -rowsum(dK_S * K)
(dK_S = the dS term of dK_part), and at the last token exp(G_C) <S, dS> + sum(dK_S * K).

fwd_o has one program per (chunk * head, V block), bwd_dqkw one per (chunk * head, K block); with more than two
blocks per chunk they run on the folded grid (``launch.block_grid``).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .launch import ChunkMeta, block_grid, launch, tile_sizes
from .tiles import block_ids, chunk_coords, decay_tril, load_tile, store_tile

__all__ = ["bwd_dqkw", "bwd_dqkw_kernel", "fwd_o", "fwd_o_kernel"]


@triton.jit
def fwd_o_kernel(
    q, k, v_new, h, o, g,
    cu_seqlens, chunk_indices,
    scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, PREC: tl.constexpr, FOLD: tl.constexpr, USE_G: tl.constexpr = False,
):
    """O = scale * (Q S + tril(Q K^T) V') per chunk (USE_G: the decayed form).  Grid: (total chunks * H, cdiv(V, BV))."""
    i_p, i_v = block_ids(tl.cdiv(V, BV), FOLD)
    i_h = i_p % H
    i_tg = i_p // H
    bos, T_seq, i_c = chunk_coords(i_tg, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    t0 = bos + i_c * BT
    T_rem = T_seq - i_c * BT
    o_t = tl.arange(0, BT)

    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_s = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in tl.static_range((K + BK - 1) // BK):
        b_q = load_tile(q + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
        b_k = load_tile(k + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
        b_h = load_tile(h + (i_tg.to(tl.int64) * H + i_h) * K * V, K, V, V, i_k * BK, i_v * BV, BK, BV)
        b_o += tl.dot(b_q, b_h, input_precision=PREC)
        b_s += tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
    if USE_G:
        b_g = tl.load(g + (t0 + o_t) * H + i_h, mask=o_t < T_rem, other=0.)
        b_o = b_o * tl.exp(b_g)[:, None]
        b_s = b_s * decay_tril(b_g, T_rem, BT, False)
    b_s = tl.where(o_t[:, None] >= o_t[None, :], b_s, 0.)
    b_vn = load_tile(v_new + (t0 * H + i_h) * V, T_rem, V, H * V, 0, i_v * BV, BT, BV)
    b_o = (b_o + tl.dot(b_s.to(b_vn.dtype), b_vn, input_precision=PREC)) * scale
    store_tile(o + (t0 * H + i_h) * V, b_o, T_rem, V, H * V, 0, i_v * BV, BT, BV)


@triton.jit
def bwd_dqkw_kernel(
    q, k, v_new, do, h, dh, dv_new, dq, dk, dw, g, dg_part,
    cu_seqlens, chunk_indices,
    scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, PREC: tl.constexpr, FOLD: tl.constexpr, USE_G: tl.constexpr = False,
):
    """Per chunk, with S = h (state before), dS = dh (gradient of the state after), D = tril(dO V'^T):
    dQ = scale (dO S^T + D K), dK_partial = V' dS^T + scale D^T Q, dW = -dV' S^T.  With USE_G the decayed forms
    of the module docstring, and this K block's share of dG into dg_part[..., i_k] ([B, T, H, NK] float32).
    Grid: (total chunks * H, cdiv(K, BK))."""
    i_p, i_k = block_ids(tl.cdiv(K, BK), FOLD)
    i_h = i_p % H
    i_tg = i_p // H
    bos, T_seq, i_c = chunk_coords(i_tg, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    t0 = bos + i_c * BT
    T_rem = T_seq - i_c * BT
    o_t = tl.arange(0, BT)
    o_hs = (i_tg.to(tl.int64) * H + i_h) * K * V

    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)
    b_ds = tl.zeros([BT, BT], dtype=tl.float32)
    if USE_G:
        b_hdh = tl.zeros([BK, BV], dtype=tl.float32)  # S * dS, summed to <S, dS> of this K block
    for i_v in tl.static_range((V + BV - 1) // BV):
        b_vn = load_tile(v_new + (t0 * H + i_h) * V, T_rem, V, H * V, 0, i_v * BV, BT, BV)
        b_do = load_tile(do + (t0 * H + i_h) * V, T_rem, V, H * V, 0, i_v * BV, BT, BV)
        b_dv = load_tile(dv_new + (t0 * H + i_h) * V, T_rem, V, H * V, 0, i_v * BV, BT, BV)
        b_h = load_tile(h + o_hs, K, V, V, i_k * BK, i_v * BV, BK, BV)
        b_dh = load_tile(dh + o_hs, K, V, V, i_k * BK, i_v * BV, BK, BV)
        b_ds += tl.dot(b_do, tl.trans(b_vn), input_precision=PREC)
        b_dq += tl.dot(b_do, tl.trans(b_h), input_precision=PREC)
        b_dk += tl.dot(b_vn, tl.trans(b_dh), input_precision=PREC)
        b_dw += tl.dot(b_dv, tl.trans(b_h), input_precision=PREC)
        if USE_G:
            b_hdh += b_h.to(tl.float32) * b_dh.to(tl.float32)
    b_q = load_tile(q + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
    b_k = load_tile(k + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
    if USE_G:
        m_t = o_t < T_rem
        b_g = tl.load(g + (t0 + o_t) * H + i_h, mask=m_t, other=0.)
        b_gl = tl.load(g + (t0 + tl.minimum(T_rem, BT) - 1) * H + i_h)
        b_ds = b_ds * decay_tril(b_g, T_rem, BT, False)
        b_dq = b_dq * tl.exp(b_g)[:, None]
        b_dk = b_dk * tl.exp(tl.where(m_t, b_gl - b_g, 0.))[:, None]
    b_ds = tl.where(o_t[:, None] >= o_t[None, :], b_ds * scale, 0.)
    b_dsd = b_ds.to(b_q.dtype)
    if USE_G:
        b_qf = b_q.to(tl.float32)
        b_kf = b_k.to(tl.float32)
        b_M = b_ds * tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
        b_pk = tl.sum(b_dk * b_kf, 1)  # dK_S * K, row sums
        b_dg = tl.sum(b_dq * b_qf, 1) * scale + tl.sum(b_M, 1) - tl.sum(b_M, 0) - b_pk
        b_last = tl.exp(b_gl) * tl.sum(tl.sum(b_hdh, 1), 0) + tl.sum(b_pk, 0)
        b_dg += tl.where(o_t == tl.minimum(T_rem, BT) - 1, b_last, 0.)
        tl.store(dg_part + ((t0 + o_t) * H + i_h) * ((K + BK - 1) // BK) + i_k, b_dg, mask=m_t)
    b_dq = b_dq * scale + tl.dot(b_dsd, b_k, input_precision=PREC)
    b_dk += tl.dot(tl.trans(b_dsd), b_q, input_precision=PREC)
    store_tile(dq + (t0 * H + i_h) * K, b_dq, T_rem, K, H * K, 0, i_k * BK, BT, BK)
    store_tile(dk + (t0 * H + i_h) * K, b_dk, T_rem, K, H * K, 0, i_k * BK, BT, BK)
    store_tile(dw + (t0 * H + i_h) * K, (-b_dw), T_rem, K, H * K, 0, i_k * BK, BT, BK)


def fwd_o(m: ChunkMeta, q: torch.Tensor, k: torch.Tensor, v_new: torch.Tensor, h: torch.Tensor,
          scale: float, g: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Output of every chunk.

    Args:
        m: the call's :class:`ChunkMeta`.
        q, k: [B, T, H, K]; v_new: [B, T, H, V] = V'; h: [NT, H, K, V] the state before every chunk; one dtype.
        scale: output scale.
        g: optional [B, T, H] float32 within-chunk cumulative log decay G: the decayed output.

    Returns: o [B, T, H, V] in v_new's dtype.
    """
    o = torch.empty_like(v_new)
    BK, BV = tile_sizes(m, "fwd_o")
    grid, fold = block_grid(m, triton.cdiv(m.V, BV))
    launch(
        m.settings, "fwd_o", fwd_o_kernel, grid,
        q, k, v_new, h, o, g, m.cu_seqlens, m.chunk_indices, scale, m.T,
        H=m.H, K=m.K, V=m.V, BT=m.BT, BK=BK, BV=BV, IS_VARLEN=m.is_varlen, PREC=m.prec, FOLD=fold,
        USE_G=g is not None,
    )
    return o


def bwd_dqkw(m: ChunkMeta, q: torch.Tensor, k: torch.Tensor, v_new: torch.Tensor, do: torch.Tensor, h: torch.Tensor,
             dh: torch.Tensor, dv_new: torch.Tensor, scale: float, g: Optional[torch.Tensor] = None):
    """dq, the chunk-local part of dk, and dw.

    Args:
        m: the call's :class:`ChunkMeta`.
        q, k: [B, T, H, K]; v_new, do, dv_new: [B, T, H, V] (V', dO, dV'); h, dh: [NT, H, K, V] the state before
            and the state gradient after every chunk; one dtype.
        scale: output scale.
        g: optional [B, T, H] float32 within-chunk cumulative log decay G: the decayed gradients.

    Returns: (dq, dk_part, dw), each [B, T, H, K] in q's dtype; with g also dg_part [B, T, H] float32, the share
    of the gradient of G that these terms give (``wy.wy_bwd`` adds the rest).
    """
    dq, dk_part, dw = torch.empty_like(q), torch.empty_like(k), torch.empty_like(k)
    BK, BV = tile_sizes(m, "bwd_dqkw")
    nk = triton.cdiv(m.K, BK)
    dg_part = q.new_empty(m.B, m.T, m.H, nk, dtype=torch.float32) if g is not None else None
    grid, fold = block_grid(m, nk)
    launch(
        m.settings, "bwd_dqkw", bwd_dqkw_kernel, grid,
        q, k, v_new, do, h, dh, dv_new, dq, dk_part, dw, g, dg_part, m.cu_seqlens, m.chunk_indices, scale, m.T,
        H=m.H, K=m.K, V=m.V, BT=m.BT, BK=BK, BV=BV, IS_VARLEN=m.is_varlen, PREC=m.prec, FOLD=fold,
        USE_G=g is not None,
    )
    if g is None:
        return dq, dk_part, dw
    return dq, dk_part, dw, dg_part.sum(-1)
