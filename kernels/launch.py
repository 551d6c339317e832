"""Checks shared by the fused elementwise kernels (conv/, norm/, mlp/): can Triton launch on these tensors?"""
from __future__ import annotations

import os
from typing import Optional

import torch

__all__ = ["check_runnable", "interpret_enabled"]


def interpret_enabled() -> bool:
    """True when ``TRITON_INTERPRET=1`` (Triton kernels then run on CPU tensors through the interpreter)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_runnable(op: str, *tensors: Optional[torch.Tensor]) -> None:
    """Raise ValueError unless Triton can launch ``op`` on these tensors (CUDA, or any device under the interpreter)."""
    if interpret_enabled():
        return
    for x in tensors:
        if x is not None and not x.is_cuda:
            raise ValueError(f"{op}: Triton kernels need CUDA tensors (got one on {x.device}); on CPU use the naive "
                             "PyTorch form beside it, or set TRITON_INTERPRET=1")
