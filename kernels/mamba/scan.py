"""Mamba's selective scan (S6) as a chunked parallel scan in Triton: forward, backward, autograd, public API.

The recurrence (per channel d, state index n; see ``naive.py`` for the readable form):

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * x_t        y_t = C_t . h_t + D * x_t        out_t = y_t * silu(z_t)

Work split: one program per (channel block of BD channels, sequence). It walks the sequence in chunks of BT tokens and
carries the [BD, N] state in registers.  Within a chunk the first-order linear recurrence is one
``tl.associative_scan`` over the token axis of [BT, BD, N] tensors, with the combine ``(a1, b1) . (a2, b2) = (a1 a2,
a2 b1 + b2)``; the carried state then enters as ``h_t = cumprod_t * h_carry + scan_t``.

The forward stores the state at the start of every chunk ([chunks, D, N] float32, one BT-th of all states).  The
backward walks the chunks in reverse: it recomputes the chunk's states from its stored start state with the same scan,
then gets the state adjoint ``dh_t = exp(dt_{t+1} A) dh_{t+1} + C_t g_t`` (g = dL/dy) by a reverse associative scan
whose coefficients are read one token ahead, so no register tensor has to be shifted.  Every term that needs
``h_{t-1}`` uses ``exp(dt_t A) h_{t-1} = h_t - dt_t B_t x_t`` instead, which needs no division by a decay that may
underflow.  dB and dC sum over channels, so each channel block writes its own partial ([D / BD, tokens, N]) and the
blocks are added in PyTorch (deterministic, no atomics); dA and dD are summed per sequence the same way.

That backward is one sequential walk per (channel block, sequence) doing all the work of every chunk: its chain of
chunks is long and its body heavy (two scans, the recomputed states, every gradient).  ``ScanTuning.bwd_split``
splits it in two.  A first kernel walks the chunks in reverse carrying only the state adjoint (one reverse scan per
chunk, no forward recompute) and stores the adjoint at the first token of the chunk after each chunk ([chunks, D,
N], like the states).  A second kernel then runs every chunk at once, ``bwd_chunks`` consecutive chunks per
program, each from its stored entering state and right adjoint, with the same per-chunk code (``_bwd_chunk``) as
the single walk; dA, dD and d dt_bias are summed per program and then in PyTorch.  With cu_seqlens the second
kernel numbers the chunks of all sequences in order and finds each one's sequence by a binary search over the
sequences' first chunks.  The split is off by default until ``benchmarks/bench_mamba_scan.py --sweep bwd`` has
timed it against the single walk.

Tokens past a sequence's end (and channels past D) load dt = x = B = C = 0, which makes their step the identity
(decay exp(0) = 1, input 0): the last row of a chunk's scan is the state after its last real token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

__all__ = ["selective_scan", "ScanTuning", "DEFAULT_TUNING"]


@dataclass(frozen=True)
class ScanTuning:
    """Block sizes of the scan kernels: BT tokens per chunk, BD channels per program, warps per program.

    bwd_split: the backward as two kernels (a reverse walk of the state adjoint alone, then every chunk's gradients
    in parallel, bwd_chunks chunks per program) instead of one sequential walk that does everything; the same
    gradients (see the module docstring)."""
    BT: int = 16
    BD: int = 16
    num_warps: int = 4
    bwd_BD: int = 16
    bwd_num_warps: int = 4
    bwd_split: bool = False
    bwd_chunks: int = 4

    def __post_init__(self):
        for name in ("BT", "BD", "bwd_BD"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v & (v - 1):
                raise ValueError(f"ScanTuning.{name} must be a power of two, got {v!r}")
        for name in ("num_warps", "bwd_num_warps", "bwd_chunks"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ScanTuning.{name} must be a positive int, got {v!r}")


DEFAULT_TUNING = ScanTuning()


@triton.jit
def _first_order_combine(a1, b1, a2, b2):
    # (a1, b1) is applied first, then (a2, b2):  h -> a2 * (a1 * h + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _step_size(b_raw, b_bias, m, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr):
    """dt = softplus(raw + bias) (each part optional); 0 where m is False (identity steps). Returns (dt, d dt/d raw)."""
    b_v = b_raw
    if HAS_DT_BIAS:
        b_v += b_bias[None, :]
    b_grad = tl.full(b_v.shape, 1., tl.float32)
    if DT_SOFTPLUS:
        b_big = b_v > 20.
        b_e = tl.exp(tl.where(b_big, 0., b_v))
        b_grad = tl.where(b_big, 1., b_e / (1. + b_e))  # sigmoid(v)
        b_v = tl.where(b_big, b_v, tl.log(1. + b_e))
    return tl.where(m, b_v, 0.), b_grad


@triton.jit
def _bounds(i_s, cu_seqlens, chunk_offsets, T, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """First token, length and first stored-chunk index of sequence i_s (64-bit)."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_s).to(tl.int64)
        eos = tl.load(cu_seqlens + i_s + 1).to(tl.int64)
        boc = tl.load(chunk_offsets + i_s).to(tl.int64)
    else:
        bos = i_s.to(tl.int64) * T
        eos = bos + T
        boc = i_s.to(tl.int64) * tl.cdiv(T, BT)
    return bos, eos - bos, boc


