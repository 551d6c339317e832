"""Delta-rule ops: chunkwise (WY/UT) and fused recurrent Triton kernels, and PyTorch references."""
from .naive import naive_chunk_delta_rule, naive_recurrent_delta_rule

try:  # the chunkwise Triton kernel lives in chunk.py (owned by the chunk-kernel engineer)
    from .chunk import chunk_delta_rule
except ImportError:  # not committed yet
    chunk_delta_rule = None

try:
    from .fused_recurrent import fused_recurrent_delta_rule
except ImportError:  # not committed yet
    fused_recurrent_delta_rule = None

__all__ = [
    "chunk_delta_rule",
    "fused_recurrent_delta_rule",
    "naive_chunk_delta_rule",
    "naive_recurrent_delta_rule",
]
