"""Readable PyTorch forms of Mamba's selective scan (S6): the sequential recurrence and a one-token step.

Per channel d and state index n, over the tokens t of a sequence:

    h_t[d, n] = exp(dt_t[d] * A[d, n]) * h_{t-1}[d, n] + dt_t[d] * B_t[n] * x_t[d]
    y_t[d]    = sum_n C_t[n] * h_t[d, n] + D[d] * x_t[d]
    out_t[d]  = y_t[d] * silu(z_t[d])                                   (when z is given)

With ``dt_bias`` / ``dt_softplus`` the step size is ``softplus(dt + dt_bias)`` (each part optional), as the kernels
can compute it.  These run in the dtype of their inputs (pass float64 tensors for a reference) and are differentiable
by autograd.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["naive_selective_scan", "naive_selective_scan_step"]


def _step_size(dt: torch.Tensor, dt_bias: Optional[torch.Tensor], dt_softplus: bool, dtype: torch.dtype) -> torch.Tensor:
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    return F.softplus(dt) if dt_softplus else dt


def naive_selective_scan(
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
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Sequential selective scan, token by token.

    Args:
        x: [B, T, D] input.  dt: [B, T, D] positive step sizes (softplus already applied).
        A: [D, N] (negative for a decaying state).  B, C: [B, T, N] input and output projections of the state.
        D: [D] skip weight or None.  z: [B, T, D] gate or None.
        initial_state: [S, D, N] with S = B (or the number of sequences with ``cu_seqlens``), or None (zeros).
        cu_seqlens: [S + 1] offsets of packed sequences (B must be 1); the state restarts at each sequence.
        dt_bias: [D] or None, dt_softplus: the step size is softplus(dt + dt_bias) (each part optional).
    Returns:
        out [B, T, D] in x's dtype; the final state [S, D, N] (computed in the dtype of A, x, ...) or None.
    """
    Bsz, T, Dm = x.shape
    cdt = torch.promote_types(x.dtype, A.dtype)
    if cu_seqlens is None:
        spans = [(b, 0, T) for b in range(Bsz)]
    else:
        cu = cu_seqlens.tolist()
        spans = [(0, cu[i], cu[i + 1]) for i in range(len(cu) - 1)]
    A = A.to(cdt)
    dt = _step_size(dt, dt_bias, dt_softplus, cdt)
    rows: list[list[torch.Tensor]] = [[] for _ in range(Bsz)]  # per batch row, y_t [D] in token order
    finals = []
    for i, (b, s, e) in enumerate(spans):
        h = x.new_zeros(Dm, A.shape[1], dtype=cdt) if initial_state is None else initial_state[i].to(cdt)
        for t in range(s, e):
            dt_t = dt[b, t].to(cdt)  # [D]
            h = torch.exp(dt_t[:, None] * A) * h + (dt_t * x[b, t].to(cdt))[:, None] * B[b, t].to(cdt)[None, :]
            rows[b].append(h @ C[b, t].to(cdt))  # [D]
        finals.append(h)
    ys = torch.stack([torch.stack(r) for r in rows]) if T else x.new_zeros(Bsz, 0, Dm, dtype=cdt)  # [B, T, D]
    if D is not None:
        ys = ys + x.to(cdt) * D.to(cdt)
    if z is not None:
        ys = ys * F.silu(z.to(cdt))
    return ys.to(x.dtype), (torch.stack(finals) if output_final_state else None)


def naive_selective_scan_step(
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
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One decoding step. state: [B, D, N]; x, dt, z: [B, D]; A: [D, N]; B, C: [B, N]; D, dt_bias: [D].

    Returns (out [B, D] in x's dtype, the new state [B, D, N] in state's dtype); the inputs are not modified.
    """
    cdt = state.dtype
    dt_ = _step_size(dt, dt_bias, dt_softplus, cdt)
    h = torch.exp(dt_[..., None] * A.to(cdt)) * state + (dt_ * x.to(cdt))[..., None] * B.to(cdt)[:, None, :]
    y = torch.einsum("bdn,bn->bd", h, C.to(cdt))
    if D is not None:
        y = y + x.to(cdt) * D.to(cdt)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(x.dtype), h
