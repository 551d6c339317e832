"""Triton kernels for the delta rule and Mamba's selective scan (imports nothing else of the project); see
kernels/README.md."""
from .common.launch import ChunkSettings, KernelSettings, chunk_settings, current_chunk_settings
from .delta_rule import (
    chunk_delta_rule,
    fused_recurrent_delta_rule,
    naive_chunk_delta_rule,
    naive_recurrent_delta_rule,
)
from .mamba import naive_selective_scan, naive_selective_scan_step, selective_scan, selective_scan_step

__all__ = [
    "ChunkSettings",
    "KernelSettings",
    "chunk_delta_rule",
    "chunk_settings",
    "current_chunk_settings",
    "fused_recurrent_delta_rule",
    "naive_chunk_delta_rule",
    "naive_recurrent_delta_rule",
    "naive_selective_scan",
    "naive_selective_scan_step",
    "selective_scan",
    "selective_scan_step",
]
