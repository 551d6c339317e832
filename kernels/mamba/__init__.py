"""Mamba's selective scan (S6): the chunked Triton scan (forward and backward), a Triton decoding step, and the
sequential PyTorch references."""
from .naive import naive_selective_scan, naive_selective_scan_step
from .scan import DEFAULT_TUNING, ScanTuning, selective_scan
from .step import selective_scan_step

__all__ = ["DEFAULT_TUNING", "ScanTuning", "naive_selective_scan", "naive_selective_scan_step", "selective_scan",
           "selective_scan_step"]
