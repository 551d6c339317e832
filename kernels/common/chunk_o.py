"""Output and local gradients of each chunk, fully parallel over chunks and heads.

With S = h the state before a chunk, dS = dh the gradient of the state after it, V' the new values and dV' their
gradient (``chunk_h.py``)::

    O  = scale * (Q S + tril(Q K^T) V')                               (fwd_o_kernel)
    D  = tril(dO V'^T)
    dQ = scale * (dO S^T + D K),  dK_part = V' dS^T + scale D^T Q,  dW = -dV' S^T      (bwd_dqkw_kernel)

fwd_o has one program per (chunk * head, V block), bwd_dqkw one per (chunk * head, K block); with more than two
blocks per chunk they run on the folded grid (``launch.block_grid``).
"""

from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from .launch import ChunkMeta, block_grid, launch, tile_sizes
from .tiles import block_ids, chunk_coords, load_tile, store_tile

__all__ = ["bwd_dqkw", "bwd_dqkw_kernel", "fwd_o", "fwd_o_kernel"]


@triton.jit
def fwd_o_kernel(
    q, k, v_new, h, o,
    cu_seqlens, chunk_indices,
    scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, PREC: tl.constexpr, FOLD: tl.constexpr,
):
    """O = scale * (Q S + tril(Q K^T) V') per chunk.  Grid: (total chunks * H, cdiv(V, BV))."""
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
    b_s = tl.where(o_t[:, None] >= o_t[None, :], b_s, 0.)
    b_vn = load_tile(v_new + (t0 * H + i_h) * V, T_rem, V, H * V, 0, i_v * BV, BT, BV)
    b_o = (b_o + tl.dot(b_s.to(b_vn.dtype), b_vn, input_precision=PREC)) * scale
    store_tile(o + (t0 * H + i_h) * V, b_o, T_rem, V, H * V, 0, i_v * BV, BT, BV)


@triton.jit
def bwd_dqkw_kernel(
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
    b_ds = tl.where(o_t[:, None] >= o_t[None, :], b_ds * scale, 0.)
    b_q = load_tile(q + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
    b_k = load_tile(k + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
    b_dsd = b_ds.to(b_q.dtype)
    b_dq = b_dq * scale + tl.dot(b_dsd, b_k, input_precision=PREC)
    b_dk += tl.dot(tl.trans(b_dsd), b_q, input_precision=PREC)
    store_tile(dq + (t0 * H + i_h) * K, b_dq, T_rem, K, H * K, 0, i_k * BK, BT, BK)
    store_tile(dk + (t0 * H + i_h) * K, b_dk, T_rem, K, H * K, 0, i_k * BK, BT, BK)
    store_tile(dw + (t0 * H + i_h) * K, (-b_dw), T_rem, K, H * K, 0, i_k * BK, BT, BK)


def fwd_o(m: ChunkMeta, q: torch.Tensor, k: torch.Tensor, v_new: torch.Tensor, h: torch.Tensor,
          scale: float) -> torch.Tensor:
    """Output of every chunk.

    Args:
        m: the call's :class:`ChunkMeta`.
        q, k: [B, T, H, K]; v_new: [B, T, H, V] = V'; h: [NT, H, K, V] the state before every chunk; one dtype.
        scale: output scale.

    Returns: o [B, T, H, V] in v_new's dtype.
    """
    o = torch.empty_like(v_new)
    BK, BV = tile_sizes(m, "fwd_o")
    grid, fold = block_grid(m, triton.cdiv(m.V, BV))
    launch(
        m.settings, "fwd_o", fwd_o_kernel, grid,
        q, k, v_new, h, o, m.cu_seqlens, m.chunk_indices, scale, m.T,
        H=m.H, K=m.K, V=m.V, BT=m.BT, BK=BK, BV=BV, IS_VARLEN=m.is_varlen, PREC=m.prec, FOLD=fold,
    )
    return o


def bwd_dqkw(m: ChunkMeta, q: torch.Tensor, k: torch.Tensor, v_new: torch.Tensor, do: torch.Tensor, h: torch.Tensor,
             dh: torch.Tensor, dv_new: torch.Tensor, scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, the chunk-local part of dk, and dw.

    Args:
        m: the call's :class:`ChunkMeta`.
        q, k: [B, T, H, K]; v_new, do, dv_new: [B, T, H, V] (V', dO, dV'); h, dh: [NT, H, K, V] the state before
            and the state gradient after every chunk; one dtype.
        scale: output scale.

    Returns: (dq, dk_part, dw), each [B, T, H, K] in q's dtype.
    """
    dq, dk_part, dw = torch.empty_like(q), torch.empty_like(k), torch.empty_like(k)
    BK, BV = tile_sizes(m, "bwd_dqkw")
    grid, fold = block_grid(m, triton.cdiv(m.K, BK))
    launch(
        m.settings, "bwd_dqkw", bwd_dqkw_kernel, grid,
        q, k, v_new, do, h, dh, dv_new, dq, dk_part, dw, m.cu_seqlens, m.chunk_indices, scale, m.T,
        H=m.H, K=m.K, V=m.V, BT=m.BT, BK=BK, BV=BV, IS_VARLEN=m.is_varlen, PREC=m.prec, FOLD=fold,
    )
    return dq, dk_part, dw
