"""RMSNorm with the residual add and the output gate fused: Triton kernels and their PyTorch form."""
from .naive import naive_rms_norm
from .rms_norm import rms_norm

__all__ = ["naive_rms_norm", "rms_norm"]