@triton.jit
def _selective_scan_fwd_kernel(
    x, dt, dt_bias, A, Bm, Cm, Dskip, z, h0, out, states, ht, cu_seqlens, chunk_offsets,
    T, D, N,
    BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, USE_H0: tl.constexpr, STORE_FINAL: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
):
    i_d, i_s = tl.program_id(0), tl.program_id(1)
    bos, L, boc = _bounds(i_s, cu_seqlens, chunk_offsets, T, BT, IS_VARLEN)
    o_d = i_d * BD + tl.arange(0, BD)
    o_n = tl.arange(0, BN)
    m_d, m_n = o_d < D, o_n < N
    m_dn = m_d[:, None] & m_n[None, :]
    o_dn = o_d[:, None] * N + o_n[None, :]  # [BD, BN] offsets into a [D, N] state
    b_A = tl.load(A + o_dn, mask=m_dn, other=0.).to(tl.float32)
    if HAS_D:
        b_Ds = tl.load(Dskip + o_d, mask=m_d, other=0.).to(tl.float32)
    b_bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_DT_BIAS:
        b_bias = tl.load(dt_bias + o_d, mask=m_d, other=0.).to(tl.float32)
    b_h = tl.zeros([BD, BN], dtype=tl.float32)
    if USE_H0:
        b_h = tl.load(h0 + i_s.to(tl.int64) * D * N + o_dn, mask=m_dn, other=0.).to(tl.float32)
    o_r = tl.arange(0, BT)
    for i_t in range(tl.cdiv(L, BT)):
        tl.store(states + (boc + i_t) * D * N + o_dn, b_h, mask=m_dn)  # the state entering this chunk
        o_t = i_t * BT + o_r
        m_t = o_t < L
        o_row = bos + o_t  # [BT] int64 token rows
        m_td = m_t[:, None] & m_d[None, :]
        m_tn = m_t[:, None] & m_n[None, :]
        o_td = o_row[:, None] * D + o_d[None, :]
        o_tn = o_row[:, None] * N + o_n[None, :]
        b_x = tl.load(x + o_td, mask=m_td, other=0.).to(tl.float32)  # [BT, BD]
        b_dt, _ = _step_size(tl.load(dt + o_td, mask=m_td, other=0.).to(tl.float32), b_bias, m_td,
                             HAS_DT_BIAS, DT_SOFTPLUS)
        b_B = tl.load(Bm + o_tn, mask=m_tn, other=0.).to(tl.float32)  # [BT, BN]
        b_C = tl.load(Cm + o_tn, mask=m_tn, other=0.).to(tl.float32)
        b_dA = tl.exp(b_dt[:, :, None] * b_A[None, :, :])  # [BT, BD, BN]
        b_dBx = (b_dt * b_x)[:, :, None] * b_B[:, None, :]
        b_ac, b_bc = tl.associative_scan((b_dA, b_dBx), 0, _first_order_combine)
        b_hs = b_ac * b_h[None, :, :] + b_bc  # h_t for every token of the chunk
        b_y = tl.sum(b_hs * b_C[:, None, :], 2)  # [BT, BD]
        if HAS_D:
            b_y += b_Ds[None, :] * b_x
        if HAS_Z:
            b_z = tl.load(z + o_td, mask=m_td, other=0.).to(tl.float32)
            b_y = b_y * b_z * tl.sigmoid(b_z)
        tl.store(out + o_td, b_y.to(out.dtype.element_ty), mask=m_td)
        b_h = tl.sum(tl.where((o_r == BT - 1)[:, None, None], b_hs, 0.), 0)  # the state after the chunk
    if STORE_FINAL:
        tl.store(ht + i_s.to(tl.int64) * D * N + o_dn, b_h, mask=m_dn)


