"""The static decoding-state protocol shared by every token mixer (deltanet/generation.py drives it).

A mixer that supports the fast decoding path implements three methods:

    init_static_state(batch, max_len, device, dtype) -> dict[str, Tensor]
        Preallocates every buffer one sequence row needs for decoding up to ``max_len`` tokens in all (prompt +
        new tokens): conv states in ``dtype``, recurrent states in float32, attention keys/values.  Sizes never
        change afterwards, so a CUDA graph can hold their addresses.
    load_static_state(static, state) -> None
        Copies the state dict that ``forward(..., use_cache=True)`` returned after the prefill into the buffers
        (overwriting everything a later ``step`` reads).
    step(x, static, pos) -> y
        One token for every row: x (B, 1, C) -> y (B, 1, C).  ``pos`` is a 0-dim long tensor on x's device holding
        the position of this token; the step writes only into the buffers (``copy_`` / ``index_copy_``), never
        reads a Python-side length and never changes a shape, so it can be captured in a CUDA graph.

Recurrent layers keep their prefill state's keys, so :func:`copy_state` is their ``load_static_state``.

Design of the recurrent single-token update (:func:`recurrent_step`): a few float32 PyTorch ops on the state
[B, H, K, V] (batched mat-vecs and one rank-1 update) rather than the fused recurrent Triton kernel at T = 1.
Inside a CUDA graph the launch cost of either is gone; what remains is moving the state, which both do once
(read + write, 2 * 4 * H * K * V bytes per layer and row).  The PyTorch form updates the buffer in place (the kernel
returns a new final state that would need one more copy), runs identically on CPU, where the tests check it
against the full forward, and needs no kernel per family: a new family with a matrix-valued state writes its
update rule here.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["copy_state", "recurrent_step"]


def copy_state(static: dict, state: dict) -> None:
    """Copies every buffer of ``static`` from the same key of ``state`` (dtype cast by copy_)."""
    for name, buf in static.items():
        if name not in state or state[name] is None:
            raise ValueError(f"prefill state has no {name!r} (got keys {sorted(state)}): cannot fill the static cache")
        if tuple(state[name].shape) != tuple(buf.shape):
            raise ValueError(f"prefill state {name!r} has shape {tuple(state[name].shape)}, the static buffer "
                             f"{tuple(buf.shape)}")
        buf.copy_(state[name])


def recurrent_step(S: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   beta: Optional[torch.Tensor] = None, g: Optional[torch.Tensor] = None,
                   scale: Optional[float] = None) -> torch.Tensor:
    """One token of a matrix-state recurrence, S updated in place (float32).

    S: (B, H, K, V) float32; q, k: (B, H, K); v: (B, H, V); beta, g: (B, H) or None.  With a = exp(g) (1 without g):

        delta rule (beta given):  S <- a S;  S <- S + beta k (v - S^T k)^T
        linear / retention (no beta):  S <- a S + k v^T
        o = scale S^T q,  scale = K^-0.5 by default.

    Returns o (B, H, V) in v's dtype.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qf, kf, vf = q.float(), k.float(), v.float()
    if g is not None:
        S.mul_(g.float().exp()[..., None, None])
    if beta is not None:
        err = vf - torch.einsum("bhkv,bhk->bhv", S, kf)  # (B, H, V)
        vf = beta.float()[..., None] * err
    S.add_(kf[..., :, None] * vf[..., None, :])
    o = torch.einsum("bhkv,bhk->bhv", S, qf) * scale
    return o.to(v.dtype)
