from lit_modules.causal_lm import CausalLMModule

__all__ = ["CausalLMModule"]
