"""`lit_modules.checkpoint.load_model` reads both forms a run leaves: a save_pretrained directory and a Lightning .ckpt."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from deltanet import DeltaNetConfig, DeltaNetForCausalLM
from lit_modules.checkpoint import load_model


def test_load_model_from_directory_and_lightning_ckpt(tmp_path):
    torch.manual_seed(16)
    cfg = DeltaNetConfig(vocab_size=97, hidden_size=32, num_layers=3, num_heads=2, family="deltanet_hybrid_global",
                         attn_layers=[1, 3], qk_norm="l1", backend="torch")
    model = DeltaNetForCausalLM(cfg).eval()
    x = torch.randint(0, 97, (2, 12))
    ref = model(x).logits
    model.save_pretrained(tmp_path / "pt")
    assert torch.equal(load_model(tmp_path / "pt")(x).logits, ref)
    # a Lightning checkpoint as lit_modules.CausalLMModule writes it
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"model_config": dataclasses.asdict(cfg)}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    m2 = load_model(tmp_path / "last.ckpt")
    assert not m2.training and m2.config == cfg
    assert torch.equal(m2(x).logits, ref)


def test_load_model_rejects_a_checkpoint_without_model_config(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="model_config"):
        load_model(tmp_path / "bad.ckpt")
