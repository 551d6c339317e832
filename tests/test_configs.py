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
    "initializer_range": 0.02, "loss_chunk_size": 4096,
    "ssm_state_size": 16, "ssm_expand": 2, "dt_rank": None, "dt_min": 0.001, "dt_max": 0.1,  # Mamba's fields (new)
    "fused": True, "recompute_conv": True,  # the fused-glue switches (new)
    "retnet_norm": "group", "retnet_value_factor": 2}  # RetNet's published design (new)
RECORDED_FAMILY = {
    "deltanet": {},
    "deltanet_hybrid_swa": {"family": "deltanet_hybrid_swa", "attn_window": 2048},
    "deltanet_hybrid_global": {"family": "deltanet_hybrid_global"},
    "transformer": {"family": "transformer"},
    "mamba": {"family": "mamba"},  # new family
    # families added after the move, written as a few lines from the start
    "gated_deltanet": {"family": "gated_deltanet"},
    "gated_deltanet_hybrid_swa": {"family": "gated_deltanet_hybrid_swa", "attn_window": 2048},
    "retnet": {"family": "retnet"},
    "gla": {"family": "gla"},
}
# The paper sizes as the old experiment YAMLs and deltanet/config.py PRESETS wrote them.
RECORDED_SIZES = {"340M": {"hidden_size": 1024, "num_layers": 24, "num_heads": 8},
                  "1.3B": {"hidden_size": 2048, "num_layers": 24, "num_heads": 16}}


def test_model_options_are_the_recorded_families():
    assert options("model") == sorted(RECORDED_FAMILY)
    assert options("model/size") == sorted(RECORDED_SIZES)


@pytest.mark.parametrize("size", [None, *sorted(RECORDED_SIZES)])
@pytest.mark.parametrize("family", sorted(RECORDED_FAMILY))
def test_model_composes_to_the_recorded_values(family, size, tmp_path):
    overrides = [f"model={family}"] + ([f"model/size={size}"] if size else [])
    cfg = compose_cfg(overrides, tmp_path)
    expected = {**RECORDED_BASE, **RECORDED_FAMILY[family], **RECORDED_SIZES.get(size, {})}
    assert OmegaConf.to_container(cfg.model, resolve=True) == expected


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


def test_paper_sizes_are_written_once():
    """The size group is the only config that sets a paper size; the Python presets read the same files."""
    from deltanet import PRESETS

    assert PRESETS == RECORDED_SIZES
    sized = []
    for path in sorted(CONF.rglob("*.yaml")):
        text = path.read_text()
        if path.parent == CONF / "model" / "size":
            continue
        for value in (1024, 2048):
            if f"hidden_size: {value}" in text:
                sized.append(str(path.relative_to(CONF)))
    assert not sized, f"paper sizes written outside conf/model/size/: {sized}"


@pytest.mark.parametrize("order", ["model first", "experiment first"])
def test_model_on_the_command_line_picks_the_family_and_the_experiment_its_size(order, tmp_path):
    pair = ["model=transformer", "experiment=paper_1p3b_100b"]
    cfg = compose_cfg(pair if order == "model first" else pair[::-1], tmp_path)
    assert (cfg.model.family, cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_heads) == \
        ("transformer", 2048, 24, 16)
    assert cfg.hydra.runtime.choices["model"] == "transformer"
    assert cfg.hydra.runtime.choices["model/size"] == "1.3B"


def test_field_overrides_win_over_the_size_and_the_family(tmp_path):
    cfg = compose_cfg(["experiment=paper_340m_15b", "model=deltanet_hybrid_swa", "model.num_layers=12",
                       "model.attn_window=512"], tmp_path)
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.attn_window) == (1024, 12, 512)


def test_experiment_without_model_trains_deltanet(tmp_path):
    for experiment in ("paper_340m_15b", "paper_1p3b_100b", "ablation_small", "smoke"):
        assert compose_cfg([f"experiment={experiment}"], tmp_path).model.family == "deltanet"


def test_mad_heads_follow_each_familys_mad_lab_config(tmp_path):
    """experiment=mad: attention 16 heads of 8, GLA 8 of 16, the delta-rule families and RetNet 4 of 32 at width 128
    (conf/experiment/mad.yaml); model.num_heads on the command line still wins."""
    want = {"transformer": 16, "gla": 8, "deltanet": 4, "gated_deltanet": 4, "retnet": 4, "deltanet_hybrid_swa": 4}
    for family, heads in want.items():
        cfg = compose_cfg(["experiment=mad", f"model={family}"], tmp_path)
        assert (cfg.model.hidden_size, cfg.model.num_heads) == (128, heads), family
    assert compose_cfg(["experiment=mad", "model=deltanet", "model.num_heads=16"], tmp_path).model.num_heads == 16
