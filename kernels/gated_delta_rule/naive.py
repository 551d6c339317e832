"""Readable PyTorch references for the gated delta rule (Gated DeltaNet): recurrent and chunkwise forms.

State ``S`` is ``[K, V]`` per (sequence, head).  For every token ``t``, with the decay ``a_t = exp(g_t)``::

    S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
    o_t = scale * S_t^T q_t

Both functions are plain differentiable PyTorch, run on any device and dtype, and compute in float32 (float64 when
the inputs are float64).  Signature (as the Triton kernels)::

    o, final_state = naive_recurrent_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None,
                                                      output_final_state=False, cu_seqlens=None)

with q, k: [B, T, H, K], v: [B, T, H, V], g: [B, T, H] log decays (<= 0), beta: [B, T, H], initial_state:
[N, H, K, V] (N = B, or the number of sequences packed by ``cu_seqlens`` ([N+1]) into B = 1).  ``o`` has q's dtype;
``final_state`` is [N, H, K, V] in the compute dtype, or None unless ``output_final_state``.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["naive_chunk_gated_delta_rule", "naive_recurrent_gated_delta_rule"]


def _check(q, k, v, g, beta, initial_state, cu_seqlens) -> int:
    """Light shape checks for the references; returns N (the number of sequences)."""
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be [B, T, H, K], got q {tuple(q.shape)} and k {tuple(k.shape)}")
    B, T, H, K = q.shape
    if v.dim() != 4 or v.shape[:3] != (B, T, H):
        raise ValueError(f"v must be [B, T, H, V] = [{B}, {T}, {H}, V], got {tuple(v.shape)}")
    for name, x in (("g", g), ("beta", beta)):
        if x.shape != (B, T, H):
            raise ValueError(f"{name} must be [B, T, H] = [{B}, {T}, {H}], got {tuple(x.shape)}")
    N = B
    if cu_seqlens is not None:
        cs = cu_seqlens.tolist()
        if B != 1 or len(cs) < 2 or cs[0] != 0 or cs[-1] != T or any(b < a for a, b in zip(cs[:-1], cs[1:])):
            raise ValueError(f"cu_seqlens must be non-decreasing from 0 to T={T} with B = 1, got {cs} (B = {B})")
        N = len(cs) - 1
    if initial_state is not None and initial_state.shape != (N, H, K, v.shape[-1]):
        raise ValueError(f"initial_state must be [N, H, K, V] = [{N}, {H}, {K}, {v.shape[-1]}], "
                         f"got {tuple(initial_state.shape)}")
    return N


def _dispatch(core: Callable, q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens):
    """Casts to the compute dtype, moves to [B, H, T, D] layout, loops over packed sequences."""
    N = _check(q, k, v, g, beta, initial_state, cu_seqlens)
    B, T, H, K = q.shape
    V = v.shape[-1]
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = K ** -0.5 if scale is None else scale
    qf, kf, vf = (x.transpose(1, 2).to(dt) for x in (q, k, v))  # (B, H, T, D)
    gf, bf = (x.transpose(1, 2).to(dt) for x in (g, beta))  # (B, H, T)
    h0 = qf.new_zeros(N, H, K, V) if initial_state is None else initial_state.to(dt)
    if cu_seqlens is None:
        o, ht = core(qf, kf, vf, gf, bf, scale, h0)
    else:
        cs = cu_seqlens.tolist()
        outs, states = [], []
        for i in range(N):
            s, e = cs[i], cs[i + 1]
            if e == s:
                states.append(h0[i:i + 1])
                continue
            o_i, h_i = core(*(x[:, :, s:e] for x in (qf, kf, vf, gf, bf)), scale, h0[i:i + 1])
            outs.append(o_i)
            states.append(h_i)
        o = torch.cat(outs, dim=2) if outs else vf.new_zeros(1, H, 0, V)
        ht = torch.cat(states, dim=0)
    return o.transpose(1, 2).to(q.dtype), (ht if output_final_state else None)


def _recurrent_core(q, k, v, g, beta, scale, S):
    """q, k: (B, H, T, K); v: (B, H, T, V); g, beta: (B, H, T); S: (B, H, K, V)."""
    outs = []
    for q_t, k_t, v_t, g_t, b_t in zip(q.unbind(2), k.unbind(2), v.unbind(2), g.unbind(2), beta.unbind(2)):
        S = S * g_t.exp()[..., None, None]  # a_t S_{t-1}
        err = v_t - torch.einsum("bhkv,bhk->bhv", S, k_t)  # (B, H, V)
        S = S + torch.einsum("bhk,bhv->bhkv", k_t, b_t[..., None] * err)
        outs.append(scale * torch.einsum("bhkv,bhk->bhv", S, q_t))
    o = torch.stack(outs, dim=2) if outs else v.new_zeros(v.shape)
    return o, S


def _chunk_core(q, k, v, g, beta, scale, S, chunk_size):
    """Chunkwise form.  q, k: (B, H, T, K); v: (B, H, T, V); g, beta: (B, H, T); S: (B, H, K, V).

    Per chunk (rows are tokens), G = cumsum(g), Gamma_ij = exp(G_i - G_j) for i >= j (masked before the exp):
    L = strict_tril(diag(beta) (Gamma * K K^T)), W = (I + L)^-1 diag(beta exp(G)) K, U = (I + L)^-1 diag(beta) V;
    V' = U - W S, O = scale (diag(exp(G)) Q S + (Gamma * tril(Q K^T)) V'), S <- exp(G_C) S + (diag(exp(G_C - G)) K)^T V'.
    """
    B, H, T, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    pad = (-T) % C
    if pad:  # padded tokens: k = beta = g = 0 leave the state and G_C as they are; their outputs are dropped
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = F.pad(g, (0, pad)), F.pad(beta, (0, pad))
    n = (T + pad) // C
    q, k, v = (x.reshape(B, H, n, C, x.shape[-1]) for x in (q, k, v))  # (B, H, n, C, D)
    G = g.reshape(B, H, n, C).cumsum(-1)  # (B, H, n, C)
    beta = beta.reshape(B, H, n, C, 1)
    idx = torch.arange(C, device=q.device)
    diff = G[..., :, None] - G[..., None, :]  # (B, H, n, C, C), G_i - G_j
    Gam = torch.where(idx[:, None] >= idx[None, :], diff, float("-inf")).exp()  # Gamma, 0 above the diagonal
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    L = torch.tril(beta * Gam * (k @ k.transpose(-1, -2)), -1)
    W = torch.linalg.solve_triangular(eye + L, beta * G.exp()[..., None] * k, upper=False, unitriangular=True)
    U = torch.linalg.solve_triangular(eye + L, beta * v, upper=False, unitriangular=True)
    QK = Gam * (q @ k.transpose(-1, -2))  # (B, H, n, C, C), lower triangular with the diagonal
    decay_k = (G[..., -1:] - G).exp()  # exp(G_C - G_i) <= 1
    outs = []
    for q_i, k_i, W_i, U_i, QK_i, G_i, d_i in zip(*(x.unbind(2) for x in (q, k, W, U, QK, G, decay_k))):
        U_i = U_i - W_i @ S  # V' (B, H, C, V)
        outs.append(scale * (G_i.exp()[..., None] * (q_i @ S) + QK_i @ U_i))
        S = G_i[..., -1, None, None].exp() * S + (d_i[..., None] * k_i).transpose(-1, -2) @ U_i
    o = torch.stack(outs, dim=2).reshape(B, H, n * C, V)[:, :, :T]
    return o, S


def naive_recurrent_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Token-by-token gated delta rule in plain PyTorch (the definition; slow, differentiable).

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H] log decays (<= 0); beta: [B, T, H] (any float dtype).
        scale: output scale, default K ** -0.5.
        initial_state: [N, H, K, V] or None (zeros).
        output_final_state: also return the final state [N, H, K, V].
        cu_seqlens: [N+1] int32/int64 offsets packing N sequences into B = 1, or None.

    Returns:
        (o [B, T, H, V] in q.dtype, final_state [N, H, K, V] float32 (float64 for float64 inputs) or None).

    Example:
        >>> q, k = torch.nn.functional.normalize(torch.randn(2, 2, 10, 3, 16), dim=-1)
        >>> v, beta, g = torch.randn(2, 10, 3, 8), torch.rand(2, 10, 3), -torch.rand(2, 10, 3)
        >>> o, s = naive_recurrent_gated_delta_rule(q, k, v, g, beta, output_final_state=True)
    """
    return _dispatch(_recurrent_core, q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens)


def naive_chunk_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None, chunk_size: int = 64,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Chunkwise gated delta rule in plain PyTorch, differentiable (the forms of ``_chunk_core``).

    Same arguments and returns as :func:`naive_recurrent_gated_delta_rule`, plus ``chunk_size`` (default 64, any
    positive int).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")

    def core(q_, k_, v_, g_, b_, s_, h_):
        return _chunk_core(q_, k_, v_, g_, b_, s_, h_, chunk_size)

    return _dispatch(core, q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens)
