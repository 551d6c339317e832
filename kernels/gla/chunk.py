r"""Chunkwise gated linear attention (GLA: a data-dependent decay per key channel): orchestration, autograd function,
public API.

``S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T``, ``o_t = scale * S_t^T q_t``, g [B, T, H, K].  The state walks are the
shared ones (``common/chunk_h.py``) with the per-channel row decay ``USE_GK``, on keys decayed to the chunk end and
queries decayed from the chunk start; the within-chunk attention A and the gradients of q, k and g are GLA's own
stages (``stages.py``)::

    forward:   prep (G, Qg, Kd, G_C) -> fwd_h (h) -> intra A -> fwd_o (O = scale (Qg S + A V))
    backward:  prep -> [fwd_h unless kept] -> intra A -> dA, dV_local -> bwd_dhu (dV, dS) -> intra dQ, dK
               -> dQ, dK, dg (state terms, dg by the within-chunk reverse cumulative sum)
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..common.chunk_h import bwd_dhu, fwd_h
from ..common.launch import ChunkMeta, current_chunk_settings
from ..common.utils import check_triton_runnable, validate_inputs
from .stages import gla_bwd_dA, gla_bwd_dqkg, gla_bwd_intra, gla_fwd_A, gla_fwd_o, gla_prep

__all__ = ["chunk_gla"]


def validate_gk(g, q) -> None:
    """g must be [B, T, H, K] (one log decay per token, head and key channel), float32 or q's dtype, on q's device."""
    if not isinstance(g, torch.Tensor):
        raise ValueError(f"g must be a torch.Tensor, got {type(g).__name__}")
    if tuple(g.shape) != tuple(q.shape):
        raise ValueError(f"g must be [B, T, H, K] = [{', '.join(str(s) for s in q.shape)}] (one log decay per key "
                         f"channel), got shape [{', '.join(str(s) for s in g.shape)}]")
    if g.dtype not in (torch.float32, q.dtype):
        raise ValueError(f"g dtype {g.dtype} not supported: use float32 or q's dtype {q.dtype}")
    if g.device != q.device:
        raise ValueError(f"g is on {g.device} but q is on {q.device}")


class ChunkGLAFunction(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, g (and, when the settings keep states, h); the backward recomputes G, the
    decayed q and k, and A."""

    @staticmethod
    def forward(ctx, q, k, v, g, scale, initial_state, output_final_state, cu_seqlens, chunk_size, settings):
        m = ChunkMeta(q, v, cu_seqlens, chunk_size, settings)
        G, qg, kd, gk = gla_prep(m, q, k, g)
        h, _, ht = fwd_h(m, kd, None, v, initial_state, output_final_state, gk=gk)
        A = gla_fwd_A(m, q, k, G)
        o = gla_fwd_o(m, qg, v, h, A, scale)
        if not settings.keeps_states(q.shape[-1]):
            h = None
        ctx.save_for_backward(q, k, v, g, initial_state, cu_seqlens, h)
        ctx.scale, ctx.chunk_size, ctx.settings = scale, chunk_size, settings
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, initial_state, cu_seqlens, h = ctx.saved_tensors
        m = ChunkMeta(q, v, cu_seqlens, ctx.chunk_size, ctx.settings)
        do = do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        G, qg, kd, gk = gla_prep(m, q, k, g)
        if h is None:
            h, _, _ = fwd_h(m, kd, None, v, initial_state, False, gk=gk)
        A = gla_fwd_A(m, q, k, G)
        dA, dv_local = gla_bwd_dA(m, v, do, A, ctx.scale)
        dv, dh, dh0 = bwd_dhu(m, qg, kd, None, do, dht, ctx.scale, initial_state is not None, gk=gk,
                              dv_local=dv_local)
        dq_intra, dk_intra = gla_bwd_intra(m, q, k, G, dA)
        dq, dk, dg = gla_bwd_dqkg(m, q, k, v, G, gk, h, do, dh, dq_intra, dk_intra, ctx.scale, g.dtype)
        if dh0 is not None:
            dh0 = dh0.to(initial_state.dtype)
        return dq, dk, dv, dg, None, dh0, None, None, None, None


def chunk_gla(
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
    r"""Gated linear attention (per-key-channel decay), chunkwise, forward and backward in Triton.

    Per (sequence, head), with state ``S`` [K, V] starting at ``initial_state`` (zeros if None)::

        S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T
        o_t = scale * S_t^T q_t

    Args:
        q: [B, T, H, K] queries, bfloat16, float16 or float32 (CUDA, or CPU under ``TRITON_INTERPRET=1``).
        k: [B, T, H, K] keys; v: [B, T, H, V] values; same dtype and device as q.  K, V in [16, 256].
        g: [B, T, H, K] log decays, float32 or q's dtype; g <= 0 is the caller's contract (not checked).  Receives a
            gradient (in g's dtype).
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

        >>> g = F.logsigmoid(gate_logits) / 16          # [B, T, H, K], GLA's gate
        >>> o, _ = chunk_gla(q, k, v, g)
    """
    beta = q.new_empty(q.shape[:3])  # validate_inputs' beta slot: this op has none
    validate_inputs(q, k, v, beta, initial_state=initial_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    validate_gk(g, q)
    check_triton_runnable(q, k, v, g, initial_state, cu_seqlens)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    q, k, v, g = (x.contiguous() for x in (q, k, v, g))
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.contiguous()
    return ChunkGLAFunction.apply(q, k, v, g, float(scale), initial_state, bool(output_final_state),
                                  cu_seqlens, int(chunk_size), current_chunk_settings())
