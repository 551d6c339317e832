"""Building blocks: the DeltaNet, Gated DeltaNet and retention mixers, softmax attention, the Mamba block, SwiGLU,
RMSNorm, short convolution."""
from .attention import Attention
from .conv import ShortConvolution
from .delta_net import DeltaNet
from .gated_delta_net import GatedDeltaNet
from .mamba import Mamba
from .mlp import SwiGLU
from .norm import RMSNorm
from .retnet import MultiScaleRetention

__all__ = ["Attention", "DeltaNet", "GatedDeltaNet", "Mamba", "MultiScaleRetention", "RMSNorm", "ShortConvolution",
           "SwiGLU"]