@triton.jit
def _bwd_chunk(
    x, dt, Bm, Cm, z, dout, dx, ddt, dz, dB_part, dC_part,
    b_h, b_dh, b_A, b_Ds, b_bias, i_d, bos, L, i_t, D, N, TOTAL,
    BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
):
    """The gradients of chunk i_t of one sequence (first token bos, length L) for channel block i_d, from the state
    entering the chunk (b_h) and the adjoint of the state at the first token of the next chunk (b_dh; for the last
    chunk, that of the final state).  Stores dx, ddt, dz and this block's dB, dC partial rows.  Returns (the adjoint
    of the state at this chunk's first token, the adjoint of the state entering it, and this chunk's sums of dA
    [BD, BN], dD [BD] and d dt_bias [BD])."""
    o_d = i_d * BD + tl.arange(0, BD)
    o_n = tl.arange(0, BN)
    m_d, m_n = o_d < D, o_n < N
    o_r = tl.arange(0, BT)
    o_t = i_t * BT + o_r
    m_t = o_t < L
    m_tn1 = (o_t + 1) < L
    o_row = bos + o_t
    m_td = m_t[:, None] & m_d[None, :]
    m_tn = m_t[:, None] & m_n[None, :]
    o_td = o_row[:, None] * D + o_d[None, :]
    o_tn = o_row[:, None] * N + o_n[None, :]
    b_x = tl.load(x + o_td, mask=m_td, other=0.).to(tl.float32)
    b_dt, b_dt_grad = _step_size(tl.load(dt + o_td, mask=m_td, other=0.).to(tl.float32), b_bias, m_td,
                                 HAS_DT_BIAS, DT_SOFTPLUS)
    m_tdn = m_tn1[:, None] & m_d[None, :]
    b_dtn, _ = _step_size(tl.load(dt + o_td + D, mask=m_tdn, other=0.).to(tl.float32), b_bias, m_tdn,
                          HAS_DT_BIAS, DT_SOFTPLUS)  # dt_{t+1}
    b_B = tl.load(Bm + o_tn, mask=m_tn, other=0.).to(tl.float32)
    b_C = tl.load(Cm + o_tn, mask=m_tn, other=0.).to(tl.float32)
    b_do = tl.load(dout + o_td, mask=m_td, other=0.).to(tl.float32)
    # recompute the chunk's states
    b_dA = tl.exp(b_dt[:, :, None] * b_A[None, :, :])
    b_dtx = b_dt * b_x
    b_dBx = b_dtx[:, :, None] * b_B[:, None, :]
    b_ac, b_bc = tl.associative_scan((b_dA, b_dBx), 0, _first_order_combine)
    b_hs = b_ac * b_h[None, :, :] + b_bc  # h_t
    b_hpd = b_hs - b_dBx  # exp(dt_t A) h_{t-1}
    if HAS_Z:
        b_z = tl.load(z + o_td, mask=m_td, other=0.).to(tl.float32)
        b_sz = tl.sigmoid(b_z)
        b_y = tl.sum(b_hs * b_C[:, None, :], 2)
        if HAS_D:
            b_y += b_Ds[None, :] * b_x
        b_g = b_do * b_z * b_sz  # dL/dy
        b_dz = b_do * b_y * b_sz * (1. + b_z * (1. - b_sz))
        tl.store(dz + o_td, b_dz.to(dz.dtype.element_ty), mask=m_td)
    else:
        b_g = b_do
    b_dC = tl.sum(b_hs * b_g[:, :, None], 1)  # [BT, BN], this block's channels only
    # dh_t = exp(dt_{t+1} A) dh_{t+1} + C_t g_t, as a reverse scan carrying dh of the chunk after
    b_dAn = tl.exp(b_dtn[:, :, None] * b_A[None, :, :])
    b_gC = b_g[:, :, None] * b_C[:, None, :]
    b_ra, b_rb = tl.associative_scan((b_dAn, b_gC), 0, _first_order_combine, reverse=True)
    b_dhs = b_ra * b_dh[None, :, :] + b_rb  # [BT, BD, BN]
    b_hd = b_dhs * b_hpd  # dh_t * exp(dt_t A) h_{t-1}
    b_dhB = tl.sum(b_dhs * b_B[:, None, :], 2)  # [BT, BD]
    b_ddt = tl.where(m_td, (tl.sum(b_hd * b_A[None, :, :], 2) + b_dhB * b_x) * b_dt_grad, 0.)  # d raw dt
    b_dbias = tl.sum(b_ddt, 0)
    b_dx = b_dhB * b_dt
    b_dD = tl.zeros([BD], dtype=tl.float32)
    if HAS_D:
        b_dx += b_Ds[None, :] * b_g
        b_dD = tl.sum(b_g * b_x, 0)
    b_dB = tl.sum(b_dhs * b_dtx[:, :, None], 1)
    tl.store(dx + o_td, b_dx.to(dx.dtype.element_ty), mask=m_td)
    tl.store(ddt + o_td, b_ddt.to(ddt.dtype.element_ty), mask=m_td)
    o_part = i_d.to(tl.int64) * TOTAL * N + o_tn
    tl.store(dB_part + o_part, b_dB, mask=m_tn)
    tl.store(dC_part + o_part, b_dC, mask=m_tn)
    b_first = (o_r == 0)[:, None, None]
    b_dh_first = tl.sum(tl.where(b_first, b_dhs, 0.), 0)  # dh at the chunk's first token
    b_dh_in = tl.sum(tl.where(b_first, b_dhs * b_dA, 0.), 0)  # adjoint of the state entering the chunk
    return b_dh_first, b_dh_in, tl.sum(b_hd * b_dt[:, :, None], 0), b_dD, b_dbias


