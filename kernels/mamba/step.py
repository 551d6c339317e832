"""One decoding step of Mamba's selective scan in Triton: the state is updated in place.

    h <- exp(dt * A) * h + dt * B * x        y = C . h + D * x        out = y * silu(z)

One program per (channel block, batch row) holds its [BD, N] slice of the state in registers.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

__all__ = ["selective_scan_step"]


@triton.jit
def _selective_scan_step_kernel(
    state, x, dt, dt_bias, A, Bm, Cm, Dskip, z, out,
    D, N,
    BD: tl.constexpr, BN: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
):
    i_d, i_b = tl.program_id(0), tl.program_id(1)
    o_d = i_d * BD + tl.arange(0, BD)
    o_n = tl.arange(0, BN)
    m_d, m_n = o_d < D, o_n < N
    m_dn = m_d[:, None] & m_n[None, :]
    o_dn = o_d[:, None] * N + o_n[None, :]
    o_bd = i_b.to(tl.int64) * D + o_d
    o_bn = i_b.to(tl.int64) * N + o_n
    p_h = state + i_b.to(tl.int64) * D * N + o_dn
    b_h = tl.load(p_h, mask=m_dn, other=0.).to(tl.float32)  # [BD, BN]
    b_A = tl.load(A + o_dn, mask=m_dn, other=0.).to(tl.float32)
    b_x = tl.load(x + o_bd, mask=m_d, other=0.).to(tl.float32)  # [BD]
    b_dt = tl.load(dt + o_bd, mask=m_d, other=0.).to(tl.float32)
    if HAS_DT_BIAS:
        b_dt += tl.load(dt_bias + o_d, mask=m_d, other=0.).to(tl.float32)
    if DT_SOFTPLUS:
        b_dt = tl.where(b_dt > 20., b_dt, tl.log(1. + tl.exp(tl.minimum(b_dt, 20.))))
    b_B = tl.load(Bm + o_bn, mask=m_n, other=0.).to(tl.float32)  # [BN]
    b_C = tl.load(Cm + o_bn, mask=m_n, other=0.).to(tl.float32)
    b_h = tl.exp(b_dt[:, None] * b_A) * b_h + (b_dt * b_x)[:, None] * b_B[None, :]
    b_y = tl.sum(b_h * b_C[None, :], 1)
    if HAS_D:
        b_y += tl.load(Dskip + o_d, mask=m_d, other=0.).to(tl.float32) * b_x
    if HAS_Z:
        b_z = tl.load(z + o_bd, mask=m_d, other=0.).to(tl.float32)
        b_y = b_y * b_z * tl.sigmoid(b_z)
    tl.store(p_h, b_h.to(state.dtype.element_ty), mask=m_dn)
    tl.store(out + o_bd, b_y.to(out.dtype.element_ty), mask=m_d)


def selective_scan_step(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    BD: int = 32,
) -> torch.Tensor:
    """One token of the selective scan for decoding; ``state`` is updated in place (no gradients).

    Args:
        state: [B, D, N] float32 (contiguous), the state after the previous token.
        x, dt: [B, D] float16 / bfloat16 / float32; z: [B, D] or None (gate).
        dt_bias: [D] float or None; dt_softplus: the step size is softplus(dt + dt_bias) (each part optional),
            as in :func:`selective_scan`; otherwise dt is the (positive) step size itself.
        A: [D, N] float (<= 0).  B, C: [B, N] in x's dtype.  D: [D] float or None.
        BD: channels per program.
    Returns:
        out [B, D] in x's dtype.
    """
    if state.dim() != 3:
        raise ValueError(f"state must be [B, D, N], got shape {tuple(state.shape)}")
    Bsz, Dm, N = state.shape
    if state.dtype != torch.float32 or not state.is_contiguous():
        raise ValueError(f"state must be a contiguous float32 tensor (updated in place), got {state.dtype}, "
                         f"strides {state.stride()}")
    for name, t, shape in (("x", x, (Bsz, Dm)), ("dt", dt, (Bsz, Dm)), ("A", A, (Dm, N)), ("B", B, (Bsz, N)),
                           ("C", C, (Bsz, N)), ("D", D, (Dm,)), ("z", z, (Bsz, Dm)),
                           ("dt_bias", dt_bias, (Dm,))):
        if t is None:
            continue
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} to match state {tuple(state.shape)}, "
                             f"got {tuple(t.shape)}")
        if t.device != state.device:
            raise ValueError(f"{name} is on {t.device}, state on {state.device}: all inputs must be on one device")
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
    for name, t in (("dt", dt), ("B", B), ("C", C), ("z", z)):
        if t is not None and t.dtype != x.dtype:
            raise ValueError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
    if state.device.type != "cuda" and type(_selective_scan_step_kernel).__name__ != "InterpretedFunction":
        raise ValueError(f"selective_scan_step runs a Triton kernel: state must be on a CUDA device (or set "
                         f"TRITON_INTERPRET=1 before importing triton), got {state.device}")
    x, dt, A, B, C = (t.contiguous() for t in (x, dt, A, B, C))
    D = D.contiguous() if D is not None else None
    z = z.contiguous() if z is not None else None
    dt_bias = dt_bias.contiguous() if dt_bias is not None else None
    out = torch.empty_like(x)
    _selective_scan_step_kernel[(triton.cdiv(Dm, BD), Bsz)](
        state, x, dt, dt_bias, A, B, C, D, z, out, Dm, N,
        BD=BD, BN=triton.next_power_of_2(N), HAS_D=D is not None, HAS_Z=z is not None,
        HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus),
    )
    return out
