"""Building blocks: the DeltaNet, Gated DeltaNet, retention and GLA mixers, softmax attention, the Mamba block, SwiGLU,
RMSNorm, short convolution."""
from .attention import Attention
from .conv import ShortConvolution
from .delta_net import DeltaNet
from .gated_delta_net import GatedDeltaNet
from .gla import GatedLinearAttention
from .mamba import Mamba
from .mlp import SwiGLU
from .norm import RMSNorm
from .retnet import MultiScaleRetention

__all__ = ["Attention", "DeltaNet", "GatedDeltaNet", "GatedLinearAttention", "Mamba", "MultiScaleRetention", "RMSNorm", "ShortConvolution",
           "SwiGLU"]
