"""State walk over the chunks of each sequence: forward (chunk states and new values) and backward (state gradients).

With S the state [K, V] before a chunk and W, U its WY representation (``wy.py``)::

    forward:   V' = U - W S,   S <- S + K^T V'
    backward:  dV' = scale * triu(K Q^T) dO + K dS,   dS <- dS + scale Q^T dO - W^T dV'   (dS: after the chunk)

GLA (``USE_GK``, no W) decays the state rows per key channel: S <- diag(exp(G_C)) S + Kd^T V, with the caller
passing the keys already decayed to the chunk end (Kd) and, backward, the queries as diag(exp(G)) Q.

With a decay (``USE_G``: Gated DeltaNet; G the within-chunk cumulative log decay, G_C its value at the chunk's last
token, Kd = diag(exp(G_C - G)) K the keys decayed to the chunk's end)::

    forward:   V' = U - W S,   S <- exp(G_C) S + Kd^T V'
    backward:  dV' = scale * (Gamma^T * triu(K Q^T)) dO + Kd dS,
               dS <- exp(G_C) dS + scale (diag(exp(G)) Q)^T dO - W^T dV'

Every exponent is a difference G_i - G_j with i >= j (or G itself), so <= 0: no overflow for long chunks of strong
decay.  These are the only sequential kernels: one program per (sequence * head, V block) walks the chunks.  The state is
held in registers as up to four [BK, BV] float32 row blocks (one block up to K = 128, 64-row blocks above), written
out as explicit ``if K > n * BK`` branches rather than a loop (kernels/README.md: unrolled state code).  The
within-chunk part of dV', ``scale * triu(K Q^T) dO``, is computed inside the backward walk when K fits one block,
else by the fully parallel ``bwd_dv_local_kernel`` before it.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .launch import ChunkMeta, block_grid, launch, tile_sizes
from .tiles import block_ids, chunk_coords, decay_tril, load_row, load_tile, seq_coords, store_tile

__all__ = ["bwd_dhu", "bwd_dhu_kernel", "bwd_dv_local", "bwd_dv_local_kernel", "fwd_h", "fwd_h_kernel"]


@triton.jit
def fwd_h_kernel(
    k, w, u, v_new, h, h0, ht, g, gk,
    cu_seqlens, chunk_offsets,
    T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_H0: tl.constexpr, STORE_FINAL: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
    USE_G: tl.constexpr = False, USE_W: tl.constexpr = True, USE_GK: tl.constexpr = False,
):
    """Walk the chunks of one (sequence, head, V block): store the state before each chunk in h, V' = U - W S in
    v_new, then S += K^T V'.  The state [K, BV] stays in registers as up to four [BK, BV] row blocks (K <= 4 * BK;
    one block up to K = 128, blocks of 64 above).  Grid: (N * H, cdiv(V, BV))."""
    i_nh, i_v = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T_seq, NT_seq, boh = seq_coords(i_n, T, cu_seqlens, chunk_offsets, BT, IS_VARLEN)
    c0 = i_v * BV

    b_h1 = tl.zeros([BK, BV], dtype=tl.float32)
    b_h2 = tl.zeros([BK, BV], dtype=tl.float32)
    b_h3 = tl.zeros([BK, BV], dtype=tl.float32)
    b_h4 = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        p_h0 = h0 + i_nh.to(tl.int64) * K * V
        b_h1 += load_tile(p_h0, K, V, V, 0, c0, BK, BV).to(tl.float32)
        if K > BK:
            b_h2 += load_tile(p_h0, K, V, V, BK, c0, BK, BV).to(tl.float32)
        if K > 2 * BK:
            b_h3 += load_tile(p_h0, K, V, V, 2 * BK, c0, BK, BV).to(tl.float32)
        if K > 3 * BK:
            b_h4 += load_tile(p_h0, K, V, V, 3 * BK, c0, BK, BV).to(tl.float32)

    for i_c in range(NT_seq):
        t0 = bos + i_c * BT
        T_rem = T_seq - i_c * BT
        p_h = h + ((boh + i_c) * H + i_h) * K * V
        if USE_W:
            p_w = w + (t0 * H + i_h) * K
        p_k = k + (t0 * H + i_h) * K
        store_tile(p_h, b_h1, K, V, V, 0, c0, BK, BV)
        b_v = load_tile(u + (t0 * H + i_h) * V, T_rem, V, H * V, 0, c0, BT, BV).to(tl.float32)
        if USE_W:
            b_v -= tl.dot(load_tile(p_w, T_rem, K, H * K, 0, 0, BT, BK), b_h1.to(w.dtype.element_ty),
                          input_precision=PREC)
        if K > BK:
            store_tile(p_h, b_h2, K, V, V, BK, c0, BK, BV)
            if USE_W:
                b_v -= tl.dot(load_tile(p_w, T_rem, K, H * K, 0, BK, BT, BK), b_h2.to(w.dtype.element_ty),
                              input_precision=PREC)
        if K > 2 * BK:
            store_tile(p_h, b_h3, K, V, V, 2 * BK, c0, BK, BV)
            if USE_W:
                b_v -= tl.dot(load_tile(p_w, T_rem, K, H * K, 0, 2 * BK, BT, BK), b_h3.to(w.dtype.element_ty),
                              input_precision=PREC)
        if K > 3 * BK:
            store_tile(p_h, b_h4, K, V, V, 3 * BK, c0, BK, BV)
            if USE_W:
                b_v -= tl.dot(load_tile(p_w, T_rem, K, H * K, 0, 3 * BK, BT, BK), b_h4.to(w.dtype.element_ty),
                              input_precision=PREC)
        if USE_W:  # without W (no delta rule) V' = U, which the caller already has
            store_tile(v_new + (t0 * H + i_h) * V, b_v, T_rem, V, H * V, 0, c0, BT, BV)
        if USE_G:
            # S <- exp(G_C) S + Kd^T V': fold the key decay exp(G_C - G_i) into V' (same product, one scaling)
            o_t = tl.arange(0, BT)
            b_g = tl.load(g + (t0 + o_t) * H + i_h, mask=o_t < T_rem, other=0.)
            b_gl = tl.load(g + (t0 + tl.minimum(T_rem, BT) - 1) * H + i_h)
            b_v = b_v * tl.exp(tl.where(o_t < T_rem, b_gl - b_g, 0.))[:, None]
            b_dec = tl.exp(b_gl)
            b_h1 *= b_dec
            if K > BK:
                b_h2 *= b_dec
            if K > 2 * BK:
                b_h3 *= b_dec
            if K > 3 * BK:
                b_h4 *= b_dec
        if USE_GK:  # GLA: S <- diag(exp(G_C)) S, one decay per key channel (k arrives decayed to the chunk end)
            p_gk = gk + ((boh + i_c) * H + i_h) * K
            b_h1 *= tl.exp(load_row(p_gk, K, 0, BK))[:, None]
            if K > BK:
                b_h2 *= tl.exp(load_row(p_gk, K, BK, BK))[:, None]
            if K > 2 * BK:
                b_h3 *= tl.exp(load_row(p_gk, K, 2 * BK, BK))[:, None]
            if K > 3 * BK:
                b_h4 *= tl.exp(load_row(p_gk, K, 3 * BK, BK))[:, None]
        b_vd = b_v.to(k.dtype.element_ty)
        b_h1 += tl.dot(tl.trans(load_tile(p_k, T_rem, K, H * K, 0, 0, BT, BK)), b_vd, input_precision=PREC)
        if K > BK:
            b_h2 += tl.dot(tl.trans(load_tile(p_k, T_rem, K, H * K, 0, BK, BT, BK)), b_vd, input_precision=PREC)
        if K > 2 * BK:
            b_h3 += tl.dot(tl.trans(load_tile(p_k, T_rem, K, H * K, 0, 2 * BK, BT, BK)), b_vd, input_precision=PREC)
        if K > 3 * BK:
            b_h4 += tl.dot(tl.trans(load_tile(p_k, T_rem, K, H * K, 0, 3 * BK, BT, BK)), b_vd, input_precision=PREC)

    if STORE_FINAL:
        p_ht = ht + i_nh.to(tl.int64) * K * V
        store_tile(p_ht, b_h1, K, V, V, 0, c0, BK, BV)
        if K > BK:
            store_tile(p_ht, b_h2, K, V, V, BK, c0, BK, BV)
        if K > 2 * BK:
            store_tile(p_ht, b_h3, K, V, V, 2 * BK, c0, BK, BV)
        if K > 3 * BK:
            store_tile(p_ht, b_h4, K, V, V, 3 * BK, c0, BK, BV)


@triton.jit
def bwd_dv_local_kernel(
    q, k, do, dv_local, g,
    cu_seqlens, chunk_indices,
    scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, PREC: tl.constexpr, FOLD: tl.constexpr, USE_G: tl.constexpr = False,
):
    """The within-chunk part of dV': scale * triu(K Q^T) dO (with USE_G: (Gamma^T * ...)), kept off the sequential
    walk.  Grid: (total chunks * H, cdiv(V, BV))."""
    i_p, i_v = block_ids(tl.cdiv(V, BV), FOLD)
    i_h = i_p % H
    i_tg = i_p // H
    bos, T_seq, i_c = chunk_coords(i_tg, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    t0 = bos + i_c * BT
    T_rem = T_seq - i_c * BT
    o_t = tl.arange(0, BT)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in tl.static_range((K + BK - 1) // BK):
        b_q = load_tile(q + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
        b_k = load_tile(k + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
        b_A += tl.dot(b_k, tl.trans(b_q), input_precision=PREC)
    if USE_G:
        b_g = tl.load(g + (t0 + o_t) * H + i_h, mask=o_t < T_rem, other=0.)
        b_A = b_A * tl.trans(decay_tril(b_g, T_rem, BT, False))  # Gamma^T
    b_A = tl.where(o_t[:, None] <= o_t[None, :], b_A * scale, 0.)
    b_do = load_tile(do + (t0 * H + i_h) * V, T_rem, V, H * V, 0, i_v * BV, BT, BV)
    b_dv = tl.dot(b_A.to(b_do.dtype), b_do, input_precision=PREC)
    store_tile(dv_local + (t0 * H + i_h) * V, b_dv, T_rem, V, H * V, 0, i_v * BV, BT, BV)


@triton.jit
def bwd_dhu_kernel(
    q, k, w, do, dv_local, dv_new, dh, dht, dh0, g, gk,
    cu_seqlens, chunk_offsets,
    scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr, INLINE_DV: tl.constexpr, IS_VARLEN: tl.constexpr,
    PREC: tl.constexpr, USE_G: tl.constexpr = False, USE_W: tl.constexpr = True, USE_GK: tl.constexpr = False,
):
    """Reverse walk over the chunks of one (sequence, head, V block) with dS = gradient of the state after the chunk:
    store dS in dh, dV' = dv_local + K dS, then dS <- dS + scale Q^T dO - W^T dV'.  dS is held as up to four
    [BK, BV] row blocks, as in fwd_h_kernel.  With INLINE_DV (only when K <= BK) dv_local = scale * triu(K Q^T) dO
    is computed here from the q, k tiles the step loads anyway (it is off the dS dependency chain).
    Grid: (N * H, cdiv(V, BV))."""
    o_t = tl.arange(0, BT)
    i_nh, i_v = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T_seq, NT_seq, boh = seq_coords(i_n, T, cu_seqlens, chunk_offsets, BT, IS_VARLEN)
    c0 = i_v * BV
    dt = q.dtype.element_ty

    b_dh1 = tl.zeros([BK, BV], dtype=tl.float32)
    b_dh2 = tl.zeros([BK, BV], dtype=tl.float32)
    b_dh3 = tl.zeros([BK, BV], dtype=tl.float32)
    b_dh4 = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        p_dht = dht + i_nh.to(tl.int64) * K * V
        b_dh1 += load_tile(p_dht, K, V, V, 0, c0, BK, BV).to(tl.float32)
        if K > BK:
            b_dh2 += load_tile(p_dht, K, V, V, BK, c0, BK, BV).to(tl.float32)
        if K > 2 * BK:
            b_dh3 += load_tile(p_dht, K, V, V, 2 * BK, c0, BK, BV).to(tl.float32)
        if K > 3 * BK:
            b_dh4 += load_tile(p_dht, K, V, V, 3 * BK, c0, BK, BV).to(tl.float32)

    for i_r in range(NT_seq):
        i_c = NT_seq - 1 - i_r
        t0 = bos + i_c * BT
        T_rem = T_seq - i_c * BT
        p_dh = dh + ((boh + i_c) * H + i_h) * K * V
        p_q = q + (t0 * H + i_h) * K
        p_k = k + (t0 * H + i_h) * K
        if USE_W:
            p_w = w + (t0 * H + i_h) * K
        b_q = load_tile(p_q, T_rem, K, H * K, 0, 0, BT, BK)
        b_k = load_tile(p_k, T_rem, K, H * K, 0, 0, BT, BK)
        if USE_W:
            b_w = load_tile(p_w, T_rem, K, H * K, 0, 0, BT, BK)
        b_do = load_tile(do + (t0 * H + i_h) * V, T_rem, V, H * V, 0, c0, BT, BV)
        if USE_G:
            m_t = o_t < T_rem
            b_g = tl.load(g + (t0 + o_t) * H + i_h, mask=m_t, other=0.)
            b_gl = tl.load(g + (t0 + tl.minimum(T_rem, BT) - 1) * H + i_h)
            b_kdec = tl.exp(tl.where(m_t, b_gl - b_g, 0.))  # exp(G_C - G_i): the keys' decay to the chunk end
        if INLINE_DV:
            b_A = tl.dot(b_k, tl.trans(b_q), input_precision=PREC)
            if USE_G:
                b_A = b_A * tl.trans(decay_tril(b_g, T_rem, BT, False))  # Gamma^T
            b_A = tl.where(o_t[:, None] <= o_t[None, :], b_A * scale, 0.)
            b_dv = tl.dot(b_A.to(dt), b_do, input_precision=PREC)
        else:
            b_dv = load_tile(dv_local + (t0 * H + i_h) * V, T_rem, V, H * V, 0, c0, BT, BV).to(tl.float32)
        if USE_G:  # Kd dS: the decay is a row scaling of K dS
            store_tile(p_dh, b_dh1, K, V, V, 0, c0, BK, BV)
            b_kds = tl.dot(b_k, b_dh1.to(dt), input_precision=PREC)
            if K > BK:
                store_tile(p_dh, b_dh2, K, V, V, BK, c0, BK, BV)
                b_kds += tl.dot(load_tile(p_k, T_rem, K, H * K, 0, BK, BT, BK), b_dh2.to(dt), input_precision=PREC)
            if K > 2 * BK:
                store_tile(p_dh, b_dh3, K, V, V, 2 * BK, c0, BK, BV)
                b_kds += tl.dot(load_tile(p_k, T_rem, K, H * K, 0, 2 * BK, BT, BK), b_dh3.to(dt),
                                input_precision=PREC)
            if K > 3 * BK:
                store_tile(p_dh, b_dh4, K, V, V, 3 * BK, c0, BK, BV)
                b_kds += tl.dot(load_tile(p_k, T_rem, K, H * K, 0, 3 * BK, BT, BK), b_dh4.to(dt),
                                input_precision=PREC)
            b_dv += b_kds * b_kdec[:, None]
            b_dec = tl.exp(b_gl)
            b_dh1 *= b_dec
            if K > BK:
                b_dh2 *= b_dec
            if K > 2 * BK:
                b_dh3 *= b_dec
            if K > 3 * BK:
                b_dh4 *= b_dec
            b_q = (b_q * tl.exp(b_g)[:, None]).to(dt)  # the output reads the state through diag(exp(G)) Q
        else:
            store_tile(p_dh, b_dh1, K, V, V, 0, c0, BK, BV)
            b_dv += tl.dot(b_k, b_dh1.to(dt), input_precision=PREC)
            if K > BK:
                store_tile(p_dh, b_dh2, K, V, V, BK, c0, BK, BV)
                b_dv += tl.dot(load_tile(p_k, T_rem, K, H * K, 0, BK, BT, BK), b_dh2.to(dt), input_precision=PREC)
            if K > 2 * BK:
                store_tile(p_dh, b_dh3, K, V, V, 2 * BK, c0, BK, BV)
                b_dv += tl.dot(load_tile(p_k, T_rem, K, H * K, 0, 2 * BK, BT, BK), b_dh3.to(dt),
                               input_precision=PREC)
            if K > 3 * BK:
                store_tile(p_dh, b_dh4, K, V, V, 3 * BK, c0, BK, BV)
                b_dv += tl.dot(load_tile(p_k, T_rem, K, H * K, 0, 3 * BK, BT, BK), b_dh4.to(dt),
                               input_precision=PREC)
        store_tile(dv_new + (t0 * H + i_h) * V, b_dv, T_rem, V, H * V, 0, c0, BT, BV)
        b_dvd = b_dv.to(dt)
        if USE_GK:  # GLA: dS <- diag(exp(G_C)) dS (q arrives as diag(exp(G)) Q)
            p_gk = gk + ((boh + i_c) * H + i_h) * K
            b_dh1 *= tl.exp(load_row(p_gk, K, 0, BK))[:, None]
            if K > BK:
                b_dh2 *= tl.exp(load_row(p_gk, K, BK, BK))[:, None]
            if K > 2 * BK:
                b_dh3 *= tl.exp(load_row(p_gk, K, 2 * BK, BK))[:, None]
            if K > 3 * BK:
                b_dh4 *= tl.exp(load_row(p_gk, K, 3 * BK, BK))[:, None]
        b_dh1 += tl.dot(tl.trans((b_q * scale).to(dt)), b_do, input_precision=PREC)
        if USE_W:
            b_dh1 -= tl.dot(tl.trans(b_w), b_dvd, input_precision=PREC)
        if K > BK:
            b_q = load_tile(p_q, T_rem, K, H * K, 0, BK, BT, BK)
            if USE_G:
                b_q = (b_q * tl.exp(b_g)[:, None]).to(dt)
            b_dh2 += tl.dot(tl.trans((b_q * scale).to(dt)), b_do, input_precision=PREC)
            if USE_W:
                b_w = load_tile(p_w, T_rem, K, H * K, 0, BK, BT, BK)
                b_dh2 -= tl.dot(tl.trans(b_w), b_dvd, input_precision=PREC)
        if K > 2 * BK:
            b_q = load_tile(p_q, T_rem, K, H * K, 0, 2 * BK, BT, BK)
            if USE_G:
                b_q = (b_q * tl.exp(b_g)[:, None]).to(dt)
            b_dh3 += tl.dot(tl.trans((b_q * scale).to(dt)), b_do, input_precision=PREC)
            if USE_W:
                b_w = load_tile(p_w, T_rem, K, H * K, 0, 2 * BK, BT, BK)
                b_dh3 -= tl.dot(tl.trans(b_w), b_dvd, input_precision=PREC)
        if K > 3 * BK:
            b_q = load_tile(p_q, T_rem, K, H * K, 0, 3 * BK, BT, BK)
            if USE_G:
                b_q = (b_q * tl.exp(b_g)[:, None]).to(dt)
            b_dh4 += tl.dot(tl.trans((b_q * scale).to(dt)), b_do, input_precision=PREC)
            if USE_W:
                b_w = load_tile(p_w, T_rem, K, H * K, 0, 3 * BK, BT, BK)
                b_dh4 -= tl.dot(tl.trans(b_w), b_dvd, input_precision=PREC)

    if STORE_DH0:
        p_dh0 = dh0 + i_nh.to(tl.int64) * K * V
        store_tile(p_dh0, b_dh1, K, V, V, 0, c0, BK, BV)
        if K > BK:
            store_tile(p_dh0, b_dh2, K, V, V, BK, c0, BK, BV)
        if K > 2 * BK:
            store_tile(p_dh0, b_dh3, K, V, V, 2 * BK, c0, BK, BV)
        if K > 3 * BK:
            store_tile(p_dh0, b_dh4, K, V, V, 3 * BK, c0, BK, BV)


def fwd_h(m: ChunkMeta, k: torch.Tensor, w: torch.Tensor, u: torch.Tensor, initial_state: Optional[torch.Tensor],
          output_final_state: bool, g: Optional[torch.Tensor] = None, gk: Optional[torch.Tensor] = None
          ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Forward state walk.

    Args:
        m: the call's :class:`ChunkMeta`.
        k, w: [B, T, H, K]; u: [B, T, H, V] (from ``wy.wy_fwd``), one dtype.  w None: no delta rule (plain
            linear attention with a decay, the scalar-gate ops), u is then the values and V' = u.
        initial_state: optional [N, H, K, V] state before each sequence (any supported dtype).
        output_final_state: also return the state after each sequence.
        g: optional [B, T, H] float32 within-chunk cumulative log decay G: the decayed walk.
        gk: optional [NT, H, K] float32 per-key-channel log decay of each chunk (GLA's G_C): the state rows are
            scaled by exp(gk) before K^T V' is added (k must then be decayed to the chunk end by the caller).

    Returns:
        (h [NT, H, K, V] the state before every chunk, v_new [B, T, H, V] = V', in k's dtype;
        final state [N, H, K, V] float32 or None).
    """
    h = k.new_empty(m.NT, m.H, m.K, m.V)
    v_new = torch.empty_like(u) if w is not None else u  # without W (no delta rule), V' = U
    ht = k.new_empty(m.N, m.H, m.K, m.V, dtype=torch.float32) if output_final_state else None
    grid = (m.N * m.H, triton.cdiv(m.V, m.BVs))
    launch(
        m.settings, "fwd_h", fwd_h_kernel, grid,
        k, w, u, v_new, h, initial_state, ht, g, gk, m.cu_seqlens, m.chunk_offsets, m.T,
        H=m.H, K=m.K, V=m.V, BT=m.BT, BK=m.BKs, BV=m.BVs,
        USE_H0=initial_state is not None, STORE_FINAL=output_final_state, IS_VARLEN=m.is_varlen, PREC=m.prec,
        USE_G=g is not None, USE_W=w is not None, USE_GK=gk is not None,
    )
    return h, v_new, ht