@triton.jit
def _block_params(A, Dskip, dt_bias, i_d, D, N, BD: tl.constexpr, BN: tl.constexpr, HAS_D: tl.constexpr,
                  HAS_DT_BIAS: tl.constexpr):
    """A [BD, BN], D [BD] and dt_bias [BD] of channel block i_d (zeros where absent), and the [BD, BN] offsets and
    mask of a [D, N] state."""
    o_d = i_d * BD + tl.arange(0, BD)
    o_n = tl.arange(0, BN)
    m_d, m_n = o_d < D, o_n < N
    m_dn = m_d[:, None] & m_n[None, :]
    o_dn = o_d[:, None] * N + o_n[None, :]
    b_A = tl.load(A + o_dn, mask=m_dn, other=0.).to(tl.float32)
    b_Ds = tl.zeros([BD], dtype=tl.float32)
    if HAS_D:
        b_Ds = tl.load(Dskip + o_d, mask=m_d, other=0.).to(tl.float32)
    b_bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_DT_BIAS:
        b_bias = tl.load(dt_bias + o_d, mask=m_d, other=0.).to(tl.float32)
    return b_A, b_Ds, b_bias, o_dn, m_dn


@triton.jit
def _store_partials(dA_part, dD_part, dbias_part, o_p, o_dn, m_dn, b_dA, b_dD, b_dbias, i_d, D, N,
                    BD: tl.constexpr, HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr):
    """One program's sums of dA [BD, BN], dD and d dt_bias [BD] into row o_p / D of their partial buffers."""
    o_d = i_d * BD + tl.arange(0, BD)
    tl.store(dA_part + o_p * N + o_dn, b_dA, mask=m_dn)
    if HAS_D:
        tl.store(dD_part + o_p + o_d, b_dD, mask=o_d < D)
    if HAS_DT_BIAS:
        tl.store(dbias_part + o_p + o_d, b_dbias, mask=o_d < D)


@triton.jit
def _selective_scan_bwd_kernel(
    x, dt, dt_bias, A, Bm, Cm, Dskip, z, dout, states, dht, cu_seqlens, chunk_offsets,
    dx, ddt, dz, dB_part, dC_part, dA_part, dD_part, dbias_part, dh0,
    T, D, N, TOTAL,
    BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
):
    """One program per (channel block, sequence) walks the chunks in reverse, carrying the state adjoint."""
    i_d, i_s = tl.program_id(0), tl.program_id(1)
    bos, L, boc = _bounds(i_s, cu_seqlens, chunk_offsets, T, BT, IS_VARLEN)
    b_A, b_Ds, b_bias, o_dn, m_dn = _block_params(A, Dskip, dt_bias, i_d, D, N, BD, BN, HAS_D, HAS_DT_BIAS)
    b_dh = tl.zeros([BD, BN], dtype=tl.float32)  # adjoint of the state after the current chunk
    if USE_DHT:
        b_dh = tl.load(dht + i_s.to(tl.int64) * D * N + o_dn, mask=m_dn, other=0.).to(tl.float32)
    b_dh0 = b_dh
    b_dA_acc = tl.zeros([BD, BN], dtype=tl.float32)
    b_dD_acc = tl.zeros([BD], dtype=tl.float32)
    b_dbias_acc = tl.zeros([BD], dtype=tl.float32)
    NT = tl.cdiv(L, BT)
    for i_rev in range(NT):
        i_t = NT - 1 - i_rev
        b_h = tl.load(states + (boc + i_t) * D * N + o_dn, mask=m_dn, other=0.)  # the state entering the chunk
        b_dh, b_dh0, b_a, b_d, b_b = _bwd_chunk(
            x, dt, Bm, Cm, z, dout, dx, ddt, dz, dB_part, dC_part, b_h, b_dh, b_A, b_Ds, b_bias, i_d, bos, L, i_t,
            D, N, TOTAL, BT, BD, BN, HAS_D, HAS_Z, HAS_DT_BIAS, DT_SOFTPLUS)
        b_dA_acc += b_a
        b_dD_acc += b_d
        b_dbias_acc += b_b
    o_s = i_s.to(tl.int64) * D
    _store_partials(dA_part, dD_part, dbias_part, o_s, o_dn, m_dn, b_dA_acc, b_dD_acc, b_dbias_acc, i_d, D, N, BD,
                    HAS_D, HAS_DT_BIAS)
    if STORE_DH0:
        tl.store(dh0 + o_s * N + o_dn, b_dh0, mask=m_dn)


