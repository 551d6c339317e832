"""Triton kernels for the delta rule, the gated delta rule, gated linear attention (GLA), scalar-decay linear attention and Mamba's selective scan
(imports nothing else of the project); see kernels/README.md."""
from .common.launch import ChunkSettings, KernelSettings, chunk_settings, current_chunk_settings
from .delta_rule import (
    chunk_delta_rule,
    fused_recurrent_delta_rule,
    naive_chunk_delta_rule,
    naive_recurrent_delta_rule,
)
from .gated_delta_rule import (
    chunk_gated_delta_rule,
    fused_recurrent_gated_delta_rule,
    naive_chunk_gated_delta_rule,
    naive_recurrent_gated_delta_rule,
)
from .gla import chunk_gla, fused_recurrent_gla, naive_chunk_gla, naive_recurrent_gla
from .simple_gla import (
    chunk_simple_gla,
    fused_recurrent_simple_gla,
    naive_chunk_simple_gla,
    naive_recurrent_simple_gla,
)
from .decode import decode_linear, decode_step, naive_decode_linear, naive_decode_step
from .mamba import naive_selective_scan, naive_selective_scan_step, selective_scan, selective_scan_step

__all__ = [
    "ChunkSettings",
    "KernelSettings",
    "chunk_delta_rule",
    "chunk_gla",
    "chunk_gated_delta_rule",
    "chunk_settings",
    "chunk_simple_gla",
    "current_chunk_settings",
    "decode_linear",
    "decode_step",
    "fused_recurrent_delta_rule",
    "fused_recurrent_gla",
    "fused_recurrent_gated_delta_rule",
    "fused_recurrent_simple_gla",
    "naive_chunk_delta_rule",
    "naive_chunk_gla",
    "naive_chunk_gated_delta_rule",
    "naive_chunk_simple_gla",
    "naive_decode_linear",
    "naive_decode_step",
    "naive_recurrent_delta_rule",
    "naive_recurrent_gla",
    "naive_recurrent_gated_delta_rule",
    "naive_recurrent_simple_gla",
    "naive_selective_scan",
    "naive_selective_scan_step",
    "selective_scan",
    "selective_scan_step",
]
