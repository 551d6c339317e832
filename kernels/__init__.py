"""Triton kernels for the delta rule (imports nothing else of the project); see kernels/README.md."""
from .common.launch import ChunkSettings, KernelSettings, chunk_settings, current_chunk_settings
from .delta_rule import (
    chunk_delta_rule,
    fused_recurrent_delta_rule,
    naive_chunk_delta_rule,
    naive_recurrent_delta_rule,
)

__all__ = [
    "ChunkSettings",
    "KernelSettings",
    "chunk_delta_rule",
    "chunk_settings",
    "current_chunk_settings",
    "fused_recurrent_delta_rule",
    "naive_chunk_delta_rule",
    "naive_recurrent_delta_rule",
]