@triton.jit
def _selective_scan_bwd_walk_kernel(
    dt, dt_bias, A, Cm, z, dout, dht, cu_seqlens, chunk_offsets, dh_right, dh0,
    T, D, N,
    BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
    HAS_Z: tl.constexpr, USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
):
    """The split backward's sequential part, one program per (channel block, sequence): the state adjoint alone,
    walked over the chunks in reverse (dh_t = exp(dt_{t+1} A) dh_{t+1} + C_t g_t, one reverse scan per chunk, no
    forward recompute).  Stores, per chunk, the adjoint at the first token of the chunk after it (dh_right, laid out
    like the forward's states), and the adjoint of the initial state."""
    i_d, i_s = tl.program_id(0), tl.program_id(1)
    bos, L, boc = _bounds(i_s, cu_seqlens, chunk_offsets, T, BT, IS_VARLEN)
    b_A, b_no_d, b_bias, o_dn, m_dn = _block_params(A, A, dt_bias, i_d, D, N, BD, BN, False, HAS_DT_BIAS)
    o_d = i_d * BD + tl.arange(0, BD)
    o_n = tl.arange(0, BN)
    m_d, m_n = o_d < D, o_n < N
    b_dh = tl.zeros([BD, BN], dtype=tl.float32)
    if USE_DHT:
        b_dh = tl.load(dht + i_s.to(tl.int64) * D * N + o_dn, mask=m_dn, other=0.).to(tl.float32)
    o_r = tl.arange(0, BT)
    NT = tl.cdiv(L, BT)
    for i_rev in range(NT):
        i_t = NT - 1 - i_rev
        tl.store(dh_right + (boc + i_t) * D * N + o_dn, b_dh, mask=m_dn)
        o_t = i_t * BT + o_r
        m_t = o_t < L
        m_tn1 = (o_t + 1) < L
        o_row = bos + o_t
        m_td = m_t[:, None] & m_d[None, :]
        o_td = o_row[:, None] * D + o_d[None, :]
        m_tdn = m_tn1[:, None] & m_d[None, :]
        b_dtn, b_dtn_grad = _step_size(tl.load(dt + o_td + D, mask=m_tdn, other=0.).to(tl.float32), b_bias, m_tdn,
                                       HAS_DT_BIAS, DT_SOFTPLUS)  # dt_{t+1}
        b_C = tl.load(Cm + o_row[:, None] * N + o_n[None, :], mask=m_t[:, None] & m_n[None, :], other=0.)
        b_g = tl.load(dout + o_td, mask=m_td, other=0.).to(tl.float32)
        if HAS_Z:
            b_z = tl.load(z + o_td, mask=m_td, other=0.).to(tl.float32)
            b_g = b_g * b_z * tl.sigmoid(b_z)  # dL/dy
        b_ra, b_rb = tl.associative_scan((tl.exp(b_dtn[:, :, None] * b_A[None, :, :]),
                                          b_g[:, :, None] * b_C.to(tl.float32)[:, None, :]),
                                         0, _first_order_combine, reverse=True)
        b_dh = tl.sum(tl.where((o_r == 0)[:, None, None], b_ra * b_dh[None, :, :] + b_rb, 0.), 0)
    if STORE_DH0:  # h_0 = exp(dt_0 A) h_init + ...: the initial state's adjoint is exp(dt_0 A) dh_0
        m_0 = m_d & ((o_d * 0 + L) > 0)  # token 0 exists (a packed sequence may be empty)
        b_dt0, b_dt0_grad = _step_size(tl.load(dt + bos * D + o_d, mask=m_0, other=0.).to(tl.float32)[None, :],
                                       b_bias, m_0[None, :], HAS_DT_BIAS, DT_SOFTPLUS)
        b_a0 = tl.exp(tl.sum(b_dt0, 0)[:, None] * b_A)
        tl.store(dh0 + i_s.to(tl.int64) * D * N + o_dn, b_a0 * b_dh, mask=m_dn)


@triton.jit
def _selective_scan_bwd_chunks_kernel(
    x, dt, dt_bias, A, Bm, Cm, Dskip, z, dout, states, dh_right, cu_seqlens, chunk_offsets,
    dx, ddt, dz, dB_part, dC_part, dA_part, dD_part, dbias_part,
    T, D, N, TOTAL, S,
    BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, G: tl.constexpr, LOG_S: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    DT_SOFTPLUS: tl.constexpr,
):
    """The split backward's parallel part: every chunk at once, G chunks per program (of one sequence, or with
    cu_seqlens of the packed chunk order), each from its entering state and the adjoint dh_right of the walk.
    Grid: (channel blocks, chunk groups, sequences; 1 with cu_seqlens).  Writes one dA / dD / d dt_bias partial per
    program."""
    i_d, i_g, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b_A, b_Ds, b_bias, o_dn, m_dn = _block_params(A, Dskip, dt_bias, i_d, D, N, BD, BN, HAS_D, HAS_DT_BIAS)
    b_dA_acc = tl.zeros([BD, BN], dtype=tl.float32)
    b_dD_acc = tl.zeros([BD], dtype=tl.float32)
    b_dbias_acc = tl.zeros([BD], dtype=tl.float32)
    NT = tl.cdiv(T, BT)
    for j in range(G):
        c = i_g * G + j
        if IS_VARLEN:  # the sequence holding packed chunk c: the last s with chunk_offsets[s] <= c (binary search)
            lo = tl.full([], 0, tl.int32)
            hi = lo + S
            for _ in range(LOG_S):
                mid = (lo + hi) // 2
                go = tl.load(chunk_offsets + mid) <= c
                lo = tl.where(go, mid, lo)
                hi = tl.where(go, hi, mid)
            boc = tl.load(chunk_offsets + lo).to(tl.int64)
            valid = c < tl.load(chunk_offsets + S)
            bos = tl.load(cu_seqlens + lo).to(tl.int64)
            L = tl.load(cu_seqlens + lo + 1).to(tl.int64) - bos
            i_t = c - boc
        else:
            valid = c < NT
            bos = i_s.to(tl.int64) * T
            L = T
            boc = i_s.to(tl.int64) * NT
            i_t = c
        if valid:
            o_c = (boc + i_t) * D * N + o_dn
            b_h = tl.load(states + o_c, mask=m_dn, other=0.)
            b_dh = tl.load(dh_right + o_c, mask=m_dn, other=0.)
            b_dh_first, b_dh_in, b_a, b_d, b_b = _bwd_chunk(
                x, dt, Bm, Cm, z, dout, dx, ddt, dz, dB_part, dC_part, b_h, b_dh, b_A, b_Ds, b_bias, i_d, bos, L,
                i_t, D, N, TOTAL, BT, BD, BN, HAS_D, HAS_Z, HAS_DT_BIAS, DT_SOFTPLUS)
            b_dA_acc += b_a
            b_dD_acc += b_d
            b_dbias_acc += b_b
    o_p = (i_s * tl.num_programs(1) + i_g).to(tl.int64) * D
    _store_partials(dA_part, dD_part, dbias_part, o_p, o_dn, m_dn, b_dA_acc, b_dD_acc, b_dbias_acc, i_d, D, N, BD,
                    HAS_D, HAS_DT_BIAS)


