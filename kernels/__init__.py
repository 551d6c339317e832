"""Triton kernels for the delta rule (imports nothing else of the project)."""
from .delta_rule import (
    chunk_delta_rule,
    fused_recurrent_delta_rule,
    naive_chunk_delta_rule,
    naive_recurrent_delta_rule,
)

__all__ = [
    "chunk_delta_rule",
    "fused_recurrent_delta_rule",
    "naive_chunk_delta_rule",
    "naive_recurrent_delta_rule",
]
