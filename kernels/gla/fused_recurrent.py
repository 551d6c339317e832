"""Fused recurrent gated linear attention (per-key-channel decay), token by token: forward only (decoding).

``S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T``, ``o_t = scale * S_t^T q_t``, with the kernel of
``common/recurrent.py``.  No backward: training uses ``chunk_gla``, and a call that would need gradients raises
ValueError.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..common.recurrent import fused_recurrent_fwd
from ..common.utils import validate_inputs
from .chunk import validate_gk

__all__ = ["fused_recurrent_gla"]


def fused_recurrent_gla(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """GLA token by token in one Triton kernel; forward only, for decoding.

    Args: as :func:`kernels.chunk_gla` without ``chunk_size`` (q, k, g: [B, T, H, K], g log decays <= 0 in float32
    or q's dtype; v: [B, T, H, V]; initial_state: [N, H, K, V]; cu_seqlens: [N + 1]).

    Returns: o [B, T, H, V] in q's dtype; final_state [N, H, K, V] float32 or None.

    Raises: ValueError for bad inputs, CPU tensors without ``TRITON_INTERPRET=1``, or an input that requires grad
    while grad mode is on (no backward here: use ``chunk_gla``).
    """
    N = validate_inputs(q, k, v, q.new_empty(q.shape[:3]), initial_state=initial_state, cu_seqlens=cu_seqlens)
    validate_gk(g, q)
    return fused_recurrent_fwd("fused_recurrent_gla", "chunk_gla", N, q, k, v, scale, initial_state,
                               output_final_state, cu_seqlens, gk=g)