def _chunk_offsets(cu_seqlens: Optional[torch.Tensor], T: int, S: int, BT: int) -> Tuple[Optional[torch.Tensor], int]:
    """Index of each sequence's first stored chunk (varlen; [S + 1] int32, the total last) and a bound on the number
    of chunks, without a sync."""
    if cu_seqlens is None:
        return None, S * triton.cdiv(T, BT)
    n = (cu_seqlens[1:] - cu_seqlens[:-1] + BT - 1) // BT
    return F.pad(torch.cumsum(n, 0), (1, 0)).to(torch.int32), triton.cdiv(T, BT) + S


def _scan_fwd(x, dt, dt_bias, dt_softplus, A, B, C, D, z, h0, output_final_state, cu_seqlens, tuning: ScanTuning):
    Bsz, T, Dm = x.shape
    N = A.shape[1]
    S = Bsz if cu_seqlens is None else cu_seqlens.numel() - 1
    BT, BD = tuning.BT, tuning.BD
    offsets, n_chunks = _chunk_offsets(cu_seqlens, T, S, BT)
    out = torch.empty_like(x)
    states = x.new_empty(max(n_chunks, 1), Dm, N, dtype=torch.float32)
    ht = x.new_empty(S, Dm, N, dtype=torch.float32) if output_final_state else None
    grid = (triton.cdiv(Dm, BD), S)
    _selective_scan_fwd_kernel[grid](
        x, dt, dt_bias, A, B, C, D, z, h0, out, states, ht, cu_seqlens, offsets,
        T, Dm, N,
        BT=BT, BD=BD, BN=triton.next_power_of_2(N),
        HAS_D=D is not None, HAS_Z=z is not None, USE_H0=h0 is not None, STORE_FINAL=output_final_state,
        IS_VARLEN=cu_seqlens is not None, HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=dt_softplus,
        num_warps=tuning.num_warps,
    )
    return out, states, ht


