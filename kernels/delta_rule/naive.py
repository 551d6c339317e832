"""Readable PyTorch references for the delta rule (recurrent and chunkwise WY/UT forms).

State ``S`` is ``[K, V]`` per (sequence, head).  For every token ``t``::

    S_t = S_{t-1} + beta_t * k_t (v_t - S_{t-1}^T k_t)^T
    o_t = scale * S_t^T q_t

Both functions are plain differentiable PyTorch, run on any device and dtype, and compute in
float32 (float64 when the inputs are float64).  They share the signature of the Triton kernels::

    o, final_state = naive_recurrent_delta_rule(q, k, v, beta, scale=None, initial_state=None,
                                                output_final_state=False, cu_seqlens=None)

with q, k: [B, T, H, K], v: [B, T, H, V], beta: [B, T, H], initial_state: [N, H, K, V] (N = B, or the
number of sequences packed by ``cu_seqlens`` ([N+1], starting at 0) into B = 1).  ``o`` has q's dtype
and shape [B, T, H, V]; ``final_state`` is [N, H, K, V] in the compute dtype (float32, or float64 for
float64 inputs), or None unless ``output_final_state``.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

__all__ = ["naive_recurrent_delta_rule", "naive_chunk_delta_rule"]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check(q, k, v, beta, initial_state, cu_seqlens) -> int:
    """Light shape checks for the references; returns N (the number of sequences)."""
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be [B, T, H, K], got q {tuple(q.shape)} and k {tuple(k.shape)}")
    B, T, H, _ = q.shape
    if v.dim() != 4 or v.shape[:3] != (B, T, H):
        raise ValueError(f"v must be [B, T, H, V] = [{B}, {T}, {H}, V], got {tuple(v.shape)}")
    if beta.shape != (B, T, H):
        raise ValueError(f"beta must be [B, T, H] = [{B}, {T}, {H}], got {tuple(beta.shape)}")
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"with cu_seqlens the batch size must be 1, got q {tuple(q.shape)}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens must be [N+1], got {tuple(cu_seqlens.shape)}")
        cs = cu_seqlens.tolist()
        if cs[0] != 0 or cs[-1] != T or any(b < a for a, b in zip(cs[:-1], cs[1:])):
            raise ValueError(f"cu_seqlens must be non-decreasing from 0 to T={T}, got {cs}")
        N = len(cs) - 1
    else:
        N = B
    if initial_state is not None and initial_state.shape != (N, H, q.shape[-1], v.shape[-1]):
        raise ValueError(
            f"initial_state must be [N, H, K, V] = [{N}, {H}, {q.shape[-1]}, {v.shape[-1]}], "
            f"got {tuple(initial_state.shape)}"
        )
    return N


def _dispatch(
    core: Callable,
    q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Casts to the compute dtype, moves to [B, H, T, D] layout, loops over packed sequences."""
    N = _check(q, k, v, beta, initial_state, cu_seqlens)
    B, T, H, K = q.shape
    V = v.shape[-1]
    dt = _compute_dtype(q)
    scale = K ** -0.5 if scale is None else scale
    # (B, H, T, D)
    qf, kf, vf = (x.transpose(1, 2).to(dt) for x in (q, k, v))
    bf = beta.transpose(1, 2).to(dt)  # (B, H, T)
    h0 = None if initial_state is None else initial_state.to(dt)
    if cu_seqlens is None:
        if h0 is None:
            h0 = qf.new_zeros(B, H, K, V)
        o, ht = core(qf, kf, vf, bf, scale, h0)  # (B, H, T, V), (B, H, K, V)
    else:
        cs = cu_seqlens.tolist()
        outs, states = [], []
        for i in range(N):
            s, e = cs[i], cs[i + 1]
            hi = qf.new_zeros(1, H, K, V) if h0 is None else h0[i : i + 1]
            if e == s:
                states.append(hi)
                continue
            o_i, h_i = core(qf[:, :, s:e], kf[:, :, s:e], vf[:, :, s:e], bf[:, :, s:e], scale, hi)
            outs.append(o_i)
            states.append(h_i)
        o = torch.cat(outs, dim=2) if outs else vf.new_zeros(1, H, 0, V)
        ht = torch.cat(states, dim=0)
    o = o.transpose(1, 2).to(q.dtype)  # (B, T, H, V)
    return o, (ht if output_final_state else None)


