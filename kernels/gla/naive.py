"""Readable PyTorch reference for gated linear attention (GLA, Yang et al. 2024): a data-dependent decay per key
channel.

Per (sequence, head), state ``S`` [K, V]::

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,      o_t = scale * S_t^T q_t,      g_t [K] <= 0

Plain differentiable PyTorch in float32 (float64 for float64 inputs); shapes as the Triton op's
(``kernels.chunk_gla``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["naive_chunk_gla", "naive_recurrent_gla"]


def _check(q, k, v, g):
    B, T, H, K = q.shape
    if k.shape != q.shape or v.shape[:3] != (B, T, H) or g.shape != q.shape:
        raise ValueError(f"expected q, k, g [B, T, H, K], v [B, T, H, V]; got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}, {tuple(g.shape)}")


def naive_recurrent_gla(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Token-by-token GLA (the definition; slow, differentiable).

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H, K] log decays (<= 0), one per key channel.
        scale: output scale, default K ** -0.5.
        initial_state: [N, H, K, V] or None (zeros); N = B, or len(cu_seqlens) - 1.
        output_final_state: also return the final state.
        cu_seqlens: [N + 1] offsets packing N sequences into B = 1, or None.

    Returns:
        (o [B, T, H, V] in q.dtype, final_state [N, H, K, V] in the compute dtype, or None).
    """
    _check(q, k, v, g)
    B, T, H, K = q.shape
    V = v.shape[-1]
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = K ** -0.5 if scale is None else scale
    cs = [0, T] if cu_seqlens is None else cu_seqlens.tolist()
    segs = [(slice(None), 0, T)] if cu_seqlens is None else [(slice(0, 1), cs[i], cs[i + 1]) for i in range(len(cs) - 1)]
    N = B if cu_seqlens is None else len(segs)
    h0 = q.new_zeros(N, H, K, V, dtype=dt) if initial_state is None else initial_state.to(dt)
    outs, finals = [], []
    for n, (rows, s, e) in enumerate(segs):
        S = h0 if cu_seqlens is None else h0[n:n + 1]  # (b, H, K, V)
        for t in range(s, e):
            S = S * g[rows, t].to(dt).exp()[..., None] + k[rows, t].to(dt)[..., None] * v[rows, t].to(dt)[..., None, :]
            outs.append(scale * torch.einsum("bhkv,bhk->bhv", S, q[rows, t].to(dt)))
        finals.append(S)
    o = torch.stack(outs, 1).to(q.dtype) if outs else v.new_zeros(B, T, H, V)
    return o, (torch.cat(finals, 0) if output_final_state else None)


def naive_chunk_gla(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None, chunk_size: int = 64,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Chunkwise form, differentiable.  Per chunk with G = cumsum(g) over the chunk's tokens (per channel) and G_C
    its last row::

        A_ij = sum_k q_ik k_jk exp(G_ik - G_jk)   (j <= i; the exponent is masked before the exp, so <= 0)
        O    = scale (diag-per-channel(exp(G)) Q S + A V)
        S   <- diag(exp(G_C)) S + (K * exp(G_C - G))^T V

    The [L, L, K] tensor of A's exponents is fine for a reference; the Triton op builds A from 16-token
    sub-chunks instead.  Arguments and returns as :func:`naive_recurrent_gla`, plus ``chunk_size``."""
    _check(q, k, v, g)
    B, T, H, K = q.shape
    V = v.shape[-1]
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = K ** -0.5 if scale is None else scale
    cs = [0, T] if cu_seqlens is None else cu_seqlens.tolist()
    N = B if cu_seqlens is None else len(cs) - 1
    h0 = q.new_zeros(N, H, K, V, dtype=dt) if initial_state is None else initial_state.to(dt)
    C = chunk_size
    idx = torch.arange(C, device=q.device)
    outs, finals = [], []
    for n in range(1 if cu_seqlens is None else N):
        s, e = cs[n], cs[n + 1]
        S = h0 if cu_seqlens is None else h0[n:n + 1]  # (b, H, K, V)
        qs, ks, vs, gs = (x[:, s:e].to(dt).transpose(1, 2) for x in (q, k, v, g))  # (b, H, L, D)
        for c0 in range(0, e - s, C):
            qc, kc, vc, gc = qs[:, :, c0:c0 + C], ks[:, :, c0:c0 + C], vs[:, :, c0:c0 + C], gs[:, :, c0:c0 + C]
            L = gc.shape[2]
            G = gc.cumsum(2)  # (b, H, L, K)
            causal = (idx[:L, None] >= idx[None, :L])[..., None]  # (L, L, 1)
            E = torch.where(causal, G[:, :, :, None] - G[:, :, None], float("-inf")).exp()  # (b, H, L, L, K)
            A = torch.einsum("bhik,bhjk,bhijk->bhij", qc, kc, E)
            outs.append(scale * ((qc * G.exp()) @ S + A @ vc))
            Gl = G[:, :, -1:]  # (b, H, 1, K)
            S = Gl.transpose(-1, -2).exp() * S + (kc * (Gl - G).exp()).transpose(-1, -2) @ vc
        finals.append(S)
    o = torch.cat(outs, 2).transpose(1, 2) if outs else v.new_zeros(B, T, H, V, dtype=dt)
    if cu_seqlens is not None:
        o = o.reshape(1, T, H, V)
    return o.to(q.dtype), (torch.cat(finals, 0) if output_final_state else None)
