"""Short causal convolution: fused Triton kernel (conv + activation + per-head L2 norm) and its PyTorch form."""
from .delta_rule import conv_chunk_delta_rule
from .naive import naive_short_conv
from .short_conv import short_conv, short_conv_multi

__all__ = ["conv_chunk_delta_rule", "naive_short_conv", "short_conv", "short_conv_multi"]
