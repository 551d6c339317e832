"""Fused recurrent gated delta rule, token by token with the state in registers: forward only (decoding).

State S is [K, V] per (sequence, head); for every token t::

    S'  = exp(g_t) S_{t-1}
    S_t = S' + beta_t k_t (v_t - S'^T k_t)^T
    o_t = scale * S_t^T q_t

The kernel is ``common/recurrent.py``'s, shared with the other decayed ops.  There is no backward: training uses
``chunk_gated_delta_rule``, and a call that would need gradients raises ValueError instead of returning outputs
without them.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..common.recurrent import fused_recurrent_fwd
from ..common.utils import validate_inputs
from .chunk import _validate_g

__all__ = ["fused_recurrent_gated_delta_rule"]


def fused_recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Gated delta rule token by token in one Triton kernel; forward only, for decoding.

    ``S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, ``o_t = scale * S_t^T q_t``.

    Args:
        q: [B, T, H, K] queries, bfloat16, float16 or float32 (k, v, beta share its dtype and device).
        k: [B, T, H, K] keys.  v: [B, T, H, V] values.  K, V in [16, 256].
        g: [B, T, H] log decays (<= 0 by contract, not checked), float32 or q's dtype.
        beta: [B, T, H] write strengths.
        scale: output scale; default K ** -0.5.
        initial_state: [N, H, K, V] or None (zeros); any supported dtype.
        output_final_state: also return the state after the last token.
        cu_seqlens: None, or [N + 1] int32/int64 offsets packing N sequences into B = 1.

    Returns:
        o: [B, T, H, V] in q's dtype; final_state: [N, H, K, V] float32 or None.

    Raises:
        ValueError: bad shapes, dtypes, devices or cu_seqlens; CPU tensors without ``TRITON_INTERPRET=1``; an input
            that requires grad while grad mode is on (this op has no backward: use ``chunk_gated_delta_rule``).
    """
    N = validate_inputs(q, k, v, beta, initial_state=initial_state, cu_seqlens=cu_seqlens)
    _validate_g(g, q)
    return fused_recurrent_fwd("fused_recurrent_gated_delta_rule", "chunk_gated_delta_rule", N, q, k, v, scale,
                               initial_state, output_final_state, cu_seqlens, g=g, beta=beta)
