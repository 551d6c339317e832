r"""Chunkwise parallel gated delta rule (Gated DeltaNet): orchestration, autograd function, public API.

Per (sequence, head), state ``S`` [K, V], decay ``a_t = exp(g_t)`` in (0, 1]::

    S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,      o_t = scale * S_t^T q_t

Chunk form.  In a chunk of C tokens (rows are tokens) starting from state S, let G_i = g_1 + ... + g_i (the
within-chunk cumulative sum), gamma_i = exp(G_i), Gamma_ij = exp(G_i - G_j) for i >= j.  Unrolling the recurrence,
the state after token r is

    S_r = gamma_r S + sum_{i <= r} Gamma_ri k_i e_i^T,   e_i = beta_i (v_i - a_i S_{i-1}^T k_i)

(induction: a_r S_{r-1} multiplies every term by a_r, and token r adds k_r e_r^T).  Inserting S_{r-1} into e_r:

    e_r + beta_r sum_{i < r} Gamma_ri (k_r . k_i) e_i = beta_r v_r - beta_r gamma_r S^T k_r,

i.e. (I + L) E = diag(beta) V - diag(beta gamma) K S with L = strict_tril(diag(beta) (Gamma * K K^T)).  With
A = (I + L)^-1, W = A diag(beta gamma) K and U = A diag(beta) V the new values are E = V' = U - W S, and

    O = scale * (diag(gamma) Q S + (Gamma * tril(Q K^T)) V'),   S <- gamma_C S + (diag(gamma_C / gamma) K)^T V'.

With g = 0 every factor is 1 and these are the delta rule's stages.  The kernels are those of ``kernels/common``
with ``USE_G`` (G computed once by ``cumsum.chunk_local_cumsum``); every exponent they take is G_i - G_j with
i >= j, G_C - G_i, or G_i, all <= 0, so long chunks of strong decay underflow to 0 instead of overflowing.

    forward:   cumsum (G) -> wy_fwd (A, W, U) -> fwd_h (h, V') -> fwd_o (O)
    backward:  wy_fwd (W, U from the stored A) [-> fwd_h unless kept] -> bwd_dhu (dV', dh)
               -> bwd_dqkw (dq, dk part, dw, dG part) -> wy_bwd (dk, dv, dbeta, dG, dg = reverse cumsum of dG)

The gradient of G collects, per token: from the output, rowsum(dQ_S * Q) and rowsum(M) - colsum(M)
(M = scale Gamma * tril(dO V'^T) * Q K^T); from the state update, -rowsum(dK_S * K) and, at the chunk's last token,
gamma_C <S, dS> + sum(dK_S * K); from W, beta gamma rowsum((A^T dW) * K); from L, rowsum(dL * L) - colsum(dL * L).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..common.chunk_h import bwd_dhu, fwd_h
from ..common.chunk_o import bwd_dqkw, fwd_o
from ..common.cumsum import chunk_local_cumsum
from ..common.launch import ChunkMeta, ChunkSettings, current_chunk_settings
from ..common.utils import check_triton_runnable, validate_inputs
from ..common.wy import wy_bwd, wy_fwd

__all__ = ["chunk_gated_delta_rule"]


def chunk_gated_delta_rule_fwd(q, k, v, g, beta, scale: float, initial_state, output_final_state: bool, cu_seqlens,
                               chunk_size: int, settings: ChunkSettings):
    """Forward on contiguous, validated inputs (shapes as in :func:`chunk_gated_delta_rule`).

    Returns (o [B, T, H, V], final state [N, H, K, V] float32 or None, G [B, T, H] float32, A [B, T, H, BT],
    h [NT, H, K, V], v_new [B, T, H, V]); G, A, h and v_new are what the backward may reuse.
    """
    m = ChunkMeta(q, v, cu_seqlens, chunk_size, settings)
    G = chunk_local_cumsum(m, g)
    A, w, u = wy_fwd(m, k, v, beta, g=G)
    h, v_new, ht = fwd_h(m, k, w, u, initial_state, output_final_state, g=G)
    o = fwd_o(m, q, k, v_new, h, scale, g=G)
    return o, ht, G, A, h, v_new


def chunk_gated_delta_rule_bwd(q, k, v, G, beta, A, scale: float, initial_state, do, dht, cu_seqlens,
                               chunk_size: int, settings: ChunkSettings, h=None, v_new=None):
    """Backward: recomputes W, U from the stored A and, unless given, the chunk states; then the gradient stages.
    G: [B, T, H] float32 cumulative log decay; do: [B, T, H, V]; dht: [N, H, K, V] float32 or None.

    Returns (dq, dk, dv, dg [B, T, H] float32, dbeta, dh0 [N, H, K, V] float32 or None).
    """
    m = ChunkMeta(q, v, cu_seqlens, chunk_size, settings)
    _, w, u = wy_fwd(m, k, v, beta, A=A, need_u=h is None, g=G)
    if h is None:
        h, v_new, _ = fwd_h(m, k, w, u, initial_state, False, g=G)
    dv_new, dh, dh0 = bwd_dhu(m, q, k, w, do, dht, scale, initial_state is not None, g=G)
    dq, dk_part, dw, dg_part = bwd_dqkw(m, q, k, v_new, do, h, dh, dv_new, scale, g=G)
    dk, dv, dbeta, dg = wy_bwd(m, k, v, beta, A, dw, dv_new, dk_part, g=G, dg_part=dg_part)
    return dq, dk, dv, dg, dbeta, dh0


class ChunkGatedDeltaRuleFunction(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, G, beta, A (and, when the settings keep states, h and V')."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, chunk_size, settings):
        o, ht, G, A, h, v_new = chunk_gated_delta_rule_fwd(q, k, v, g, beta, scale, initial_state,
                                                           output_final_state, cu_seqlens, chunk_size, settings)
        if not settings.keeps_states(q.shape[-1]):
            h = v_new = None  # the backward recomputes them
        ctx.save_for_backward(q, k, v, G, beta, A, initial_state, cu_seqlens, h, v_new)
        ctx.scale, ctx.chunk_size, ctx.settings, ctx.g_dtype = scale, chunk_size, settings, g.dtype
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, G, beta, A, initial_state, cu_seqlens, h, v_new = ctx.saved_tensors
        do = do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        dq, dk, dv, dg, dbeta, dh0 = chunk_gated_delta_rule_bwd(q, k, v, G, beta, A, ctx.scale, initial_state, do,
                                                                dht, cu_seqlens, ctx.chunk_size, ctx.settings, h,
                                                                v_new)
        if dh0 is not None:
            dh0 = dh0.to(initial_state.dtype)
        return dq, dk, dv, dg.to(ctx.g_dtype), dbeta, None, dh0, None, None, None, None


def _validate_g(g, q) -> None:
    B, T, H, _ = q.shape
    if not isinstance(g, torch.Tensor):
        raise ValueError(f"g must be a torch.Tensor, got {type(g).__name__}")
    if tuple(g.shape) != (B, T, H):
        raise ValueError(f"g must be [B, T, H] = [{B}, {T}, {H}] (one log decay per token and head), "
                         f"got shape [{', '.join(str(s) for s in g.shape)}]")
    if g.dtype not in (torch.float32, q.dtype):
        raise ValueError(f"g dtype {g.dtype} not supported: use float32 or q's dtype {q.dtype}")
    if g.device != q.device:
        raise ValueError(f"g is on {g.device} but q is on {q.device}")


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    chunk_size: int = 64,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    r"""Gated delta rule (Gated DeltaNet), chunkwise parallel, forward and backward in Triton.

    Per (sequence, head), with state ``S`` of shape [K, V] starting at ``initial_state`` (zeros if None)::

        S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
        o_t = scale * S_t^T q_t

    q and k are used as given (the layer L2-normalises them).  The chunk form is derived in this module's
    docstring.

    Args:
        q: [B, T, H, K] queries, bfloat16, float16 or float32 (CUDA, or CPU under ``TRITON_INTERPRET=1``).
        k: [B, T, H, K] keys, same dtype and device as q.
        v: [B, T, H, V] values, same dtype. K and V may each be any size in [16, 256].
        g: [B, T, H] log decays, float32 or q's dtype.  Contract: g <= 0 (decay exp(g) in (0, 1]); the kernels do
            not check it (a positive g makes the within-chunk factors grow and is outside what they are tested for).
            Accumulated in float32.  Receives a gradient.
        beta: [B, T, H] writing strengths (usually in (0, 1)), same dtype as q.
        scale: output scale; default ``K ** -0.5``.
        initial_state: optional [N, H, K, V] state before the first token (any supported dtype; gradients flow to it).
        output_final_state: also return the state after the last token, [N, H, K, V] float32.
        cu_seqlens: optional [N + 1] int32/int64 cumulative sequence lengths (starting at 0, ending at T) packing N
            sequences into B = 1; chunks never cross sequence boundaries.
        chunk_size: tokens per chunk, 16, 32 or 64 (default 64).

    Launch settings come from the active :class:`kernels.ChunkSettings`, as for ``chunk_delta_rule``.

    Returns:
        o: [B, T, H, V] in q's dtype; final_state: [N, H, K, V] float32, or None unless ``output_final_state``.

    Raises:
        ValueError: wrong shapes, dtypes or devices (g included), bad ``cu_seqlens``, or CPU tensors without
            ``TRITON_INTERPRET=1`` (use ``kernels.naive_chunk_gated_delta_rule`` there).

    Example::

        >>> B, T, H, K, V = 2, 1000, 4, 128, 128
        >>> q = F.normalize(torch.randn(B, T, H, K, device="cuda", dtype=torch.bfloat16), dim=-1)
        >>> k = F.normalize(torch.randn(B, T, H, K, device="cuda", dtype=torch.bfloat16), dim=-1)
        >>> v = torch.randn(B, T, H, V, device="cuda", dtype=torch.bfloat16)
        >>> beta = torch.rand(B, T, H, device="cuda", dtype=torch.bfloat16)
        >>> g = -F.softplus(torch.randn(B, T, H, device="cuda"))  # float32, <= 0
        >>> o, state = chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True)  # o: [2, 1000, 4, 128]
    """
    validate_inputs(q, k, v, beta, initial_state=initial_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    _validate_g(g, q)
    check_triton_runnable(q, k, v, g, beta, initial_state, cu_seqlens)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.contiguous()
    return ChunkGatedDeltaRuleFunction.apply(q, k, v, g, beta, float(scale), initial_state, bool(output_final_state),
                                             cu_seqlens, int(chunk_size), current_chunk_settings())
