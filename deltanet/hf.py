"""Hugging Face ``transformers`` classes over the project's model: ``AutoConfig`` / ``AutoModelForCausalLM`` with
``model_type = "deltanet"``, registered on import of this module.

    import deltanet.hf  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained("<a DeltaNetForCausalLM.save_pretrained directory>")
    out = model.generate(input_ids, max_new_tokens=32, do_sample=False)  # HF generation over our state / caches

The wrapper holds the same modules under the same names as :class:`deltanet.DeltaNetForCausalLM` (``model.*``,
``lm_head.weight``), so one ``model.safetensors`` serves both, and its logits are those of our model.
:func:`export_hf` writes a directory for tools that load it in a fresh process without importing the project first
(lm-eval's ``--model hf ... trust_remote_code=True``): ``auto_map`` stubs that import this module, and the tokenizer.

Generation: the delta-rule states, conv states and KV caches of :class:`deltanet.model.Cache` travel in the model
kwarg ``deltanet_cache`` (transformers' own ``Cache`` classes hold only attention keys and values); after the prompt
only the newest token is fed, and a left-padded prompt needs its ``attention_mask`` only in that first pass.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .config import DeltaNetConfig
from .layers.attention import RotaryEmbedding
from .model import Cache, DeltaNetForCausalLM, chunked_cross_entropy, left_padding

__all__ = ["DeltaNetHFConfig", "DeltaNetHFForCausalLM", "DeltaNetHFOutput", "export_hf"]

_FIELDS = [f.name for f in dataclasses.fields(DeltaNetConfig)]


class DeltaNetHFConfig(PretrainedConfig):
    """Every :class:`deltanet.DeltaNetConfig` field as an attribute (validated by building one), plus HF's own."""

    model_type = "deltanet"

    def __init__(self, **kwargs: Any):
        ours = {k: kwargs.pop(k) for k in _FIELDS if k in kwargs}
        resolved = DeltaNetConfig(**ours).to_dict()  # ValueError naming the field on bad values
        for k, v in resolved.items():
            setattr(self, k, v)
        kwargs.setdefault("bos_token_id", 1)  # Mistral's tokenizer: BOS 1, EOS 2, no pad
        kwargs.setdefault("eos_token_id", 2)
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    def to_deltanet_config(self) -> DeltaNetConfig:
        return DeltaNetConfig(**{k: getattr(self, k) for k in _FIELDS})

    @classmethod
    def from_deltanet_config(cls, config: DeltaNetConfig, **kwargs: Any) -> "DeltaNetHFConfig":
        return cls(**config.to_dict(), **kwargs)


@dataclass
class DeltaNetHFOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None  # scalar mean next-token cross-entropy (with labels)
    logits: Optional[torch.Tensor] = None  # (B, T, V)
    deltanet_cache: Optional[Cache] = None