def _recurrent_core(q, k, v, beta, scale, S):
    """q, k: (B, H, T, K); v: (B, H, T, V); beta: (B, H, T); S: (B, H, K, V)."""
    outs = []
    # unbind: one stack in the backward instead of a full-size zero tensor per token
    for q_t, k_t, v_t, b_t in zip(q.unbind(2), k.unbind(2), v.unbind(2), beta.unsqueeze(-1).unbind(2)):
        err = v_t - torch.einsum("bhkv,bhk->bhv", S, k_t)  # (B, H, V)
        S = S + torch.einsum("bhk,bhv->bhkv", k_t, b_t * err)
        outs.append(scale * torch.einsum("bhkv,bhk->bhv", S, q_t))
    o = torch.stack(outs, dim=2) if outs else v.new_zeros(v.shape)
    return o, S


def _chunk_core(q, k, v, beta, scale, S, chunk_size):
    """Chunkwise WY/UT form.  q, k: (B, H, T, K); v: (B, H, T, V); beta: (B, H, T); S: (B, H, K, V)."""
    B, H, T, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    pad = (-T) % C
    if pad:
        # Zero k and beta on padded tokens: they leave the state untouched and their outputs are dropped.
        q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        beta = torch.nn.functional.pad(beta, (0, pad))
    n = (T + pad) // C
    # (B, H, n, C, D)
    q, k, v = (x.reshape(B, H, n, C, x.shape[-1]) for x in (q, k, v))
    beta = beta.reshape(B, H, n, C, 1)
    # Intra-chunk part, all chunks at once.
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    A = torch.tril(beta * (k @ k.transpose(-1, -2)), -1)  # (B, H, n, C, C), strictly lower
    # (I + A) is unit lower triangular; T = (I + A)^-1 diag(beta), W = T K, U = T V.
    IA = eye + A
    W = torch.linalg.solve_triangular(IA, beta * k, upper=False, unitriangular=True)  # (B, H, n, C, K)
    U = torch.linalg.solve_triangular(IA, beta * v, upper=False, unitriangular=True)  # (B, H, n, C, V)
    QK = torch.tril(q @ k.transpose(-1, -2))  # (B, H, n, C, C), inclusive of the diagonal
    # Inter-chunk recurrence over chunk-boundary states.
    # unbind (not q[:, :, i]) so that the backward stacks the chunk gradients once instead of scattering each
    # into a zero tensor of the full size (quadratic in the number of chunks).
    outs = []
    for q_i, k_i, W_i, U_i, QK_i in zip(*(x.unbind(2) for x in (q, k, W, U, QK))):
        U_i = U_i - W_i @ S  # (B, H, C, V)
        outs.append(scale * (q_i @ S + QK_i @ U_i))
        S = S + k_i.transpose(-1, -2) @ U_i
    o = torch.stack(outs, dim=2).reshape(B, H, n * C, V)[:, :, :T]
    return o, S


def naive_recurrent_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Token-by-token delta rule in plain PyTorch (the definition; slow, differentiable).

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V]; beta: [B, T, H] (any float dtype).
        scale: output scale, default K ** -0.5.
        initial_state: [N, H, K, V] or None (zeros).
        output_final_state: also return the final state [N, H, K, V].
        cu_seqlens: [N+1] int32/int64 offsets packing N sequences into B = 1, or None.

    Returns:
        (o [B, T, H, V] in q.dtype, final_state [N, H, K, V] float32 (float64 for float64 inputs) or None).

    Example:
        >>> q, k = torch.nn.functional.normalize(torch.randn(2, 2, 10, 3, 16), dim=-1)
        >>> v, beta = torch.randn(2, 10, 3, 8), torch.rand(2, 10, 3)
        >>> o, s = naive_recurrent_delta_rule(q, k, v, beta, output_final_state=True)
    """
    return _dispatch(_recurrent_core, q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens)


def naive_chunk_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    chunk_size: int = 64,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Chunkwise (WY representation / UT transform) delta rule in plain PyTorch, differentiable.

    Within each chunk of ``chunk_size`` tokens: ``A = tril(diag(beta) K K^T, -1)``,
    ``T = (I + A)^-1 diag(beta)``, ``W = T K``, ``U = T V`` (all chunks at once); then across chunks
    ``U' = U - W S``, ``O = scale (Q S + tril(Q K^T) U')``, ``S <- S + K^T U'``.  The last chunk is
    zero-padded.  Same arguments and returns as :func:`naive_recurrent_delta_rule`, plus
    ``chunk_size`` (default 64, any positive int).

    Example:
        >>> q, k = torch.nn.functional.normalize(torch.randn(2, 2, 100, 3, 16), dim=-1)
        >>> v, beta = torch.randn(2, 100, 3, 8), torch.rand(2, 100, 3)
        >>> o, _ = naive_chunk_delta_rule(q, k, v, beta, chunk_size=32)
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")

    def core(q_, k_, v_, b_, s_, h_):
        return _chunk_core(q_, k_, v_, b_, s_, h_, chunk_size)

    return _dispatch(core, q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens)
