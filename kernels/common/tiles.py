"""Tile helpers of the chunkwise kernels: masked tile loads and stores, program ids, chunk and sequence coordinates.

Layout conventions: token tensors are [B, T, H, D] contiguous (packed sequences: B = 1 and ``cu_seqlens``); a chunk
is addressed through a base pointer moved, in 64-bit arithmetic, to its first token, so in-block offsets stay small;
chunk states are [NT, H, K, V] with NT the chunks over all sequences.  (Sequence * head) lives on grid axis 0, or is
folded into axis 0 with the chunk index, so no grid axis limited to 65535 grows with N * H.
"""

import triton
import triton.language as tl

__all__ = ["block_ids", "chunk_coords", "decay_tril", "load_row", "load_tile", "seq_coords", "store_tile"]


@triton.jit
def load_tile(base, R, C, S, r0, c0, BR: tl.constexpr, BC: tl.constexpr):
    """Load the [BR, BC] tile at (r0, c0) of a row-major [R, C] matrix with row stride S (zeros outside).
    Plain masked pointers rather than block pointers: triton >= 3.9 removed block pointers."""
    o_r = r0 + tl.arange(0, BR)
    o_c = c0 + tl.arange(0, BC)
    m = (o_r[:, None] < R) & (o_c[None, :] < C)
    return tl.load(base + o_r[:, None] * S + o_c[None, :], mask=m, other=0.)


@triton.jit
def load_row(base, C, c0, BC: tl.constexpr):
    """Load the [BC] vector at c0 of a length-C vector (zeros outside), in float32."""
    o_c = c0 + tl.arange(0, BC)
    return tl.load(base + o_c, mask=o_c < C, other=0.).to(tl.float32)


@triton.jit
def store_tile(base, val, R, C, S, r0, c0, BR: tl.constexpr, BC: tl.constexpr):
    """Store the [BR, BC] tile `val` at (r0, c0) of a row-major [R, C] matrix with row stride S (cast to its dtype)."""
    o_r = r0 + tl.arange(0, BR)
    o_c = c0 + tl.arange(0, BC)
    m = (o_r[:, None] < R) & (o_c[None, :] < C)
    tl.store(base + o_r[:, None] * S + o_c[None, :], val.to(base.dtype.element_ty), mask=m)


@triton.jit
def block_ids(NB, FOLD: tl.constexpr):
    """(chunk*head program, block index) of a chunk-parallel kernel whose grid has NB K or V blocks per chunk and
    head.  FOLD: a 1-D grid with the blocks of one chunk adjacent (they read the same q, k, dO, V' tiles, which then
    come from L2); otherwise the 2-D grid (chunk * head, block)."""
    if FOLD:
        pid = tl.program_id(0)
        return pid // NB, pid % NB
    else:
        return tl.program_id(0), tl.program_id(1)


@triton.jit
def chunk_coords(i_tg, T, cu_seqlens, chunk_indices, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
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
def seq_coords(i_n, T, cu_seqlens, chunk_offsets, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """For sequence i_n: (bos, T_seq, NT_seq, boh) = first token (int64), length, number of chunks, first global
    chunk."""
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


@triton.jit
def decay_tril(b_g, n, BT: tl.constexpr, STRICT: tl.constexpr):
    """Gamma [BT, BT] of a chunk with cumulative log decays b_g [BT] (float32) and n valid tokens:
    Gamma_ij = exp(G_i - G_j) for j <= i < n (j < i when STRICT), else 0.  The exponent is masked before the exp,
    so it is always <= 0 (G is non-increasing): no overflow for long chunks of strong decay, and no inf * 0 at
    padded tokens."""
    o_t = tl.arange(0, BT)
    if STRICT:
        m = (o_t[:, None] > o_t[None, :]) & (o_t[:, None] < n)
    else:
        m = (o_t[:, None] >= o_t[None, :]) & (o_t[:, None] < n)
    return tl.exp(tl.where(m, b_g[:, None] - b_g[None, :], float("-inf")))