def _scan_bwd(x, dt, dt_bias, dt_softplus, A, B, C, D, z, h0, states, dout, dht, cu_seqlens, tuning: ScanTuning):
    Bsz, T, Dm = x.shape
    N = A.shape[1]
    S = Bsz if cu_seqlens is None else cu_seqlens.numel() - 1
    BT, BD = tuning.BT, tuning.bwd_BD
    offsets, _ = _chunk_offsets(cu_seqlens, T, S, BT)
    ND = triton.cdiv(Dm, BD)
    dx, ddt = torch.empty_like(x), torch.empty_like(dt)
    dz = torch.empty_like(z) if z is not None else None
    # every row of the partials is written (the sequences cover all T tokens), so no zero fill
    dB_part = x.new_empty(ND, Bsz * T, N, dtype=torch.float32)
    dC_part = x.new_empty(ND, Bsz * T, N, dtype=torch.float32)
    dh0 = x.new_empty(S, Dm, N, dtype=torch.float32) if h0 is not None else None
    flags = dict(HAS_Z=z is not None, IS_VARLEN=cu_seqlens is not None, HAS_DT_BIAS=dt_bias is not None,
                 DT_SOFTPLUS=dt_softplus)

    def partials(n):  # dA, dD and d dt_bias: one partial sum per sequence (one walk) or per program (split)
        return (x.new_empty(n, Dm, N, dtype=torch.float32),
                x.new_empty(n, Dm, dtype=torch.float32) if D is not None else None,
                x.new_empty(n, Dm, dtype=torch.float32) if dt_bias is not None else None)

    if not tuning.bwd_split:
        dA_part, dD_part, dbias_part = partials(S)
        _selective_scan_bwd_kernel[(ND, S)](
            x, dt, dt_bias, A, B, C, D, z, dout, states, dht, cu_seqlens, offsets,
            dx, ddt, dz, dB_part, dC_part, dA_part, dD_part, dbias_part, dh0,
            T, Dm, N, Bsz * T, BT=BT, BD=BD, BN=triton.next_power_of_2(N),
            HAS_D=D is not None, USE_DHT=dht is not None, STORE_DH0=h0 is not None, **flags,
            num_warps=tuning.bwd_num_warps,
        )
    else:
        # 1) the state adjoint entering each chunk from the right, one reverse walk per (channel block, sequence)
        dh_right = torch.empty_like(states)
        _selective_scan_bwd_walk_kernel[(ND, S)](
            dt, dt_bias, A, C, z, dout, dht, cu_seqlens, offsets, dh_right, dh0,
            T, Dm, N, BT=BT, BD=BD, BN=triton.next_power_of_2(N),
            USE_DHT=dht is not None, STORE_DH0=h0 is not None, **flags, num_warps=tuning.bwd_num_warps,
        )
        # 2) every chunk's gradients at once; dA, dD and d dt_bias summed per program, then here
        G = tuning.bwd_chunks
        if cu_seqlens is None:
            groups, seqs = triton.cdiv(triton.cdiv(T, BT), G), S
        else:
            groups, seqs = triton.cdiv(states.shape[0], G), 1  # states holds a bound on the number of chunks
        groups = max(groups, 1)
        dA_part, dD_part, dbias_part = partials(seqs * groups)
        _selective_scan_bwd_chunks_kernel[(ND, groups, seqs)](
            x, dt, dt_bias, A, B, C, D, z, dout, states, dh_right, cu_seqlens, offsets,
            dx, ddt, dz, dB_part, dC_part, dA_part, dD_part, dbias_part,
            T, Dm, N, Bsz * T, S, BT=BT, BD=BD, BN=triton.next_power_of_2(N), G=G,
            LOG_S=max(S - 1, 0).bit_length(), HAS_D=D is not None, **flags, num_warps=tuning.bwd_num_warps,
        )
    dB = dB_part.sum(0).view(Bsz, T, N).to(B.dtype)
    dC = dC_part.sum(0).view(Bsz, T, N).to(C.dtype)
    dA = dA_part.sum(0).to(A.dtype)
    dD = dD_part.sum(0).to(D.dtype) if D is not None else None
    dh0 = dh0.to(h0.dtype) if h0 is not None else None
    dbias = dbias_part.sum(0).to(dt_bias.dtype) if dt_bias is not None else None
    return dx, ddt, dbias, dA, dB, dC, dD, dz, dh0


class SelectiveScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, dt_bias, dt_softplus, A, B, C, D, z, initial_state, output_final_state, cu_seqlens,
                tuning):
        out, states, ht = _scan_fwd(x, dt, dt_bias, dt_softplus, A, B, C, D, z, initial_state, output_final_state,
                                    cu_seqlens, tuning)
        ctx.save_for_backward(x, dt, dt_bias, A, B, C, D, z, initial_state, states, cu_seqlens)
        ctx.tuning, ctx.dt_softplus = tuning, dt_softplus
        return out, ht

    @staticmethod
    def backward(ctx, dout, dht):
        x, dt, dt_bias, A, B, C, D, z, h0, states, cu_seqlens = ctx.saved_tensors
        grads = _scan_bwd(x, dt, dt_bias, ctx.dt_softplus, A, B, C, D, z, h0, states, dout.contiguous(),
                          dht.contiguous() if dht is not None else None, cu_seqlens, ctx.tuning)
        dx, ddt, dbias, dA, dB, dC, dD, dz, dh0 = grads
        return dx, ddt, dbias, None, dA, dB, dC, dD, dz, dh0, None, None, None


