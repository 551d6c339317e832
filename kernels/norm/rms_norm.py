"""RMSNorm in Triton, forward + backward, with the residual add and the output gate folded in.

    s = x + residual (optional, returned),   y = s * rstd * w [* silu(gate)],   rstd = 1 / sqrt(mean(s^2) + eps)

The plain PyTorch RMSNorm runs about five float32 elementwise kernels and autograd keeps their outputs; the residual
add and the gate product are two more.  Here one kernel reads x (+ residual, + gate) and writes y (+ s) and the
per-row rstd; the autograd function saves s (which the next layer holds anyway), rstd (one float per row) and gate.

Kernels: ``_rms_norm_fwd_kernel`` (BR rows per program, a whole row of C channels in one block) and
``_rms_norm_bwd_kernel`` (a fixed number of programs, each walking row blocks and summing its share of dw in
registers; the shares are added on the host).
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple, Union

import torch
import triton
import triton.language as tl

from ..launch import check_runnable

__all__ = ["rms_norm"]

MAX_C = 16384  # a row lives in one block


@triton.jit
def _rms_norm_fwd_kernel(x, r, g, w, y, s, rstd, N, C, eps, HAS_RES: tl.constexpr, HAS_GATE: tl.constexpr,
                         BR: tl.constexpr, BC: tl.constexpr):
    i_r = tl.program_id(0)
    o_r = i_r * BR + tl.arange(0, BR)
    o_c = tl.arange(0, BC)
    m_r, m_c = o_r < N, o_c < C
    m = m_r[:, None] & m_c[None, :]
    o_x = o_r.to(tl.int64)[:, None] * C + o_c[None, :]
    b_s = tl.load(x + o_x, mask=m, other=0.).to(tl.float32)
    if HAS_RES:
        b_s += tl.load(r + o_x, mask=m, other=0.).to(tl.float32)
        b_s = b_s.to(s.dtype.element_ty)
        tl.store(s + o_x, b_s, mask=m)
        b_s = b_s.to(tl.float32)  # normalise the sum rounded to its stored dtype, as the plain path does
    b_rstd = 1. / tl.sqrt(tl.sum(b_s * b_s, axis=1) / C + eps)
    tl.store(rstd + o_r, b_rstd, mask=m_r)
    b_w = tl.load(w + o_c, mask=m_c, other=0.).to(tl.float32)
    b_y = b_s * b_rstd[:, None] * b_w[None, :]
    if HAS_GATE:
        b_g = tl.load(g + o_x, mask=m, other=0.).to(tl.float32)
        b_y = b_y * b_g * tl.sigmoid(b_g)
    tl.store(y + o_x, b_y.to(y.dtype.element_ty), mask=m)


@triton.jit
def _rms_norm_bwd_kernel(s, g, w, rstd, dy, ds_in, dx, dg, dw, N, C, NB, HAS_DS: tl.constexpr,
                         HAS_GATE: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    i_p, n_p = tl.program_id(0), tl.num_programs(0)
    o_c = tl.arange(0, BC)
    m_c = o_c < C
    b_w = tl.load(w + o_c, mask=m_c, other=0.).to(tl.float32)
    b_dw = tl.zeros([BC], dtype=tl.float32)
    for i_b in range(i_p, NB, n_p):
        o_r = i_b * BR + tl.arange(0, BR)
        m_r = o_r < N
        m = m_r[:, None] & m_c[None, :]
        o_x = o_r.to(tl.int64)[:, None] * C + o_c[None, :]
        b_rstd = tl.load(rstd + o_r, mask=m_r, other=0.)
        b_xh = tl.load(s + o_x, mask=m, other=0.).to(tl.float32) * b_rstd[:, None]  # s * rstd
        b_dy = tl.load(dy + o_x, mask=m, other=0.).to(tl.float32)
        if HAS_GATE:
            b_g = tl.load(g + o_x, mask=m, other=0.).to(tl.float32)
            b_sg = tl.sigmoid(b_g)
            b_dg = b_dy * b_xh * b_w[None, :] * b_sg * (1. + b_g * (1. - b_sg))
            tl.store(dg + o_x, b_dg.to(dg.dtype.element_ty), mask=m)
            b_dy = b_dy * b_g * b_sg
        b_dw += tl.sum(b_dy * b_xh, axis=0)
        b_dxh = b_dy * b_w[None, :]
        b_dx = (b_dxh - b_xh * (tl.sum(b_dxh * b_xh, axis=1) / C)[:, None]) * b_rstd[:, None]
        if HAS_DS:
            b_dx += tl.load(ds_in + o_x, mask=m, other=0.).to(tl.float32)
        tl.store(dx + o_x, b_dx.to(dx.dtype.element_ty), mask=m)
    tl.store(dw + i_p.to(tl.int64) * C + o_c, b_dw, mask=m_c)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _row_block(C: int) -> Tuple[int, int]:
    BC = triton.next_power_of_2(C)
    return max(1, min(64, 4096 // BC)), BC  # about 4096 elements per program


def rms_norm_fwd(x, residual, gate, weight, eps, out_dtype=None):
    C = x.shape[-1]
    N = x.numel() // C
    sdt = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    y = torch.empty(x.shape, device=x.device, dtype=out_dtype or sdt)
    s = torch.empty(x.shape, device=x.device, dtype=sdt) if residual is not None else None
    rstd = torch.empty(N, device=x.device, dtype=torch.float32)
    BR, BC = _row_block(C)
    _rms_norm_fwd_kernel[(triton.cdiv(N, BR),)](
        x, residual if residual is not None else x, gate if gate is not None else x, weight, y,
        s if s is not None else y, rstd, N, C, eps, HAS_RES=residual is not None, HAS_GATE=gate is not None,
        BR=BR, BC=BC, num_warps=4 if BC <= 1024 else 8)
    return y, (x if s is None else s), rstd


def rms_norm_bwd(s, gate, weight, rstd, dy, ds, dx_dtype):
    C = s.shape[-1]
    N = s.numel() // C
    BR, BC = _row_block(C)
    NB = triton.cdiv(N, BR)
    P = min(NB, 4 * _sm_count(s.device) if s.is_cuda else 8)
    dx = torch.empty(s.shape, device=s.device, dtype=dx_dtype)
    dg = torch.empty_like(gate) if gate is not None else None
    dw = torch.empty(P, C, device=s.device, dtype=torch.float32)
    _rms_norm_bwd_kernel[(P,)](
        s, gate if gate is not None else s, weight, rstd, dy, ds if ds is not None else dy, dx,
        dg if dg is not None else dx, dw, N, C, NB, HAS_DS=ds is not None, HAS_GATE=gate is not None,
        BR=BR, BC=BC, num_warps=4 if BC <= 1024 else 8)
    return dx, dg, dw.sum(0)


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, residual, gate, eps, out_dtype):
        y, s, rstd = rms_norm_fwd(x, residual, gate, weight, eps, out_dtype)
        ctx.save_for_backward(s, gate, weight, rstd)
        ctx.has_res, ctx.x_dtype = residual is not None, x.dtype
        ctx.r_dtype = residual.dtype if residual is not None else None
        return (y, s) if residual is not None else y

    @staticmethod
    def backward(ctx, dy, ds=None):
        s, gate, weight, rstd = ctx.saved_tensors
        dx, dg, dw = rms_norm_bwd(s, gate, weight, rstd, dy.contiguous(),
                                  ds.contiguous() if ds is not None else None, s.dtype)
        dr = dx.to(ctx.r_dtype) if ctx.has_res else None
        return dx.to(ctx.x_dtype), dw.to(weight.dtype), dr, dg, None, None


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    residual: Optional[torch.Tensor] = None,
    gate: Optional[torch.Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Fused RMSNorm over the last dimension (Triton, forward + backward), float32 inside.

    Args:
        x: (..., C) bfloat16, float16 or float32 (CUDA, or CPU under ``TRITON_INTERPRET=1``); C <= 16384.
        weight: (C,) any float dtype.
        eps: added to mean(s^2).
        residual: optional (..., C): normalise s = x + residual and return s too (dtype: the promotion of both).
        gate: optional (..., C): multiply the output by silu(gate).
        out_dtype: dtype of y (default s's): under autocast, the compute dtype that the next matmul casts to anyway.

    Returns:
        y (..., C) in out_dtype or s's dtype; with a residual the pair (y, s).

    Example::

        >>> x, h_norm = rms_norm(h, mlp_norm.weight, 1e-6, residual=x)       # x + h, then RMSNorm
        >>> o = rms_norm(o, o_norm.weight, 1e-6, gate=g)                     # RMSNorm(o) * silu(g)
    """
    C = x.shape[-1] if x.dim() else 0
    if x.dim() < 1 or C < 1 or C > MAX_C:
        raise ValueError(f"rms_norm: x must be (..., C) with 1 <= C <= {MAX_C}, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"rms_norm: x dtype {x.dtype} not supported (bfloat16, float16, float32)")
    if weight.shape != (C,):
        raise ValueError(f"rms_norm: weight must be ({C},), got {tuple(weight.shape)}")
    for name, t in (("residual", residual), ("gate", gate)):
        if t is not None and t.shape != x.shape:
            raise ValueError(f"rms_norm: {name} must match x {tuple(x.shape)}, got {tuple(t.shape)}")
        if t is not None and t.device != x.device:
            raise ValueError(f"rms_norm: {name} is on {t.device} but x is on {x.device}")
    if residual is not None and gate is not None:
        raise ValueError("rms_norm: residual and gate together are not supported (no layer needs both)")
    if out_dtype not in (None, torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"rms_norm: out_dtype must be bfloat16, float16 or float32, got {out_dtype}")
    check_runnable("rms_norm", x, weight)
    return RMSNormFunction.apply(x.contiguous(), weight, None if residual is None else residual.contiguous(),
                                 None if gate is None else gate.contiguous(), float(eps), out_dtype)
