"""Chunkwise parallel delta rule (WY representation, UT transform): orchestration, autograd function, public API.

State ``S`` is ``[K, V]`` per (sequence, head); per token ``S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T`` and
``o_t = scale * S_t^T q_t``.  The sequence is cut into chunks of ``BT`` tokens; the stages live in ``kernels/common``:

    forward:   wy.wy_fwd (A, W, U)  ->  chunk_h.fwd_h (h, V')  ->  chunk_o.fwd_o (O)
    backward:  wy.wy_fwd (W, U again, from the stored A)  [-> chunk_h.fwd_h (h, V') unless kept]
               -> chunk_h.bwd_dhu (dV', dh)  ->  chunk_o.bwd_dqkw (dq, dk part, dw)  ->  wy.wy_bwd (dk, dv, dbeta)

Tuning: ``kernels.chunk_settings`` / ``kernels.ChunkSettings`` (``common/launch.py``); a call reads the active
settings once, in its forward, and its backward uses the same ones.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..common.chunk_h import bwd_dhu, fwd_h
from ..common.chunk_o import bwd_dqkw, fwd_o
from ..common.launch import ChunkMeta, ChunkSettings, current_chunk_settings
from ..common.utils import check_triton_runnable, validate_inputs
from ..common.wy import wy_bwd, wy_fwd

__all__ = ["chunk_delta_rule"]


def chunk_delta_rule_fwd(q, k, v, beta, scale: float, initial_state, output_final_state: bool, cu_seqlens,
                         chunk_size: int, settings: ChunkSettings):
    """Forward on contiguous, validated inputs (shapes as in :func:`chunk_delta_rule`).

    Returns (o [B, T, H, V], final state [N, H, K, V] float32 or None, A [B, T, H, BT], h [NT, H, K, V],
    v_new [B, T, H, V]); A, h and v_new are what the backward may reuse.
    """
    m = ChunkMeta(q, v, cu_seqlens, chunk_size, settings)
    A, w, u = wy_fwd(m, k, v, beta)
    h, v_new, ht = fwd_h(m, k, w, u, initial_state, output_final_state)
    o = fwd_o(m, q, k, v_new, h, scale)
    return o, ht, A, h, v_new


def chunk_delta_rule_bwd(q, k, v, beta, A, scale: float, initial_state, do, dht, cu_seqlens, chunk_size: int,
                         settings: ChunkSettings, h=None, v_new=None):
    """Backward: recomputes W, U from the stored A and, unless the forward's h and v_new are given, the chunk states;
    then runs the gradient stages.  do: [B, T, H, V]; dht: [N, H, K, V] float32 or None.

    Returns (dq, dk, dv, dbeta, dh0 [N, H, K, V] float32 or None).
    """
    m = ChunkMeta(q, v, cu_seqlens, chunk_size, settings)
    _, w, u = wy_fwd(m, k, v, beta, A=A, need_u=h is None)  # U only feeds the state walk
    if h is None:
        h, v_new, _ = fwd_h(m, k, w, u, initial_state, False)
    dv_new, dh, dh0 = bwd_dhu(m, q, k, w, do, dht, scale, initial_state is not None)
    dq, dk_part, dw = bwd_dqkw(m, q, k, v_new, do, h, dh, dv_new, scale)
    dk, dv, dbeta = wy_bwd(m, k, v, beta, A, dw, dv_new, dk_part)
    return dq, dk, dv, dbeta, dh0


class ChunkDeltaRuleFunction(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, beta, A (and, when the settings keep states, h and V') for the backward."""

    @staticmethod
    def forward(ctx, q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens, chunk_size, settings):
        o, ht, A, h, v_new = chunk_delta_rule_fwd(q, k, v, beta, scale, initial_state, output_final_state,
                                                  cu_seqlens, chunk_size, settings)
        if not settings.keeps_states(q.shape[-1]):
            h = v_new = None  # the backward recomputes them
        ctx.save_for_backward(q, k, v, beta, A, initial_state, cu_seqlens, h, v_new)
        ctx.scale, ctx.chunk_size, ctx.settings = scale, chunk_size, settings
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, beta, A, initial_state, cu_seqlens, h, v_new = ctx.saved_tensors
        do = do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        dq, dk, dv, dbeta, dh0 = chunk_delta_rule_bwd(q, k, v, beta, A, ctx.scale, initial_state, do, dht,
                                                      cu_seqlens, ctx.chunk_size, ctx.settings, h, v_new)
        if dh0 is not None:
            dh0 = dh0.to(initial_state.dtype)
        return dq, dk, dv, dbeta, None, dh0, None, None, None, None


