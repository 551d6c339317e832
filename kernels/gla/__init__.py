"""Gated linear attention (GLA: a data-dependent decay per key channel): chunk and fused recurrent Triton ops and the
PyTorch reference."""
from .chunk import chunk_gla
from .fused_recurrent import fused_recurrent_gla
from .naive import naive_chunk_gla, naive_recurrent_gla

__all__ = ["chunk_gla", "fused_recurrent_gla", "naive_chunk_gla", "naive_recurrent_gla"]
