r"""Chunkwise linear attention with a scalar decay per (token, head) (RetNet retention, Mamba2's SSD form, "simple
GLA"): orchestration, autograd function, public API.

``S_t = exp(g_t) S_{t-1} + k_t v_t^T``, ``o_t = scale * S_t^T q_t``.  This is the gated delta rule without the delta
rule: no WY representation (W = 0, U = V', V' = V), so the stages of ``kernels/common`` run with ``USE_G`` and without
W (``USE_W=False``)::

    forward:   cumsum (G) -> fwd_h (h) -> fwd_o (O = scale (diag(e^G) Q S + (Gamma * tril(Q K^T)) V))
    backward:  [fwd_h (h) unless kept] -> bwd_dhu (dV, dh) -> bwd_dqkw (dq, dk, dG) -> reverse cumsum (dg)
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..common.chunk_h import bwd_dhu, fwd_h
from ..common.chunk_o import bwd_dqkw, fwd_o
from ..common.cumsum import chunk_local_cumsum
from ..common.launch import ChunkMeta, current_chunk_settings
from ..common.utils import check_triton_runnable, validate_inputs
from ..gated_delta_rule.chunk import _validate_g

__all__ = ["chunk_simple_gla"]


class ChunkSimpleGLAFunction(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, G (and, when the settings keep states, h)."""

    @staticmethod
    def forward(ctx, q, k, v, g, scale, initial_state, output_final_state, cu_seqlens, chunk_size, settings):
        m = ChunkMeta(q, v, cu_seqlens, chunk_size, settings)
        G = chunk_local_cumsum(m, g)
        h, _, ht = fwd_h(m, k, None, v, initial_state, output_final_state, g=G)
        o = fwd_o(m, q, k, v, h, scale, g=G)
        if not settings.keeps_states(q.shape[-1]):
            h = None
        ctx.save_for_backward(q, k, v, G, initial_state, cu_seqlens, h)
        ctx.scale, ctx.chunk_size, ctx.settings, ctx.g_dtype = scale, chunk_size, settings, g.dtype
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, G, initial_state, cu_seqlens, h = ctx.saved_tensors
        m = ChunkMeta(q, v, cu_seqlens, ctx.chunk_size, ctx.settings)
        do = do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        if h is None:
            h, _, _ = fwd_h(m, k, None, v, initial_state, False, g=G)
        dv, dh, dh0 = bwd_dhu(m, q, k, None, do, dht, ctx.scale, initial_state is not None, g=G)
        dq, dk, _, dG = bwd_dqkw(m, q, k, v, do, h, dh, dv, ctx.scale, g=G)
        dg = chunk_local_cumsum(m, dG, reverse=True).to(ctx.g_dtype)
        if dh0 is not None:
            dh0 = dh0.to(initial_state.dtype)
        return dq, dk, dv, dg, None, dh0, None, None, None, None


def chunk_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    chunk_size: int = 64,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    r"""Linear attention with a scalar decay per (token, head), chunkwise, forward and backward in Triton.

    Per (sequence, head), with state ``S`` [K, V] starting at ``initial_state`` (zeros if None)::

        S_t = exp(g_t) S_{t-1} + k_t v_t^T
        o_t = scale * S_t^T q_t

    RetNet's retention is the case of a constant g per head (g = log(1 - 2^(-5 - h)) in the paper's multi-scale
    form); Mamba2's SSD the case g = dt * A with dt data-dependent.

    Args:
        q: [B, T, H, K] queries, bfloat16, float16 or float32 (CUDA, or CPU under ``TRITON_INTERPRET=1``).
        k: [B, T, H, K] keys; v: [B, T, H, V] values; same dtype and device as q.  K, V in [16, 256].
        g: [B, T, H] log decays, float32 or q's dtype; g <= 0 is the caller's contract (not checked).  Receives a
            gradient.
        scale: output scale; default ``K ** -0.5``.
        initial_state: optional [N, H, K, V] (any supported dtype; receives a gradient).
        output_final_state: also return the state after the last token, [N, H, K, V] float32.
        cu_seqlens: optional [N + 1] int32/int64 offsets packing N sequences into B = 1.
        chunk_size: 16, 32 or 64.

    Returns:
        o: [B, T, H, V] in q's dtype; final_state: [N, H, K, V] float32 or None.

    Raises:
        ValueError: wrong shapes, dtypes or devices, bad ``cu_seqlens``, CPU tensors without ``TRITON_INTERPRET=1``.

    Example::

        >>> g = torch.full((B, T, H), math.log(1 - 2 ** -5), device="cuda")  # RetNet's first head's decay
        >>> o, _ = chunk_simple_gla(q, k, v, g)
    """
    beta = q.new_empty(q.shape[:3])  # validate_inputs' beta slot: this op has none
    validate_inputs(q, k, v, beta, initial_state=initial_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    _validate_g(g, q)
    check_triton_runnable(q, k, v, g, initial_state, cu_seqlens)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    q, k, v, g = (x.contiguous() for x in (q, k, v, g))
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.contiguous()
    return ChunkSimpleGLAFunction.apply(q, k, v, g, float(scale), initial_state, bool(output_final_state),
                                        cu_seqlens, int(chunk_size), current_chunk_settings())
