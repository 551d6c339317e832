"""Kernel tests: without CUDA the Triton kernels run on CPU tensors through the interpreter (TRITON_INTERPRET=1).

The variable must be set before triton is first imported (triton.jit reads it when decorating), so this conftest sets
it as early as pytest lets a file under tests/kernels run. When the whole suite runs, another test directory may import
kernels/ (through deltanet/) first; the kernel tests then fail with a message saying so (see `require_interpreter`).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def kernels_are_interpreted() -> bool:
    from kernels.common import wy

    return type(wy.wy_fwd_kernel).__name__ == "InterpretedFunction"


@pytest.fixture
def require_interpreter():
    """On CPU the chunk kernels must be Triton-interpreted (there is no PyTorch fallback to hide behind)."""
    if DEVICE == "cpu" and not kernels_are_interpreted():
        pytest.fail("triton was imported before TRITON_INTERPRET=1 was set: set it in tests/conftest.py when CUDA is "
                    "unavailable, before anything imports kernels/ or triton")