def chunk_delta_rule(
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
    r"""Delta rule, chunkwise parallel (WY representation / UT transform), forward and backward in Triton.

    Per (sequence, head), with state ``S`` of shape [K, V] starting at ``initial_state`` (zeros if None)::

        S_t = S_{t-1} + beta_t * k_t (v_t - S_{t-1}^T k_t)^T
        o_t = scale * S_t^T q_t

    q and k are used as given (no normalisation here; the layer normalises them).

    Args:
        q: [B, T, H, K] queries, bfloat16, float16 or float32 (CUDA, or CPU under ``TRITON_INTERPRET=1``).
        k: [B, T, H, K] keys, same dtype and device as q.
        v: [B, T, H, V] values, same dtype. K and V may each be any size in [16, 256] (powers of two or not).
        beta: [B, T, H] writing strengths (usually in (0, 1)), same dtype.
        scale: output scale; default ``K ** -0.5``.
        initial_state: optional [N, H, K, V] state before the first token (any supported dtype; gradients flow to it).
        output_final_state: also return the state after the last token, [N, H, K, V] float32.
        cu_seqlens: optional [N + 1] int32/int64 cumulative sequence lengths (starting at 0, ending at T) packing N
            sequences into B = 1; chunks never cross sequence boundaries and each sequence starts from its own
            initial_state row.
        chunk_size: tokens per chunk, 16, 32 or 64 (default 64).

    Launch and algorithm settings come from the active :class:`kernels.ChunkSettings` (change them for a block with
    ``kernels.chunk_settings(...)``); they change speed and memory, not the result beyond rounding.

    Returns:
        o: [B, T, H, V] in q's dtype; final_state: [N, H, K, V] float32, or None unless ``output_final_state``.

    Raises:
        ValueError: wrong shapes, dtypes or devices, non-monotone ``cu_seqlens``, or CPU tensors without
            ``TRITON_INTERPRET=1`` (use ``kernels.naive_chunk_delta_rule`` there); a tile setting giving more than
            four K or V blocks per chunk.

    Example::

        >>> B, T, H, K, V = 2, 1000, 4, 64, 64
        >>> q = F.normalize(torch.randn(B, T, H, K, device="cuda", dtype=torch.bfloat16), dim=-1)
        >>> k = F.normalize(torch.randn(B, T, H, K, device="cuda", dtype=torch.bfloat16), dim=-1)
        >>> v = torch.randn(B, T, H, V, device="cuda", dtype=torch.bfloat16)
        >>> beta = torch.rand(B, T, H, device="cuda", dtype=torch.bfloat16)
        >>> o, state = chunk_delta_rule(q, k, v, beta, output_final_state=True)  # o: [2, 1000, 4, 64]
    """
    validate_inputs(q, k, v, beta, initial_state=initial_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    check_triton_runnable(q, k, v, beta, initial_state, cu_seqlens)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    q, k, v, beta = (x.contiguous() for x in (q, k, v, beta))
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.contiguous()
    return ChunkDeltaRuleFunction.apply(q, k, v, beta, float(scale), initial_state, bool(output_final_state),
                                        cu_seqlens, int(chunk_size), current_chunk_settings())
