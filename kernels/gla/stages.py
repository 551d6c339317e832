r"""The GLA-specific chunk stages (the state walks are ``common/chunk_h.py``'s, with ``USE_GK``).

Per chunk of BT tokens with G the within-chunk cumulative sum of g per key channel and G_C its last row::

    prep:      G, Qg = Q * exp(G), Kd = K * exp(G_C - G), gk = G_C               (every exponent <= 0)
    intra A:   A_ij = sum_k q_ik k_jk exp(G_ik - G_jk), j <= i                    (float32, [B, T, H, BT])
    output:    O = scale (Qg S + A V)
    backward:  dA = scale tril(dO V^T),  dV_local = scale A^T dO  (the walk adds Kd dS),
               dQ = scale (dO S^T) * exp(G) + dQ_intra,  dK = (V dS^T) * exp(G_C - G) + dK_intra,
               dG = Q * dQ - K * dK,  dg = revcumsum_chunk(dG) + exp(G_C) sum_v(S * dS) + sum_t(K * dK_inter)

with S the state before the chunk and dS the gradient of the state after it.  **Numerics of A** (kernels/README.md,
GLA): exp(G_i - G_j) cannot be split into exp(G_i) exp(-G_j) over a whole chunk (exp(-G) overflows: 64 tokens of
g = -5 give exp(320)).  A is built from 16 x 16 sub-blocks: an off-diagonal block (I > J) splits the exponent at
the first token r of block I, (q_I exp(G_I - G_r)) (k_J exp(G_r - G_J))^T, both factors <= 1, one tensor-core
dot; a diagonal block is one [16, 16, channels] float32 product with the exponent masked before the exp.  The backward
intra kernel uses the same split (for dK the split point is the last token of the key block).
"""

from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ..common.launch import ChunkMeta
from ..common.tiles import chunk_coords, load_row, load_tile, store_tile

__all__ = ["gla_bwd_dA", "gla_bwd_dqkg", "gla_bwd_intra", "gla_fwd_A", "gla_fwd_o", "gla_prep"]

BC = 16  # sub-chunk of the within-chunk attention


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


BKD = tl.constexpr(32)  # key channels per step of a diagonal block's [BC, BC, BKD] float32 product (64 registers at 4 warps)


@triton.jit
def diag_decay(b_G, m_i, BC: tl.constexpr):
    """E [BC, BC, n] = exp(G_i - G_j) per channel for j <= i of one 16-token block (G [BC, n], float32; rows
    outside m_i and j > i give 0: the exponent is masked to -inf before the exp, so it is always <= 0)."""
    o_i = tl.arange(0, BC)
    m_e = (o_i[:, None] >= o_i[None, :]) & m_i[:, None]
    return tl.exp(tl.where(m_e[:, :, None], b_G[:, None, :] - b_G[None, :, :], float("-inf")))


