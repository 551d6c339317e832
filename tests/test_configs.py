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
