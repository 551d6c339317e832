"""The layers' one way into the kernels package for the four matrix-state ops: the delta rule, the gated delta rule,
scalar-decay linear attention (RetNet's retention) and GLA.

``matrix_state_op(name, q, k, v, *gates, backend=..., mode=...)`` picks, per backend ('triton' | 'torch') and mode
('chunk' | 'recurrent'), the op's chunk or recurrent kernel, or their PyTorch forms.  The Triton recurrent kernels of
the decayed ops are forward-only: when gradients are needed the chunk kernel runs instead (the same result up to
rounding).  The scale is always the real key dim's ``K ** -0.5``.

Head dims below the Triton kernels' 16 (16 heads at MAD's width 128, GLA's halved key dim at 8 heads) are zero-padded
to 16, which is exact for all four: zero key channels add nothing to ``S^T k`` and write zero rows into S (with a
zero log decay on them, GLA's rows keep their zeros); zero value channels keep S's extra columns at 0, so the extra
output channels are 0 and are sliced off.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

import kernels
from kernels.common.utils import MIN_HEAD_DIM

__all__ = ["OPS", "matrix_state_op"]

#: name -> (chunk, recurrent, naive chunk, naive recurrent, whether the Triton recurrent op has a backward)
OPS = {
    "delta_rule": (kernels.chunk_delta_rule, kernels.fused_recurrent_delta_rule, kernels.naive_chunk_delta_rule,
                   kernels.naive_recurrent_delta_rule, True),
    "gated_delta_rule": (kernels.chunk_gated_delta_rule, kernels.fused_recurrent_gated_delta_rule,
                         kernels.naive_chunk_gated_delta_rule, kernels.naive_recurrent_gated_delta_rule, False),
    "simple_gla": (kernels.chunk_simple_gla, kernels.fused_recurrent_simple_gla, kernels.naive_chunk_simple_gla,
                   kernels.naive_recurrent_simple_gla, False),
    "gla": (kernels.chunk_gla, kernels.fused_recurrent_gla, kernels.naive_chunk_gla, kernels.naive_recurrent_gla,
            False),
}


def matrix_state_op(
    name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *gates: torch.Tensor, backend: str, mode: str,
    chunk_size: int = 64, initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Run op `name` (a key of :data:`OPS`).

    Args: q, k (B, T, H, K); v (B, T, H, V); gates: the op's own inputs after v, in its order (delta rule: beta;
    gated delta rule: g, beta; simple_gla: g; gla: g (B, T, H, K)); backend 'triton' | 'torch' (resolved, not
    'auto'); mode 'chunk' | 'recurrent'; initial_state (N, H, K, V); cu_seqlens (N + 1).

    Returns: (o (B, T, H, V), final state (N, H, K, V) float32 or None).
    """
    if name not in OPS:
        raise ValueError(f"unknown matrix-state op {name!r}; ops: {sorted(OPS)}")
    if mode not in ("chunk", "recurrent"):
        raise ValueError(f"mode must be 'chunk' or 'recurrent', got {mode!r}")
    chunk, recurrent, naive_chunk, naive_recurrent, recurrent_grad = OPS[name]
    if backend == "triton":
        needs_grad = not recurrent_grad and torch.is_grad_enabled() and any(
            x is not None and x.requires_grad for x in (q, k, v, *gates, initial_state))
        fn = chunk if mode == "chunk" or needs_grad else recurrent
    elif backend == "torch":
        fn = naive_chunk if mode == "chunk" else naive_recurrent
    else:
        raise ValueError(f"backend must be 'triton' or 'torch' here, got {backend!r}")
    kwargs = {"chunk_size": chunk_size} if fn in (chunk, naive_chunk) else {}
    K, V = q.shape[-1], v.shape[-1]
    pk, pv = (max(0, MIN_HEAD_DIM - n) if backend == "triton" else 0 for n in (K, V))
    if pk or pv:
        q, k, v = F.pad(q, (0, pk)), F.pad(k, (0, pk)), F.pad(v, (0, pv))
        gates = tuple(F.pad(x, (0, pk)) if x.dim() == 4 else x for x in gates)  # GLA's per-key log decays
        if initial_state is not None:
            initial_state = F.pad(initial_state, (0, pv, 0, pk))
    o, s = fn(q, k, v, *gates, scale=K ** -0.5, initial_state=initial_state, output_final_state=output_final_state,
              cu_seqlens=cu_seqlens, **kwargs)
    if pk or pv:
        o, s = o[..., :V], (s[..., :K, :V] if s is not None else None)
    return o, s
