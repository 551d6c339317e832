"""Every config group option and every experiment composes, resolves and instantiates its cheap parts."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(overrides: list[str], tmp_path: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
        OmegaConf.set_readonly(cfg.hydra, False)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path)  # what a real run's `${hydra:runtime.output_dir}` gives
        HydraConfig.instance().set_config(cfg)
        for key in cfg:  # every interpolation outside Hydra's own node must resolve
            if key != "hydra":
                OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
    return cfg


def test_groups_exist():
    for group in ["model", "data", "optim", "trainer", "callbacks", "logger", "paths", "hydra", "experiment"]:
        assert options(group), f"conf/{group}/ has no options"


@pytest.mark.parametrize("model", options("model"))
def test_model_configs_compose_and_build_config(model, tmp_path):
    cfg = compose_cfg([f"model={model}"], tmp_path)
    model_config = instantiate(cfg.model)
    assert model_config.vocab_size == 32000


@pytest.mark.parametrize("data", options("data"))
def test_data_configs_compose(data, tmp_path):
    cfg = compose_cfg([f"data={data}"], tmp_path)
    for key in ("batch_size", "seq_len", "num_workers"):
        assert key in cfg.data, f"conf/data/{data}.yaml lacks {key}"


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments_compose(experiment, tmp_path):
    cfg = compose_cfg([f"experiment={experiment}"], tmp_path)
    instantiate(cfg.model)
    assert cfg.trainer.max_steps > 0


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_configs_compose(trainer, tmp_path):
    cfg = compose_cfg([f"trainer={trainer}"], tmp_path)
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"


# What conf/model/<family>.yaml composed to when each family was a full copy of every field (recorded from those files
# before they became a few lines on top of deltanet.yaml): one base, and the only lines in which the copies differed.
RECORDED_BASE = {
    "_target_": "deltanet.DeltaNetConfig", "family": "deltanet", "vocab_size": 32000, "hidden_size": 256,
    "num_layers": 4, "num_heads": 4, "head_dim": None, "intermediate_size": None, "attn_layers": None,
    "attn_window": None, "rope_theta": 10000.0, "qk_norm": "l2", "qk_activation": "silu", "use_short_conv": True,
    "conv_size": 4, "use_beta": True, "use_output_gate": False, "chunk_size": 64, "backend": "auto", "norm_eps": 1e-6,
    "initializer_range": 0.02, "loss_chunk_size": 4096}
RECORDED_FAMILY = {
    "deltanet": {},
    "deltanet_hybrid_swa": {"family": "deltanet_hybrid_swa", "attn_window": 2048},
    "deltanet_hybrid_global": {"family": "deltanet_hybrid_global"},
    "transformer": {"family": "transformer"},
}


def test_model_options_are_the_recorded_families():
    assert options("model") == sorted(RECORDED_FAMILY)


@pytest.mark.parametrize("family", sorted(RECORDED_FAMILY))
def test_model_composes_to_the_recorded_values(family, tmp_path):
    cfg = compose_cfg([f"model={family}"], tmp_path)
    assert OmegaConf.to_container(cfg.model, resolve=True) == {**RECORDED_BASE, **RECORDED_FAMILY[family]}


def test_families_state_only_what_differs():
    """deltanet.yaml holds every DeltaNetConfig field; each other family is `defaults: [deltanet, _self_]` + its lines."""
    import dataclasses

    from deltanet import DeltaNetConfig

    base = OmegaConf.load(CONF / "model" / "deltanet.yaml")
    fields = {f.name for f in dataclasses.fields(DeltaNetConfig)}
    assert set(base) - {"defaults", "_target_"} == fields
    for family in set(RECORDED_FAMILY) - {"deltanet"}:
        own = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{family}.yaml"))
        assert own.pop("defaults") == ["deltanet", "_self_"], family
        assert own == {k: v for k, v in RECORDED_FAMILY[family].items()}, family