class DeltaNetHFForCausalLM(PreTrainedModel, GenerationMixin):
    """``forward(input_ids (B, T) long, attention_mask (B, T) = None, labels (B, T) = None, deltanet_cache=None,
    use_cache=False)`` -> :class:`DeltaNetHFOutput` with logits (B, T, V) (float32 at float32 weights)."""

    config_class = DeltaNetHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _supports_cache_class = False

    def __init__(self, config: DeltaNetHFConfig):
        super().__init__(config)
        inner = DeltaNetForCausalLM(config.to_deltanet_config())  # our init, our module names
        self.model, self.lm_head = inner.model, inner.lm_head
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Weights come from DeltaNetForCausalLM's own init (in __init__) or from the checkpoint."""

    @torch.no_grad()
    def _reset_buffers(self) -> None:
        """Recomputes RoPE's ``inv_freq``: a non-persistent buffer, which transformers' loading (modules built on the
        meta device) leaves uninitialised."""
        for m in self.modules():
            if isinstance(m, RotaryEmbedding):
                fresh = RotaryEmbedding(m.dim, self.config.rope_theta).inv_freq
                m.inv_freq = fresh.to(m.inv_freq.device if m.inv_freq.device.type != "meta" else "cpu")

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any):
        model = super().from_pretrained(*args, **kwargs)
        model._reset_buffers()
        return model

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # our Cache object, not transformers' DynamicCache

    @classmethod
    def from_deltanet(cls, model: DeltaNetForCausalLM) -> "DeltaNetHFForCausalLM":
        """An HF model holding a copy of ``model``'s weights."""
        hf = cls(DeltaNetHFConfig.from_deltanet_config(model.config))
        hf.load_state_dict(model.state_dict())
        return hf.to(next(model.parameters()).device).eval()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embeddings

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, deltanet_cache: Optional[Cache] = None,
                use_cache: Optional[bool] = None, return_dict: Optional[bool] = None, **kwargs: Any):
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, T), got {tuple(input_ids.shape)}")
        pad = left_padding(attention_mask, input_ids, deltanet_cache)
        h, cache = self.model(input_ids, cache=deltanet_cache, use_cache=bool(use_cache), pad=pad)  # (B, T, C)
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(f"labels must match input_ids {tuple(input_ids.shape)}, got {tuple(labels.shape)}")
            shift = labels[:, 1:]
            if pad is not None:
                shift = shift.masked_fill(pad[:, 1:], -100)
            loss = chunked_cross_entropy(h[:, :-1].reshape(-1, h.shape[-1]), self.lm_head.weight, shift.reshape(-1),
                                         self.config.loss_chunk_size)
        return DeltaNetHFOutput(loss=loss, logits=self.lm_head(h), deltanet_cache=cache)

    # ---- transformers' generate ----
    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                                      deltanet_cache: Optional[Cache] = None, use_cache: Optional[bool] = True,
                                      **kwargs: Any) -> dict[str, Any]:
        if deltanet_cache is not None:  # the state holds the prompt: feed the newest token only, with no mask
            return {"input_ids": input_ids[:, -1:], "deltanet_cache": deltanet_cache, "use_cache": True}
        return {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": use_cache is not False}

    def _update_model_kwargs_for_generation(self, outputs: ModelOutput, model_kwargs: dict[str, Any],
                                            *args: Any, **kwargs: Any) -> dict[str, Any]:
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        model_kwargs["deltanet_cache"] = outputs.get("deltanet_cache")
        return model_kwargs


AutoConfig.register(DeltaNetHFConfig.model_type, DeltaNetHFConfig, exist_ok=True)
AutoModelForCausalLM.register(DeltaNetHFConfig, DeltaNetHFForCausalLM, exist_ok=True)

_STUB = '''"""Loads the DeltaNet classes of the installed `deltanet` package (pip install deltanet)."""
from deltanet.hf import DeltaNetHFConfig, DeltaNetHFForCausalLM  # noqa: F401
'''


def _mistral_tokenizer_file() -> Path:
    """mistral-common's tokenizer.model.v1 (the training default), found without importing the package."""
    import importlib.util
    spec = importlib.util.find_spec("mistral_common")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "data" / "tokenizer.model.v1"
        if path.is_file():
            return path
    raise FileNotFoundError("no tokenizer given and mistral-common's data/tokenizer.model.v1 is not installed")


def export_hf(model: DeltaNetForCausalLM | DeltaNetHFForCausalLM, out_dir: str | os.PathLike,
              tokenizer_path: str | os.PathLike | None = None) -> Path:
    """Writes an HF directory: config.json (model_type ``deltanet``, ``auto_map`` to stubs importing this module),
    model.safetensors, and the tokenizer (a SentencePiece ``.model`` as ``tokenizer.model`` with a Llama tokenizer
    config, or a ``tokenizer.json``; None = Mistral's, the training default).

    It loads with ``AutoModelForCausalLM.from_pretrained(dir)`` after ``import deltanet.hf``, and with
    ``trust_remote_code=True`` in a process that has not imported it (lm-eval's ``--model hf``).
    """
    out = Path(out_dir)
    hf = model if isinstance(model, DeltaNetHFForCausalLM) else DeltaNetHFForCausalLM.from_deltanet(model)
    hf.config.auto_map = {"AutoConfig": "configuration_deltanet.DeltaNetHFConfig",
                          "AutoModelForCausalLM": "modeling_deltanet.DeltaNetHFForCausalLM"}
    hf.config.architectures = [DeltaNetHFForCausalLM.__name__]
    hf.save_pretrained(out)
    for name in ("configuration_deltanet.py", "modeling_deltanet.py"):
        (out / name).write_text(_STUB)
    if tokenizer_path is None:
        tokenizer_path = _mistral_tokenizer_file()
    tokenizer_path = Path(tokenizer_path)
    if tokenizer_path.suffix == ".json":
        shutil.copyfile(tokenizer_path, out / "tokenizer.json")
        tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>"}
    else:
        shutil.copyfile(tokenizer_path, out / "tokenizer.model")
        tok_cfg = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                   "add_bos_token": True, "add_eos_token": False, "legacy": True}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    return out
