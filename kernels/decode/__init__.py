from .linear import decode_linear, naive_decode_linear
from .naive import naive_decode_step
from .step import decode_step

__all__ = ["decode_linear", "decode_step", "naive_decode_linear", "naive_decode_step"]
