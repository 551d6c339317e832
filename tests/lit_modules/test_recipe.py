"""The token-based recipe: accumulation and step counts derived exactly, bad configs refused at start by name."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lit_modules.recipe import RecipeError, apply_recipe, plan_batch, world_size
from tests.helpers import ROOT


def compose_cfg(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("ws,micro,seq,accum", [(8, 16, 2048, 2), (8, 8, 2048, 4), (2, 4, 2048, 32), (1, 1, 2048, 256),
                                                 (16, 32, 1024, 1)])
def test_accumulation_makes_the_global_batch_exact(ws, micro, seq, accum):
    plan = plan_batch(world_size=ws, micro_batch_size=micro, seq_len=seq, global_batch_tokens=2**19,
                      train_tokens=15e9, warmup_tokens=0.5e9)
    assert plan.accumulate == accum
    assert plan.tokens_per_step == 2**19 == ws * micro * seq * plan.accumulate
    assert plan.max_steps == round(15e9 / 2**19) == 28610
    assert plan.warmup_steps == round(0.5e9 / 2**19) == 954
    text = plan.describe()
    assert f"{ws} device(s) x {micro} sequences x {seq} tokens x {accum} accumulation" in text and "28610 steps" in text


def test_step_based_plan_passes_values_through():
    plan = plan_batch(world_size=1, micro_batch_size=4, seq_len=64, max_steps=20, warmup_steps=4, accumulate=3)
    assert (plan.accumulate, plan.max_steps, plan.warmup_steps, plan.tokens_per_step) == (3, 20, 4, 3 * 4 * 64)


def test_indivisible_global_batch_names_the_values_to_change():
    with pytest.raises(RecipeError) as e:
        plan_batch(world_size=8, micro_batch_size=12, seq_len=2048, global_batch_tokens=2**19, train_tokens=1e9)
    msg = str(e.value)
    assert "recipe.global_batch_tokens=524,288" in msg and "data.batch_size=12" in msg
    assert "data.batch_size=8" in msg  # the largest micro-batch <= 12 that divides it
    assert "589,824" in msg  # the next multiple of 8 x 12 x 2048


@pytest.mark.parametrize("kwargs,needle", [
    (dict(global_batch_tokens=2**19, train_tokens=None), "recipe.train_tokens is null"),
    (dict(global_batch_tokens=2**19, train_tokens=2**18), "less than one global batch"),
    (dict(global_batch_tokens=2**19, train_tokens=1e9, warmup_tokens=2e9), "recipe.warmup_tokens"),
    (dict(global_batch_tokens=None, train_tokens=1e9, max_steps=10), "need recipe.global_batch_tokens"),
    (dict(global_batch_tokens=None, max_steps=10, warmup_steps=11), "optim.scheduler.warmup_steps=11"),
    (dict(global_batch_tokens=0, train_tokens=1e9), "recipe.global_batch_tokens must be a positive"),
])
def test_impossible_plans_fail_with_the_field_name(kwargs, needle):
    with pytest.raises(RecipeError, match=needle.replace(".", r"\.")):
        plan_batch(world_size=1, micro_batch_size=1, seq_len=2048, **kwargs)


def test_world_size_resolution():
    assert world_size({"devices": 8, "num_nodes": 4}, cuda_devices=8) == 32
    assert world_size({"devices": "auto", "accelerator": "gpu"}, cuda_devices=4) == 4
    assert world_size({"devices": -1, "accelerator": "auto"}, cuda_devices=0) == 1  # CPU
    assert world_size({"devices": [0, 2]}, cuda_devices=4) == 2
    assert world_size({"devices": "0,1,3", "num_nodes": 2}, cuda_devices=4) == 6


def test_apply_recipe_writes_trainer_and_schedule():
    cfg = compose_cfg("trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=4", "data.seq_len=128",
                      "recipe.global_batch_tokens=4096", "recipe.train_tokens=409600", "recipe.warmup_tokens=40960",
                      "recipe.val_every_steps=10")
    plan = apply_recipe(cfg)
    assert (plan.accumulate, plan.max_steps, plan.warmup_steps) == (4, 100, 10)
    assert cfg.trainer.accumulate_grad_batches == 4 and cfg.trainer.max_steps == 100
    assert cfg.optim.scheduler.warmup_steps == 10 and cfg.optim.scheduler.total_steps == 100  # interpolated
    assert cfg.trainer.val_check_interval == 40  # Lightning counts micro-batches


def test_apply_recipe_refuses_other_bad_configs():
    with pytest.raises(RecipeError, match="trainer=fsdp needs CUDA"):
        apply_recipe(compose_cfg("trainer=fsdp", "trainer.accelerator=cpu"))
    with pytest.raises(RecipeError, match=r"optim\.scheduler\.min_lr"):
        apply_recipe(compose_cfg("optim.optimizer.lr=1e-5"))
    with pytest.raises(RecipeError, match=r"lit_module\.max_bad_steps"):
        apply_recipe(compose_cfg("lit_module.max_bad_steps=0"))
