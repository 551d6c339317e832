"""Triton kernels for the delta rule and Mamba's selective scan (imports nothing else of the project)."""
from .delta_rule import (
    chunk_delta_rule,
    fused_recurrent_delta_rule,
    naive_chunk_delta_rule,
    naive_recurrent_delta_rule,
)
from .mamba import naive_selective_scan, naive_selective_scan_step, selective_scan, selective_scan_step

__all__ = [
    "chunk_delta_rule",
    "fused_recurrent_delta_rule",
    "naive_chunk_delta_rule",
    "naive_recurrent_delta_rule",
    "naive_selective_scan",
    "naive_selective_scan_step",
    "selective_scan",
    "selective_scan_step",
]