def bwd_dv_local(m: ChunkMeta, q: torch.Tensor, k: torch.Tensor, do: torch.Tensor, scale: float,
                 g: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The within-chunk part of dV', ``scale * triu(K Q^T) dO``, fully parallel.

    Args: m: the call's :class:`ChunkMeta`; q, k: [B, T, H, K]; do: [B, T, H, V], one dtype; scale: output scale;
    g: optional [B, T, H] float32 cumulative log decay (the decayed form).
    Returns: dv_local [B, T, H, V] in do's dtype.
    """
    dv_local = torch.empty_like(do)
    BK, BV = tile_sizes(m, "bwd_dv_local")
    grid, fold = block_grid(m, triton.cdiv(m.V, BV))
    launch(
        m.settings, "bwd_dv_local", bwd_dv_local_kernel, grid,
        q, k, do, dv_local, g, m.cu_seqlens, m.chunk_indices, scale, m.T,
        H=m.H, K=m.K, V=m.V, BT=m.BT, BK=BK, BV=BV, IS_VARLEN=m.is_varlen, PREC=m.prec, FOLD=fold,
        USE_G=g is not None,
    )
    return dv_local


def bwd_dhu(m: ChunkMeta, q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, do: torch.Tensor,
            dht: Optional[torch.Tensor], scale: float, need_dh0: bool,
            g: Optional[torch.Tensor] = None, gk: Optional[torch.Tensor] = None,
            dv_local: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Backward state walk (runs :func:`bwd_dv_local` first when K does not fit one state block).

    Args:
        m: the call's :class:`ChunkMeta`.
        q, k, w: [B, T, H, K]; do: [B, T, H, V] gradient of the output, one dtype (w None: no W term).
        dht: optional [N, H, K, V] float32 gradient of the final state.
        scale: output scale.
        need_dh0: also return the gradient of the initial state.
        g: optional [B, T, H] float32 within-chunk cumulative log decay G: the decayed walk.
        gk: optional [NT, H, K] float32 per-key-channel chunk log decay (GLA, as in :func:`fwd_h`; q must then be
            diag(exp(G)) Q and k the keys decayed to the chunk end).
        dv_local: optional [B, T, H, V] within-chunk part of dV' computed by the caller (GLA's A^T dO, which is
            not triu(K Q^T) dO); replaces :func:`bwd_dv_local` and the inline form.

    Returns:
        (dv_new [B, T, H, V] = dV', dh [NT, H, K, V] the gradient of the state after every chunk, in q's dtype;
        dh0 [N, H, K, V] float32 or None).
    """
    inline_dv = m.BKs >= m.K and dv_local is None
    if dv_local is None and not inline_dv:
        dv_local = bwd_dv_local(m, q, k, do, scale, g)
    dh = q.new_empty(m.NT, m.H, m.K, m.V)
    dv_new = torch.empty_like(do)
    dh0 = q.new_empty(m.N, m.H, m.K, m.V, dtype=torch.float32) if need_dh0 else None
    grid = (m.N * m.H, triton.cdiv(m.V, m.BVs))
    launch(
        m.settings, "bwd_dhu", bwd_dhu_kernel, grid,
        q, k, w, do, dv_local, dv_new, dh, dht, dh0, g, gk, m.cu_seqlens, m.chunk_offsets, scale, m.T,
        H=m.H, K=m.K, V=m.V, BT=m.BT, BK=m.BKs, BV=m.BVs,
        USE_DHT=dht is not None, STORE_DH0=need_dh0, INLINE_DV=inline_dv, IS_VARLEN=m.is_varlen, PREC=m.prec,
        USE_G=g is not None, USE_W=w is not None, USE_GK=gk is not None,
    )
    return dv_new, dh, dh0
