"""DeltaNet models: `DeltaNetConfig` and `DeltaNetForCausalLM` (DeltaNet, hybrids with attention, Transformer++)."""
from .config import FAMILIES, PRESETS, DeltaNetConfig
from .model import Cache, CausalLMOutput, DeltaNetForCausalLM

__all__ = ["Cache", "CausalLMOutput", "DeltaNetConfig", "DeltaNetForCausalLM", "FAMILIES", "PRESETS"]