@triton.jit
def gla_prep_kernel(
    q, k, g, G, qg, kd, gk,
    cu_seqlens, chunk_indices, T,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    """G = within-chunk cumsum of g (float32), Qg = Q exp(G), Kd = K exp(G_C - G), gk = G_C.
    Grid: (total chunks * H, cdiv(K, BK))."""
    i_p, i_k = tl.program_id(0), tl.program_id(1)
    i_h = i_p % H
    i_tg = i_p // H
    bos, T_seq, i_c = chunk_coords(i_tg, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    t0 = bos + i_c * BT
    T_rem = T_seq - i_c * BT
    base = (t0 * H + i_h) * K
    b_g = load_tile(g + base, T_rem, K, H * K, 0, i_k * BK, BT, BK).to(tl.float32)
    b_G = tl.cumsum(b_g, 0)
    b_gl = tl.sum(b_g, 0)  # G_C: the padded rows hold 0
    store_tile(G + base, b_G, T_rem, K, H * K, 0, i_k * BK, BT, BK)
    b_q = load_tile(q + base, T_rem, K, H * K, 0, i_k * BK, BT, BK).to(tl.float32)
    store_tile(qg + base, b_q * tl.exp(b_G), T_rem, K, H * K, 0, i_k * BK, BT, BK)
    b_k = load_tile(k + base, T_rem, K, H * K, 0, i_k * BK, BT, BK).to(tl.float32)
    store_tile(kd + base, b_k * tl.exp(b_gl[None, :] - b_G), T_rem, K, H * K, 0, i_k * BK, BT, BK)
    o_k = i_k * BK + tl.arange(0, BK)
    tl.store(gk + (i_tg * H + i_h).to(tl.int64) * K + o_k, b_gl, mask=o_k < K)


@triton.jit
def gla_fwd_A_kernel(
    q, k, G, A,
    cu_seqlens, chunk_indices, T,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
    IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
):
    """One [BC, BC] sub-block (I, J) of A (zeros above the diagonal).  Grid: (total chunks * H, NC * NC)."""
    NC: tl.constexpr = BT // BC
    i_p, i_b = tl.program_id(0), tl.program_id(1)
    i_i, i_j = i_b // NC, i_b % NC
    i_h = i_p % H
    i_tg = i_p // H
    bos, T_seq, i_c = chunk_coords(i_tg, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    t0 = bos + i_c * BT
    T_rem = T_seq - i_c * BT
    r0 = i_i * BC
    if r0 < T_rem:
        base = (t0 * H + i_h) * K
        o_i = tl.arange(0, BC)
        m_i = r0 + o_i < T_rem
        b_A = tl.zeros([BC, BC], dtype=tl.float32)
        if i_j < i_i:  # split at the block's first token r: both factors <= 1
            for i_k in tl.static_range((K + BK - 1) // BK):
                b_q = load_tile(q + base, T_rem, K, H * K, r0, i_k * BK, BC, BK)
                b_Gi = load_tile(G + base, T_rem, K, H * K, r0, i_k * BK, BC, BK)
                b_Gr = load_row(G + base + r0 * H * K, K, i_k * BK, BK)
                b_qr = (b_q * tl.exp(tl.where(m_i[:, None], b_Gi - b_Gr[None, :], 0.))).to(q.dtype.element_ty)
                b_k = load_tile(k + base, T_rem, K, H * K, i_j * BC, i_k * BK, BC, BK)
                b_Gj = load_tile(G + base, T_rem, K, H * K, i_j * BC, i_k * BK, BC, BK)
                b_kr = (b_k * tl.exp(b_Gr[None, :] - b_Gj)).to(k.dtype.element_ty)
                b_A += tl.dot(b_qr, tl.trans(b_kr), input_precision=PREC)
        elif i_j == i_i:  # the diagonal block in float32, BKD channels at a time as one [BC, BC, BKD] product
            for i_k in tl.static_range((K + BKD - 1) // BKD):
                b_q = load_tile(q + base, T_rem, K, H * K, r0, i_k * BKD, BC, BKD).to(tl.float32)
                b_k = load_tile(k + base, T_rem, K, H * K, r0, i_k * BKD, BC, BKD).to(tl.float32)
                b_G = load_tile(G + base, T_rem, K, H * K, r0, i_k * BKD, BC, BKD)
                b_A += tl.sum(b_q[:, None, :] * b_k[None, :, :] * diag_decay(b_G, m_i, BC), 2)
        store_tile(A + (t0 * H + i_h) * BT, b_A, T_rem, BT, H * BT, r0, i_j * BC, BC, BC)


@triton.jit
def gla_fwd_o_kernel(
    qg, v, h, A, o,
    cu_seqlens, chunk_indices, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
):
    """O = scale (Qg S + A V) for one (chunk, head, V block).  Grid: (total chunks * H, cdiv(V, BV))."""
    i_p, i_v = tl.program_id(0), tl.program_id(1)
    i_h = i_p % H
    i_tg = i_p // H
    bos, T_seq, i_c = chunk_coords(i_tg, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    t0 = bos + i_c * BT
    T_rem = T_seq - i_c * BT
    p_h = h + (i_tg * H + i_h).to(tl.int64) * K * V
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in tl.static_range((K + BK - 1) // BK):
        b_q = load_tile(qg + (t0 * H + i_h) * K, T_rem, K, H * K, 0, i_k * BK, BT, BK)
        b_h = load_tile(p_h, K, V, V, i_k * BK, i_v * BV, BK, BV)
        b_o += tl.dot(b_q, b_h.to(b_q.dtype), input_precision=PREC)
    b_A = load_tile(A + (t0 * H + i_h) * BT, T_rem, BT, H * BT, 0, 0, BT, BT)
    b_v = load_tile(v + (t0 * H + i_h) * V, T_rem, V, H * V, 0, i_v * BV, BT, BV)
    b_o += tl.dot(b_A.to(b_v.dtype), b_v, input_precision=PREC)
    store_tile(o + (t0 * H + i_h) * V, b_o * scale, T_rem, V, H * V, 0, i_v * BV, BT, BV)


@triton.jit
def gla_bwd_dA_kernel(
    v, do, A, dA, dv_local,
    cu_seqlens, chunk_indices, scale, T,
    H: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
):
    """dA = scale tril(dO V^T) (float32) and dV_local = scale A^T dO.  Grid: (total chunks * H,)."""
    i_p = tl.program_id(0)
    i_h = i_p % H
    i_tg = i_p // H
    bos, T_seq, i_c = chunk_coords(i_tg, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    t0 = bos + i_c * BT
    T_rem = T_seq - i_c * BT
    o_t = tl.arange(0, BT)
    b_A = load_tile(A + (t0 * H + i_h) * BT, T_rem, BT, H * BT, 0, 0, BT, BT)
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in tl.static_range((V + BV - 1) // BV):
        b_v = load_tile(v + (t0 * H + i_h) * V, T_rem, V, H * V, 0, i_v * BV, BT, BV)
        b_do = load_tile(do + (t0 * H + i_h) * V, T_rem, V, H * V, 0, i_v * BV, BT, BV)
        b_dA += tl.dot(b_do, tl.trans(b_v), input_precision=PREC)
        b_dv = tl.dot(tl.trans(b_A).to(b_do.dtype), b_do, input_precision=PREC)
        store_tile(dv_local + (t0 * H + i_h) * V, b_dv * scale, T_rem, V, H * V, 0, i_v * BV, BT, BV)
    b_dA = tl.where(o_t[:, None] >= o_t[None, :], b_dA * scale, 0.)
    store_tile(dA + (t0 * H + i_h) * BT, b_dA, T_rem, BT, H * BT, 0, 0, BT, BT)


@triton.jit
def gla_bwd_intra_kernel(
    q, k, G, dA, dq, dk,
    cu_seqlens, chunk_indices, T,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
    IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
):
    """The within-chunk parts of dQ and dK (through A) for one 16-token block I and K block, float32:
    dq_i = sum_{j <= i} dA_ij k_j exp(G_i - G_j), dk_j = sum_{i >= j} dA_ij q_i exp(G_i - G_j).
    Grid: (total chunks * H, NC, cdiv(K, BK))."""
    NC: tl.constexpr = BT // BC
    i_p, i_i, i_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_h = i_p % H
    i_tg = i_p // H
    bos, T_seq, i_c = chunk_coords(i_tg, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    t0 = bos + i_c * BT
    T_rem = T_seq - i_c * BT
    r0 = i_i * BC
    if r0 < T_rem:
        dt = q.dtype.element_ty
        base = (t0 * H + i_h) * K
        p_dA = dA + (t0 * H + i_h) * BT
        o_i = tl.arange(0, BC)
        m_i = r0 + o_i < T_rem
        b_q = load_tile(q + base, T_rem, K, H * K, r0, i_k * BK, BC, BK).to(tl.float32)
        b_k = load_tile(k + base, T_rem, K, H * K, r0, i_k * BK, BC, BK).to(tl.float32)
        b_Gi = load_tile(G + base, T_rem, K, H * K, r0, i_k * BK, BC, BK)

        # dq from the key blocks J < I, split at this block's first token
        b_Gr = load_row(G + base + r0 * H * K, K, i_k * BK, BK)
        b_dq = tl.zeros([BC, BK], dtype=tl.float32)
        for i_j in range(0, i_i):
            b_kj = load_tile(k + base, T_rem, K, H * K, i_j * BC, i_k * BK, BC, BK)
            b_Gj = load_tile(G + base, T_rem, K, H * K, i_j * BC, i_k * BK, BC, BK)
            b_kjr = (b_kj * tl.exp(b_Gr[None, :] - b_Gj)).to(dt)
            b_dAij = load_tile(p_dA, T_rem, BT, H * BT, r0, i_j * BC, BC, BC)
            b_dq += tl.dot(b_dAij.to(dt), b_kjr, input_precision=PREC)
        b_dq *= tl.exp(tl.where(m_i[:, None], b_Gi - b_Gr[None, :], 0.))
        # dk from the query blocks J > I, split at this block's last valid token
        r1 = tl.minimum(r0 + BC, T_rem) - 1
        b_Gl = load_row(G + base + r1 * H * K, K, i_k * BK, BK)
        b_dk = tl.zeros([BC, BK], dtype=tl.float32)
        for i_j in range(i_i + 1, tl.minimum(NC, tl.cdiv(T_rem, BC))):  # T_rem may pass the chunk's end
            m_j = i_j * BC + o_i < T_rem
            b_qj = load_tile(q + base, T_rem, K, H * K, i_j * BC, i_k * BK, BC, BK)
            b_Gj = load_tile(G + base, T_rem, K, H * K, i_j * BC, i_k * BK, BC, BK)
            b_qjr = (b_qj * tl.exp(tl.where(m_j[:, None], b_Gj - b_Gl[None, :], 0.))).to(dt)
            b_dAji = load_tile(p_dA, T_rem, BT, H * BT, i_j * BC, r0, BC, BC)
            b_dk += tl.dot(tl.trans(b_dAji.to(dt)), b_qjr, input_precision=PREC)
        b_dk *= tl.exp(tl.where(m_i[:, None], b_Gl[None, :] - b_Gi, 0.))
        # the diagonal block in float32 as [BC, BC, BK] products (exponents masked before the exp):
        # dq_i += sum_{j <= i} dA_ij k_j exp(G_i - G_j),  dk_j += sum_{i >= j} dA_ij q_i exp(G_i - G_j)
        b_dAd = load_tile(p_dA, T_rem, BT, H * BT, r0, r0, BC, BC)[:, :, None] * diag_decay(b_Gi, m_i, BC)
        b_dq += tl.sum(b_dAd * b_k[None, :, :], 1)
        b_dk += tl.sum(b_dAd * b_q[:, None, :], 0)
        store_tile(dq + base, b_dq, T_rem, K, H * K, r0, i_k * BK, BC, BK)
        store_tile(dk + base, b_dk, T_rem, K, H * K, r0, i_k * BK, BC, BK)


@triton.jit
def gla_bwd_dqkg_kernel(
    q, k, v, G, gk, h, do, dh, dq_intra, dk_intra, dq, dk, dg,
    cu_seqlens, chunk_indices, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
):
    """dQ, dK (adding the state terms to the within-chunk ones) and dg for one (chunk, head, K block).
    Grid: (total chunks * H, cdiv(K, BK))."""
    i_p, i_k = tl.program_id(0), tl.program_id(1)
    i_h = i_p % H
    i_tg = i_p // H
    bos, T_seq, i_c = chunk_coords(i_tg, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    t0 = bos + i_c * BT
    T_rem = T_seq - i_c * BT
    base = (t0 * H + i_h) * K
    p_h = h + (i_tg * H + i_h).to(tl.int64) * K * V
    p_dh = dh + (i_tg * H + i_h).to(tl.int64) * K * V
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_dgc = tl.zeros([BK], dtype=tl.float32)
    for i_v in tl.static_range((V + BV - 1) // BV):
        b_v = load_tile(v + (t0 * H + i_h) * V, T_rem, V, H * V, 0, i_v * BV, BT, BV)
        b_do = load_tile(do + (t0 * H + i_h) * V, T_rem, V, H * V, 0, i_v * BV, BT, BV)
        b_h = load_tile(p_h, K, V, V, i_k * BK, i_v * BV, BK, BV)
        b_dh = load_tile(p_dh, K, V, V, i_k * BK, i_v * BV, BK, BV)
        b_dq += tl.dot(b_do, tl.trans(b_h.to(b_do.dtype)), input_precision=PREC)
        b_dk += tl.dot(b_v, tl.trans(b_dh.to(b_v.dtype)), input_precision=PREC)
        b_dgc += tl.sum(b_h.to(tl.float32) * b_dh.to(tl.float32), 1)
    o_t = tl.arange(0, BT)
    m_t = o_t < T_rem
    b_G = load_tile(G + base, T_rem, K, H * K, 0, i_k * BK, BT, BK)
    b_gl = load_row(gk + (i_tg * H + i_h).to(tl.int64) * K, K, i_k * BK, BK)
    b_dq = b_dq * scale * tl.exp(b_G) + load_tile(dq_intra + base, T_rem, K, H * K, 0, i_k * BK, BT, BK)
    b_dk_inter = b_dk * tl.exp(tl.where(m_t[:, None], b_gl[None, :] - b_G, float("-inf")))
    b_dk = b_dk_inter + load_tile(dk_intra + base, T_rem, K, H * K, 0, i_k * BK, BT, BK)
    b_q = load_tile(q + base, T_rem, K, H * K, 0, i_k * BK, BT, BK).to(tl.float32)
    b_k = load_tile(k + base, T_rem, K, H * K, 0, i_k * BK, BT, BK).to(tl.float32)
    b_dG = b_q * b_dq - b_k * b_dk
    # G_C = sum of the chunk's g: its gradient (the state's decay and the keys' decay to the chunk end) reaches
    # every token of the chunk
    b_dgl = b_dgc * tl.exp(b_gl) + tl.sum(b_k * b_dk_inter, 0)
    b_dg = tl.sum(b_dG, 0)[None, :] - tl.cumsum(b_dG, 0) + b_dG + b_dgl[None, :]
    store_tile(dq + base, b_dq, T_rem, K, H * K, 0, i_k * BK, BT, BK)
    store_tile(dk + base, b_dk, T_rem, K, H * K, 0, i_k * BK, BT, BK)
    store_tile(dg + base, b_dg, T_rem, K, H * K, 0, i_k * BK, BT, BK)


# ---- launchers (one (chunk, head) grid each; no ChunkSettings entry: 4 warps, 2 stages) -------------------------

def _tiles(m: ChunkMeta) -> Tuple[int, int]:
    return min(64, _pow2(m.K)), min(64, _pow2(m.V))


def gla_prep(m: ChunkMeta, q: torch.Tensor, k: torch.Tensor, g: torch.Tensor):
    """Returns (G [B, T, H, K] float32, Qg and Kd [B, T, H, K] in q's dtype, gk [NT, H, K] float32)."""
    BK, _ = _tiles(m)
    G = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    qg, kd = torch.empty_like(q), torch.empty_like(k)
    gk = torch.empty(m.NT, m.H, m.K, dtype=torch.float32, device=q.device)
    gla_prep_kernel[(m.NT * m.H, triton.cdiv(m.K, BK))](
        q, k, g, G, qg, kd, gk, m.cu_seqlens, m.chunk_indices, m.T,
        H=m.H, K=m.K, BT=m.BT, BK=BK, IS_VARLEN=m.is_varlen, num_warps=4)
    return G, qg, kd, gk


def gla_fwd_A(m: ChunkMeta, q: torch.Tensor, k: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """A [B, T, H, BT] float32: row i of a chunk holds A_ij for the chunk's tokens j (zero for j > i)."""
    BK, _ = _tiles(m)
    A = torch.empty(m.B, m.T, m.H, m.BT, dtype=torch.float32, device=q.device)
    NC = m.BT // BC
    gla_fwd_A_kernel[(m.NT * m.H, NC * NC)](
        q, k, G, A, m.cu_seqlens, m.chunk_indices, m.T,
        H=m.H, K=m.K, BT=m.BT, BC=BC, BK=BK, IS_VARLEN=m.is_varlen, PREC=m.prec, num_warps=4)
    return A


def gla_fwd_o(m: ChunkMeta, qg: torch.Tensor, v: torch.Tensor, h: torch.Tensor, A: torch.Tensor,
              scale: float) -> torch.Tensor:
    """O [B, T, H, V] in v's dtype."""
    BK, BV = _tiles(m)
    o = torch.empty_like(v)
    gla_fwd_o_kernel[(m.NT * m.H, triton.cdiv(m.V, BV))](
        qg, v, h, A, o, m.cu_seqlens, m.chunk_indices, scale, m.T,
        H=m.H, K=m.K, V=m.V, BT=m.BT, BK=BK, BV=BV, IS_VARLEN=m.is_varlen, PREC=m.prec, num_warps=4)
    return o


def gla_bwd_dA(m: ChunkMeta, v: torch.Tensor, do: torch.Tensor, A: torch.Tensor, scale: float):
    """Returns (dA [B, T, H, BT] float32, dV_local [B, T, H, V] float32)."""
    _, BV = _tiles(m)
    dA = torch.empty_like(A)
    dv_local = torch.empty(v.shape, dtype=torch.float32, device=v.device)
    gla_bwd_dA_kernel[(m.NT * m.H,)](
        v, do, A, dA, dv_local, m.cu_seqlens, m.chunk_indices, scale, m.T,
        H=m.H, V=m.V, BT=m.BT, BV=BV, IS_VARLEN=m.is_varlen, PREC=m.prec, num_warps=4)
    return dA, dv_local


def gla_bwd_intra(m: ChunkMeta, q: torch.Tensor, k: torch.Tensor, G: torch.Tensor, dA: torch.Tensor):
    """Returns the within-chunk (dQ, dK) [B, T, H, K] float32."""
    BK = min(BKD, _pow2(m.K))  # the diagonal block's [BC, BC, BK] product bounds the K block
    dq = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    dk = torch.empty_like(dq)
    gla_bwd_intra_kernel[(m.NT * m.H, m.BT // BC, triton.cdiv(m.K, BK))](
        q, k, G, dA, dq, dk, m.cu_seqlens, m.chunk_indices, m.T,
        H=m.H, K=m.K, BT=m.BT, BC=BC, BK=BK, IS_VARLEN=m.is_varlen, PREC=m.prec, num_warps=4)
    return dq, dk


def gla_bwd_dqkg(m: ChunkMeta, q, k, v, G, gk, h, do, dh, dq_intra, dk_intra, scale: float, g_dtype):
    """Returns (dq, dk in q's dtype, dg [B, T, H, K] in g_dtype)."""
    BK, BV = _tiles(m)
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    dg = torch.empty(q.shape, dtype=g_dtype, device=q.device)
    gla_bwd_dqkg_kernel[(m.NT * m.H, triton.cdiv(m.K, BK))](
        q, k, v, G, gk, h, do, dh, dq_intra, dk_intra, dq, dk, dg, m.cu_seqlens, m.chunk_indices, scale, m.T,
        H=m.H, K=m.K, V=m.V, BT=m.BT, BK=BK, BV=BV, IS_VARLEN=m.is_varlen, PREC=m.prec, num_warps=4)
    return dq, dk, dg
