"""Building blocks: the DeltaNet mixer, softmax attention, the Mamba block, SwiGLU, RMSNorm, short convolution."""
from .attention import Attention
from .conv import ShortConvolution
from .delta_net import DeltaNet
from .mamba import Mamba
from .mlp import SwiGLU
from .norm import RMSNorm

__all__ = ["Attention", "DeltaNet", "Mamba", "RMSNorm", "ShortConvolution", "SwiGLU"]
