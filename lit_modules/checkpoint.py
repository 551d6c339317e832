"""Loading a trained model for generation and evaluation, from either form a run leaves behind.

``load_model(path)`` accepts a Lightning ``.ckpt`` written by :class:`lit_modules.CausalLMModule` (state_dict keys
prefixed ``model.``, the model's config dict in ``hyper_parameters["model_config"]``) or a
:meth:`deltanet.DeltaNetForCausalLM.save_pretrained` directory.  It lives here, beside the LightningModule whose
checkpoint layout it reads, so that ``deltanet/`` knows nothing of training.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from deltanet import DeltaNetConfig, DeltaNetForCausalLM

__all__ = ["load_model"]


def load_model(ckpt_path: str | os.PathLike, map_location: str | torch.device = "cpu",
                        **config_overrides: Any):
    """Builds a :class:`DeltaNetForCausalLM` in eval mode from a Lightning ``.ckpt`` or a save_pretrained directory."""
    if os.path.isdir(ckpt_path):
        model = DeltaNetForCausalLM.from_pretrained(ckpt_path, map_location=map_location, **config_overrides)
        return model.eval()
    ckpt = torch.load(ckpt_path, map_location=map_location, weights_only=False)  # a local, trusted training file
    try:
        cfg = dict(ckpt["hyper_parameters"]["model_config"])
    except (KeyError, TypeError):
        raise ValueError(f"{ckpt_path}: no hyper_parameters['model_config'] in this checkpoint") from None
    model = DeltaNetForCausalLM(DeltaNetConfig.from_dict({**cfg, **config_overrides}))
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{ckpt_path}: no state_dict keys start with {prefix!r}")
    model.load_state_dict(state)
    return model.to(map_location).eval()
