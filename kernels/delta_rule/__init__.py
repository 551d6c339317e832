"""Delta-rule ops: chunkwise (WY/UT) and fused recurrent Triton kernels, and PyTorch references."""
from .chunk import chunk_delta_rule
from .fused_recurrent import fused_recurrent_delta_rule
from .naive import naive_chunk_delta_rule, naive_recurrent_delta_rule

__all__ = [
    "chunk_delta_rule",
    "fused_recurrent_delta_rule",
    "naive_chunk_delta_rule",
    "naive_recurrent_delta_rule",
]