_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def _validate(x, dt, dt_bias, A, B, C, D, z, initial_state, cu_seqlens, check_A_sign):
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, D], got shape {tuple(x.shape)}")
    Bsz, T, Dm = x.shape
    if x.dtype not in _FLOATS:
        raise ValueError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if dt.shape != x.shape:
        raise ValueError(f"dt must have x's shape {tuple(x.shape)}, got {tuple(dt.shape)}")
    if A.dim() != 2 or A.shape[0] != Dm:
        raise ValueError(f"A must be [D, N] with D = {Dm}, got shape {tuple(A.shape)}")
    N = A.shape[1]
    if N < 1 or N > 256:
        raise ValueError(f"A's state size N must be in [1, 256], got A of shape {tuple(A.shape)}")
    for name, t in (("B", B), ("C", C)):
        if t.shape != (Bsz, T, N):
            raise ValueError(f"{name} must be [B, T, N] = {(Bsz, T, N)}, got {tuple(t.shape)}")
    if D is not None and D.shape != (Dm,):
        raise ValueError(f"D must be [D] = {(Dm,)}, got {tuple(D.shape)}")
    if dt_bias is not None and dt_bias.shape != (Dm,):
        raise ValueError(f"dt_bias must be [D] = {(Dm,)}, got {tuple(dt_bias.shape)}")
    if z is not None and z.shape != x.shape:
        raise ValueError(f"z must have x's shape {tuple(x.shape)}, got {tuple(z.shape)}")
    named = [("x", x), ("dt", dt), ("dt_bias", dt_bias), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z), ("initial_state", initial_state)]
    for name, t in named:
        if t is None:
            continue
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, x on {x.device}: all inputs must be on one device")
        if t.dtype not in _FLOATS:
            raise ValueError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
    for name, t in (("dt", dt), ("B", B), ("C", C), ("z", z)):
        if t is not None and t.dtype != x.dtype:
            raise ValueError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
    S = Bsz
    if cu_seqlens is not None:
        if Bsz != 1:
            raise ValueError(f"with cu_seqlens the batch size must be 1, got x of shape {tuple(x.shape)}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"cu_seqlens must be a 1-D int32/int64 tensor of N + 1 >= 2 offsets, got "
                             f"{cu_seqlens.dtype} of shape {tuple(cu_seqlens.shape)}")
        if cu_seqlens.device != x.device:
            raise ValueError(f"cu_seqlens is on {cu_seqlens.device}, x on {x.device}")
        cu = cu_seqlens.tolist()
        if cu[0] != 0 or cu[-1] != T or any(b < a for a, b in zip(cu, cu[1:])):
            raise ValueError(f"cu_seqlens must be non-decreasing from 0 to T = {T}, got {cu}")
        S = len(cu) - 1
    if initial_state is not None and initial_state.shape != (S, Dm, N):
        raise ValueError(f"initial_state must be [S, D, N] = {(S, Dm, N)} (S = batch or number of sequences), got "
                         f"{tuple(initial_state.shape)}")
    if check_A_sign and bool((A > 0).any()):
        raise ValueError("A must be <= 0 everywhere (A = -exp(A_log)); a positive entry makes the state grow "
                         "exponentially")


def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    check_A_sign: bool = True,
    tuning: ScanTuning = DEFAULT_TUNING,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Mamba's selective scan, chunked in Triton (forward and backward).

    Args:
        x: [B, T, D] float16 / bfloat16 / float32, the scanned input.
        dt: [B, T, D], x's dtype: the step sizes, or with ``dt_bias`` / ``dt_softplus`` their raw form.
        A: [D, N] float (float32 advised), <= 0 (``-exp(A_log)``); N = state size (<= 256).
        B, C: [B, T, N], x's dtype, the input and output maps of the state (shared by all channels).
        D: [D] float or None, skip weight (``y += D * x``).
        z: [B, T, D], x's dtype, or None: gate (``out = y * silu(z)``).
        initial_state: [S, D, N] float or None (zeros); S = B, or the number of sequences with ``cu_seqlens``.
        output_final_state: also return the state after the last token, [S, D, N] float32.
        cu_seqlens: [S + 1] int32/int64 offsets of S packed sequences (B = 1); each starts from its own state.
        dt_bias: [D] float or None, added to dt inside the kernel (float32).
        dt_softplus: apply softplus to (dt + dt_bias) inside the kernel: the step size is then computed in float32
            and no [B, T, D] step-size tensor is materialised (nor its softplus backward).
        check_A_sign: check that A <= 0 (one device sync); the Mamba layer, whose A is negative by construction,
            passes False.
        tuning: block sizes (:class:`ScanTuning`).
    Returns:
        (out [B, T, D] in x's dtype, final state [S, D, N] float32 or None). Differentiable in x, dt, dt_bias, A, B,
        C, D, z and initial_state (also through the final state).

    Example::

        out, h = selective_scan(x, dt_raw, -torch.exp(A_log), B, C, D, z, output_final_state=True,
                                dt_bias=dt_proj_bias, dt_softplus=True)
    """
    _validate(x, dt, dt_bias, A, B, C, D, z, initial_state, cu_seqlens, check_A_sign)
    if x.device.type != "cuda" and not _interpreted():
        raise ValueError(f"selective_scan runs Triton kernels: x must be on a CUDA device (or set TRITON_INTERPRET=1 "
                         f"before importing triton to run them on CPU), got {x.device}")
    x, dt, A, B, C = (t.contiguous() for t in (x, dt, A, B, C))
    D = D.contiguous() if D is not None else None
    z = z.contiguous() if z is not None else None
    initial_state = initial_state.contiguous() if initial_state is not None else None
    dt_bias = dt_bias.contiguous() if dt_bias is not None else None
    return SelectiveScanFunction.apply(x, dt, dt_bias, bool(dt_softplus), A, B, C, D, z, initial_state,
                                       output_final_state, cu_seqlens, tuning)


def _interpreted() -> bool:
    return type(_selective_scan_fwd_kernel).__name__ == "InterpretedFunction"
