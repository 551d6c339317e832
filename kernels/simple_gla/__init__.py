"""Linear attention with a scalar decay per (token, head) (RetNet retention, SSD): chunk and fused recurrent Triton
ops and the PyTorch reference."""
from .chunk import chunk_simple_gla
from .fused_recurrent import fused_recurrent_simple_gla
from .naive import naive_chunk_simple_gla, naive_recurrent_simple_gla

__all__ = ["chunk_simple_gla", "fused_recurrent_simple_gla", "naive_chunk_simple_gla", "naive_recurrent_simple_gla"]
