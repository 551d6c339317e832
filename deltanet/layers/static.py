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

Recurrent layers keep their prefill state's keys, so :func:`copy_state` is their ``load_static_state``.  A layer
may also keep derived constants under the key ``"weights"`` (a dict; not state, so not copied): DeltaNet, Gated
DeltaNet and attention keep their input projections concatenated there, one matrix-vector product per token instead
of three to six (a copy of those weights for the length of one ``generate`` call: 6 MiB per 340M layer).

Design of the recurrent single-token update (DeltaNet, Gated DeltaNet, retention): ``kernels.decode_step`` on the
Triton backend, one kernel for the three short convs, the feature map, the per-head norm and the state update,
writing the state and the conv caches in place; ``kernels.naive_decode_step`` (the same math in float32 PyTorch) on
the torch backend, which the CPU tests hold to the full forward.  Not the fused recurrent kernels at T = 1: they
take the conv'd, normalised q/k/v (some 25 small PyTorch kernels per layer before them) and return a new final
state that would need one more copy.  Inside a CUDA graph a step of a 24-layer model is bound by the number of
kernels (each costs a few microseconds however little it moves), not by bytes: the step reads the weights and
states once, the fewest kernels possible around that.  A new family with a matrix-valued state uses the same
kernel (its options: delta rule or plain update, decay, convs, feature maps) or adds its own update there.

A step's matrix products go through :func:`step_linear`: ``kernels.decode_linear`` for a few rows on CUDA without
gradients (at batch 1 they were most of the step on cuBLAS: "The step's matrix products" in kernels/README.md),
``F.linear`` otherwise.  The MLP's gate and up products are one such call with the SwiGLU product (layers/mlp.py).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

import kernels
from kernels.decode.linear import MAX_ROWS

__all__ = ["copy_state", "decode_step", "is_step_input", "step_linear"]


def copy_state(static: dict, state: dict) -> None:
    """Copies every buffer of ``static`` from the same key of ``state`` (dtype cast by copy_)."""
    for name, buf in static.items():
        if name == "weights":  # derived constants, not state
            continue
        if name not in state or state[name] is None:
            raise ValueError(f"prefill state has no {name!r} (got keys {sorted(state)}): cannot fill the static cache")
        if tuple(state[name].shape) != tuple(buf.shape):
            raise ValueError(f"prefill state {name!r} has shape {tuple(state[name].shape)}, the static buffer "
                             f"{tuple(buf.shape)}")
        buf.copy_(state[name])


def decode_step(backend: str):
    """The recurrent step of ``kernels`` for a resolved backend ('triton' | 'torch'); same arguments and in-place
    semantics either way."""
    if backend == "triton":
        return kernels.decode_step
    if backend == "torch":
        return kernels.naive_decode_step
    raise ValueError(f"backend must be 'triton' or 'torch' here, got {backend!r}")


def is_step_input(x: torch.Tensor) -> bool:
    """x [..., C] is a decoding step's input: at most ``MAX_ROWS`` rows, no gradients."""
    return x.numel() <= MAX_ROWS * x.shape[-1] and not torch.is_grad_enabled()


def step_linear(x: torch.Tensor, weight: torch.Tensor, weight2: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x @ weight^T`` (with ``weight2``: ``silu(x @ weight^T) * (x @ weight2^T)``) for a decoding step:
    ``kernels.decode_linear`` on CUDA for a step's input (:func:`is_step_input`) with x's dtype in the weights,
    ``F.linear`` otherwise (same math)."""
    if (x.is_cuda and is_step_input(x) and weight.dtype == x.dtype and weight.is_contiguous()
            and (weight2 is None or (weight2.dtype == x.dtype and weight2.is_contiguous()))):
        return kernels.decode_linear(x, weight, weight2)
    y = F.linear(x, weight)
    return y if weight2 is None else F.silu(y) * F.linear(x, weight2)
