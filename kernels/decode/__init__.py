from .naive import naive_decode_step
from .step import decode_step

__all__ = ["decode_step", "naive_decode_step"]
