"""Linear cross-entropy with its gradient formed in the forward (Triton) and its PyTorch form."""
from .fused_linear import linear_cross_entropy
from .naive import naive_linear_cross_entropy

__all__ = ["linear_cross_entropy", "naive_linear_cross_entropy"]
