"""`DeltaNetConfig`: one flat dataclass describing every model family of the codebase.

Families (``family``):

- ``deltanet``: every layer is a DeltaNet (delta-rule linear attention) mixer.
- ``deltanet_hybrid_swa``: sliding-window softmax attention every other layer (layers 2, 4, ... counted from 1),
  window ``attn_window`` (default 2048); DeltaNet elsewhere.
- ``deltanet_hybrid_global``: global softmax attention at layers ``attn_layers`` (counted from 1; default
  ``[2, N // 2 + 1]``); DeltaNet elsewhere.
- ``gated_deltanet``: every layer a Gated DeltaNet mixer (the delta rule with a Mamba2-style decay, output gate).
- ``gated_deltanet_hybrid_swa``: sliding-window attention every other layer as in ``deltanet_hybrid_swa``, Gated
  DeltaNet elsewhere.
- ``retnet``: every layer RetNet's multi-scale retention (fixed decay per head, RoPE, output gate) in the published
  design (Sun et al., 2023): ``retnet_norm`` ``"group"`` (GroupNorm with one group per head) and
  ``retnet_value_factor`` 2 (value head dim 2 * head_dim).  Its default SwiGLU width is the Llama width less
  ``(retnet_value_factor - 1) * num_heads * head_dim``: the wider values, gate and output projection add
  ``3 * hidden * (factor - 1) * H * D`` weights per layer and the narrower FFN takes as many away, so a paper
  size keeps its parameter count, as the paper keeps RetNet's equal to the Transformer's by a smaller FFN.
- ``gla``: every layer gated linear attention (a data-dependent decay per key channel from a low-rank gate, key dim
  head_dim / 2, output gate).
- ``transformer``: Transformer++ (RoPE, SwiGLU, RMSNorm, causal attention) in every layer.
- ``mamba``: Mamba (selective state space, S6) with no MLP.  Each of the ``num_layers`` layers holds two residual
  Mamba blocks ``x = x + Mamba(RMSNorm(x))`` (in the places of the mixer and of the MLP), as the Mamba paper pairs
  two of its blocks to match one Transformer layer's 12 d^2 parameters: a size preset of 24 layers is the paper's
  48-block Mamba.  Its fields: ``ssm_state_size`` (N, 16), ``ssm_expand`` (2), ``dt_rank`` (ceil(hidden / 16)),
  ``dt_min``/``dt_max`` (the dt initialisation range), ``conv_size`` (4); the head and attention fields are unused.

Derived fields (``head_dim``, ``intermediate_size``, ``attn_layers``, ``attn_window``, ``dt_rank``) may be left ``None``; they are
resolved in ``__post_init__`` so that ``dataclasses.asdict(config)`` round-trips through ``DeltaNetConfig(**d)``.
Invalid values raise ``ValueError`` naming the field.

Paper sizes are written once, in ``conf/model/size/<name>.yaml`` (Hydra: ``model/size=340M``); :data:`PRESETS` reads
them from there for ``DeltaNetConfig.from_preset("340M", family="deltanet")``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

__all__ = ["DeltaNetConfig", "PRESETS", "FAMILIES"]

FAMILIES = ("deltanet", "deltanet_hybrid_swa", "deltanet_hybrid_global", "transformer", "mamba", "gated_deltanet",
            "gated_deltanet_hybrid_swa", "retnet", "gla")

SIZES_DIR = Path(__file__).resolve().parents[1] / "conf" / "model" / "size"


def _read_presets(directory: Path) -> dict[str, dict[str, Any]]:
    """``{"340M": {"hidden_size": 1024, ...}, ...}`` from ``<directory>/<name>.yaml``: the Hydra size group is the one
    place the paper sizes are written, and the Python API reads the same files (empty when the repository's conf/
    is not beside the package, e.g. a non-editable install: then ``from_preset`` says where it looked)."""
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted(directory.glob("*.yaml"))}


# Paper sizes (vocabulary 32000, Mistral tokenizer): "340M" and "1.3B", head_dim = hidden_size // num_heads = 128.
PRESETS: dict[str, dict[str, Any]] = _read_presets(SIZES_DIR)


def _llama_intermediate_size(hidden_size: int, multiple_of: int = 256) -> int:
    """SwiGLU width as in Llama: 2/3 of 4 * hidden, rounded up to a multiple of 256 (1024 -> 2816)."""
    n = int(2 * 4 * hidden_size / 3)
    return multiple_of * ((n + multiple_of - 1) // multiple_of)


@dataclass
class DeltaNetConfig:
    # --- sizes ---
    vocab_size: int = 32000
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    head_dim: Optional[int] = None  # default hidden_size // num_heads (keys and values alike)
    intermediate_size: Optional[int] = None  # SwiGLU width; default Llama sizing of hidden_size
    # --- family / hybrids ---
    family: str = "deltanet"
    attn_layers: Optional[list[int]] = None  # 1-based indices of softmax-attention layers; None = family default
    attn_window: Optional[int] = None  # sliding window (tokens, including the current one); None = global
    rope_theta: float = 10000.0
    # --- DeltaNet mixer (paper ablations) ---
    qk_norm: str = "l2"  # "l2" | "l1"
    qk_activation: str = "silu"  # feature map on q, k: "silu" | "relu" | "elu" (elu + 1) | "identity"
    use_short_conv: bool = True
    conv_size: int = 4
    use_beta: bool = True  # False: beta = 1 (plain delta rule with unit step)
    use_output_gate: bool = False  # o = RMSNorm(o) * silu(W_g x)
    chunk_size: int = 64  # 16 | 32 | 64
    backend: str = "auto"  # "auto" (triton on CUDA, torch on CPU) | "triton" | "torch"
    # Fused Triton glue (short conv + activation + L2 norm, RMSNorm with residual add / output gate, SwiGLU tail)
    # wherever the backend resolves to triton; False keeps the plain PyTorch layers there too (same math).
    fused: bool = True
    # With the fused glue: the backward recomputes the short convolutions' outputs (q, k, v) from the projection
    # instead of keeping them (three activations per layer less); False keeps them.
    recompute_conv: bool = True
    # --- RetNet (family "retnet") ---
    retnet_norm: str = "group"  # per-head output norm: "group" (the paper's GroupNorm, one group per head) | "rms"
    retnet_value_factor: int = 2  # value head dim = factor * head_dim: 2 (the paper's) | 1
    # --- Mamba (family "mamba") ---
    ssm_state_size: int = 16  # N, the state size per channel
    ssm_expand: int = 2  # inner channels = ssm_expand * hidden_size
    dt_rank: Optional[int] = None  # rank of the dt projection; default ceil(hidden_size / 16)
    dt_min: float = 0.001  # initial dt is log-uniform in [dt_min, dt_max]
    dt_max: float = 0.1
    # --- misc ---
    norm_eps: float = 1e-6
    initializer_range: float = 0.02
    loss_chunk_size: int = 4096  # tokens per chunk of the chunked cross-entropy (bounds the logits memory)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "conv_size", "loss_chunk_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.chunk_size not in (16, 32, 64):
            raise ValueError(f"chunk_size must be 16, 32 or 64 (the Triton chunk kernel's sizes), got {self.chunk_size!r}")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size} (or set head_dim)")
            self.head_dim = self.hidden_size // self.num_heads
        if isinstance(self.head_dim, bool) or not isinstance(self.head_dim, int) or self.head_dim < 1:
            raise ValueError(f"head_dim must be a positive int, got {self.head_dim!r}")
        if self.family not in ("deltanet", "mamba", "gated_deltanet") and self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE attention, got {self.head_dim}")
        if self.retnet_norm not in ("group", "rms"):
            raise ValueError(f"retnet_norm must be 'group' or 'rms', got {self.retnet_norm!r}")
        v = self.retnet_value_factor
        if isinstance(v, bool) or not isinstance(v, int) or v not in (1, 2):
            raise ValueError(f"retnet_value_factor must be 1 or 2 (value head dim = factor * head_dim), "
                             f"got {self.retnet_value_factor!r}")
        if self.intermediate_size is None:
            self.intermediate_size = _llama_intermediate_size(self.hidden_size)
            if self.family == "retnet":  # the wider value path's weights come out of the FFN (module docstring)
                self.intermediate_size -= (self.retnet_value_factor - 1) * self.num_heads * self.head_dim
                if self.intermediate_size < 1:
                    raise ValueError(
                        f"intermediate_size: the RetNet default (Llama width less (retnet_value_factor - 1) * "
                        f"num_heads * head_dim = {self.intermediate_size}) is not positive; set intermediate_size")
        if isinstance(self.intermediate_size, bool) or not isinstance(self.intermediate_size, int) \
                or self.intermediate_size < 1:
            raise ValueError(f"intermediate_size must be a positive int, got {self.intermediate_size!r}")
        self._resolve_attention()
        self._resolve_mamba()
        if self.qk_norm not in ("l2", "l1"):
            raise ValueError(f"qk_norm must be 'l2' or 'l1', got {self.qk_norm!r}")
        if self.qk_activation not in ("silu", "relu", "elu", "identity"):
            raise ValueError(f"qk_activation must be one of silu, relu, elu, identity, got {self.qk_activation!r}")
        if self.backend not in ("auto", "triton", "torch"):
            raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {self.backend!r}")
        for name in ("use_short_conv", "use_beta", "use_output_gate", "fused", "recompute_conv"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("norm_eps", "initializer_range", "rope_theta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be a positive number, got {v!r}")

    def _resolve_attention(self) -> None:
        n = self.num_layers
        if self.attn_layers is None:
            if self.family in ("deltanet", "mamba", "gated_deltanet", "retnet", "gla"):
                layers: list[int] = []
            elif self.family == "transformer":
                layers = list(range(1, n + 1))
            elif self.family in ("deltanet_hybrid_swa", "gated_deltanet_hybrid_swa"):
                layers = list(range(2, n + 1, 2))  # every other layer: 2, 4, ...
            else:  # deltanet_hybrid_global: layers 2 and N/2 + 1, kept within the model
                layers = sorted({i for i in (2, n // 2 + 1) if i <= n})
        else:
            try:
                layers = [int(i) for i in self.attn_layers]  # accepts an omegaconf ListConfig
            except (TypeError, ValueError):
                raise ValueError(f"attn_layers must be a list of ints, got {self.attn_layers!r}") from None
            if any(not 1 <= i <= n for i in layers):
                raise ValueError(f"attn_layers are 1-based layer indices in [1, {n}], got {layers}")
            if len(set(layers)) != len(layers):
                raise ValueError(f"attn_layers has duplicates: {layers}")
            layers = sorted(layers)
            if self.family in ("deltanet", "mamba", "gated_deltanet", "retnet", "gla") and layers:
                raise ValueError(f"attn_layers must be empty for family {self.family!r}, got {layers}")
            if self.family == "transformer" and layers != list(range(1, n + 1)):
                raise ValueError(f"attn_layers must be all layers for family 'transformer', got {layers}")
        self.attn_layers = layers
        if self.family in ("deltanet_hybrid_swa", "gated_deltanet_hybrid_swa") and self.attn_window is None:
            self.attn_window = 2048
        if self.attn_window is not None:
            if isinstance(self.attn_window, bool) or not isinstance(self.attn_window, int) or self.attn_window < 1:
                raise ValueError(f"attn_window must be a positive int or None, got {self.attn_window!r}")

    def _resolve_mamba(self) -> None:
        if self.dt_rank is None:
            self.dt_rank = math.ceil(self.hidden_size / 16)
        for name in ("ssm_state_size", "ssm_expand", "dt_rank"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.ssm_state_size > 256:
            raise ValueError(f"ssm_state_size must be at most 256 (the scan kernel's limit), got {self.ssm_state_size}")
        for name in ("dt_min", "dt_max"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if self.dt_min > self.dt_max:
            raise ValueError(f"dt_min must be <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}")

    # --- helpers ---
    def resolve_backend(self, on_cuda: bool) -> str:
        """'triton' or 'torch': ``backend`` with 'auto' resolved by the device of the inputs."""
        return ("triton" if on_cuda else "torch") if self.backend == "auto" else self.backend

    def use_fused(self, on_cuda: bool) -> bool:
        """True when the fused Triton glue runs: ``fused`` and a backend that resolves to triton."""
        return self.fused and self.resolve_backend(on_cuda) == "triton"

    def is_attention_layer(self, layer_idx: int) -> bool:
        """0-based ``layer_idx``: True when that layer is softmax attention."""
        return (layer_idx + 1) in self.attn_layers

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "DeltaNetConfig":
        """The paper size ``name`` ("340M" or "1.3B", from conf/model/size/) with ``overrides`` (any other field)."""
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)} (the files of {SIZES_DIR}), got {name!r}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DeltaNetConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        if d.get("model_type") == "deltanet":  # a config.json for transformers (deltanet/hf.py): keep our fields
            d = {k: v for k, v in d.items() if k in names}
        unknown = sorted(set(d) - names - {"_target_"})
        if unknown:
            raise ValueError(f"unknown DeltaNetConfig fields: {unknown}")
        return cls(**{k: v for k, v in d.items() if k in names})

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:  # model_type: transformers' AutoConfig reads it (deltanet/hf.py)
            json.dump({"model_type": "deltanet", **self.to_dict()}, f, indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DeltaNetConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))
