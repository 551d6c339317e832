"""Building blocks: the DeltaNet mixer, softmax attention, SwiGLU, RMSNorm, short convolution."""
from .attention import Attention
from .conv import ShortConvolution
from .delta_net import DeltaNet
from .mlp import SwiGLU
from .norm import RMSNorm

__all__ = ["Attention", "DeltaNet", "RMSNorm", "ShortConvolution", "SwiGLU"]
