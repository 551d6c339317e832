"""SwiGLU's tail (silu(g) * u, then the down projection) saving only its inputs: Triton and its PyTorch form."""
from .naive import naive_swiglu_linear
from .swiglu import swiglu_linear

__all__ = ["naive_swiglu_linear", "swiglu_linear"]
