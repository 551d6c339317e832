"""Building blocks: the DeltaNet and Gated DeltaNet mixers, softmax attention, SwiGLU, RMSNorm, short convolution."""
from .attention import Attention
from .conv import ShortConvolution
from .delta_net import DeltaNet
from .gated_delta_net import GatedDeltaNet
from .mlp import SwiGLU
from .norm import RMSNorm

__all__ = ["Attention", "DeltaNet", "GatedDeltaNet", "RMSNorm", "ShortConvolution", "SwiGLU"]
