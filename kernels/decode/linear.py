"""Matrix-vector products of a decoding step: ``x @ W^T`` for a few rows x, and the SwiGLU product
``silu(x @ Wg^T) * (x @ Wu^T)`` read from both weights in one pass.

At batch 1 a decoding step is a chain of matrix-vector products (the mixer's projections, the MLP, the LM head): each
reads its weight once and does two FLOPs per weight element, so it is bound by memory.  One program per ``BN``
output rows (and per input row) streams its [BN, K] slice of the weight in [BN, BK] tiles and keeps a [BN, BK]
float32 partial sum, reduced once at the end.  Rows of x are separate programs: the second reads the weight from L2.
Above ``MAX_ROWS`` rows a GEMM is the better kernel and :func:`decode_linear` is not the place (see
``deltanet/layers/static.py``, which picks).  The math, in float32 with one rounding at the end, is that of
``F.linear`` (``naive_decode_linear``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..common.utils import check_triton_runnable

__all__ = ["decode_linear", "naive_decode_linear", "MAX_ROWS"]

# Rows of x above which a GEMM (cuBLAS) is the better kernel: each row here rereads the weight (from L2).
MAX_ROWS = 4
# Weight columns per tile, and warps per program (see choose_blocks for the rows per program).  Swept on the H200 over
# BN 4..32, BK 128..512, 2..8 warps at batch 1, bf16, under a CUDA graph (do_bench_cudagraph): 128 columns and 8 warps
# were within 5% of the best at every product of the 340M and 1.3B steps and faster than cuBLAS at each (us, ours
# against F.linear): 340M in-proj (3088 x 1024) 2.91 vs 3.76, o-proj (1024 x 1024) 2.14 vs 7.32, SwiGLU gate + up
# (2 x 2816 x 1024) 3.71 vs 11.13, down (1024 x 2816) 3.12 vs 6.17, LM head (32000 x 1024) 18.35 vs 18.79; 1.3B
# in-proj (6160 x 2048) 5.96 vs 7.34, down (2048 x 5632) 6.94 vs 9.30.  256 columns and 4 warps were 10-48% slower.
BK_DEFAULT, WARPS_DEFAULT = 128, 8


@triton.jit
def decode_linear_kernel(x, w, w2, y, N, K, s_x, s_y, BN: tl.constexpr, BK: tl.constexpr, SWIGLU: tl.constexpr):
    """Grid: (cdiv(N, BN), rows).  y[m, n] = sum_k x[m, k] w[n, k]; with SWIGLU silu(that) * (the same with w2)."""
    i_n, i_m = tl.program_id(0), tl.program_id(1)
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    p_w = o_n.to(tl.int64)[:, None] * K
    acc = tl.zeros([BN, BK], dtype=tl.float32)
    acc2 = tl.zeros([BN, BK], dtype=tl.float32)
    for k0 in range(0, K, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < K
        b_x = tl.load(x + i_m.to(tl.int64) * s_x + o_k, mask=m_k, other=0.).to(tl.float32)
        m_w = m_n[:, None] & m_k[None, :]
        b_w = tl.load(w + p_w + o_k[None, :], mask=m_w, other=0.).to(tl.float32)
        acc += b_w * b_x[None, :]
        if SWIGLU:
            b_w2 = tl.load(w2 + p_w + o_k[None, :], mask=m_w, other=0.).to(tl.float32)
            acc2 += b_w2 * b_x[None, :]
    r = tl.sum(acc, 1)
    if SWIGLU:
        r = r * tl.sigmoid(r) * tl.sum(acc2, 1)
    tl.store(y + i_m.to(tl.int64) * s_y + o_n, r.to(y.dtype.element_ty), mask=m_n)


def choose_blocks(N: int, rows: int, sms: int = 132) -> int:
    """Output rows per program: the largest of 16, 8, 4 that still gives every SM two programs (small N: more,
    thinner programs, each still reading whole tiles of K)."""
    for bn in (16, 8):
        if triton.cdiv(N, bn) * rows >= 2 * sms:
            return bn
    return 4


def naive_decode_linear(x: torch.Tensor, weight: torch.Tensor, weight2: Optional[torch.Tensor] = None) -> torch.Tensor:
    """PyTorch form of :func:`decode_linear`: float32 products, rounded once to x's dtype."""
    y = F.linear(x.float(), weight.float())
    if weight2 is not None:
        y = F.silu(y) * F.linear(x.float(), weight2.float())
    return y.to(x.dtype)


def decode_linear(x: torch.Tensor, weight: torch.Tensor, weight2: Optional[torch.Tensor] = None, *,
                  BN: Optional[int] = None, BK: Optional[int] = None, num_warps: Optional[int] = None) -> torch.Tensor:
    """``x @ weight^T`` for at most ``MAX_ROWS`` rows (no gradients), or with ``weight2`` the SwiGLU product
    ``silu(x @ weight^T) * (x @ weight2^T)``.

    Args:
        x: [..., K] with at most ``MAX_ROWS`` rows in all, float16 / bfloat16 / float32, last dim contiguous.
        weight, weight2: [N, K] contiguous (nn.Linear's layout), x's dtype, x's device.
        BN, BK, num_warps: launch settings (default: ``choose_blocks``, ``BK_DEFAULT``, ``WARPS_DEFAULT``).
    Returns:
        [..., N] in x's dtype.
    """
    if x.dim() < 1 or weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"decode_linear needs x [..., K] and weight [N, K], got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    N, K = weight.shape
    rows = x.numel() // K if K else 0
    if rows > MAX_ROWS:
        raise ValueError(f"decode_linear is for at most {MAX_ROWS} rows (a decoding step), got {rows}: use F.linear")
    for name, t in (("weight", weight), ("weight2", weight2)):
        if t is None:
            continue
        if tuple(t.shape) != (N, K) or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous ({N}, {K}) tensor, got {tuple(t.shape)} "
                             f"(contiguous: {t.is_contiguous()})")
        if t.dtype != x.dtype or t.device != x.device:
            raise ValueError(f"{name} is {t.dtype} on {t.device}, x is {x.dtype} on {x.device}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"decode_linear takes float16, bfloat16 or float32, got {x.dtype}")
    check_triton_runnable(x, weight)
    x2 = x.reshape(rows, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(rows, N, device=x.device, dtype=x.dtype)
    if rows and N:
        BN = choose_blocks(N, rows) if BN is None else BN
        BK = min(BK_DEFAULT if BK is None else BK, triton.next_power_of_2(max(K, 16)))
        decode_linear_kernel[(triton.cdiv(N, BN), rows)](
            x2, weight, weight2 if weight2 is not None else weight, y, N, K, x2.stride(0), y.stride(0),
            BN=BN, BK=BK, SWIGLU=weight2 is not None, num_warps=WARPS_DEFAULT if num_warps is None else num_warps)
    return y.reshape(*x.shape[:-1], N)
