"""Every paper run (one experiment per size, the family picked by `model=`) carries the paper's numbers, and they turn
into the paper's batch and schedule on 8 GPUs."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lit_modules.recipe import apply_recipe
from tests.helpers import ROOT

FAMILIES = ["deltanet", "deltanet_hybrid_swa", "deltanet_hybrid_global", "transformer"]
# (hidden, layers, heads, global batch tokens, training tokens, warm-up tokens, optimizer steps, warm-up steps)
PAPER = {"340m_15b": (1024, 24, 8, 524_288, 15_000_000_000, 500_000_000, 28_610, 954),
         "1p3b_100b": (2048, 24, 16, 2_097_152, 100_000_000_000, 1_000_000_000, 47_684, 477)}
MICRO_BATCH = {"340m_15b": 8, "1p3b_100b": 4}  # sequences per GPU, chosen by memory, the same for every family


def compose_cfg(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("size", sorted(PAPER))
@pytest.mark.parametrize("family", FAMILIES)
def test_paper_run(family, size):
    hidden, layers, heads, gbt, train, warm, steps, warm_steps = PAPER[size]
    cfg = compose_cfg(f"experiment=paper_{size}", f"model={family}")
    assert cfg.model.family == family
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_heads, cfg.model.vocab_size) == \
        (hidden, layers, heads, 32000)
    assert cfg.data.seq_len == 2048 and "slimpajama" in cfg.data.cache_dir
    assert cfg.data.batch_size == MICRO_BATCH[size] and cfg.data.max_tokens.train == train
    assert (cfg.recipe.global_batch_tokens, cfg.recipe.train_tokens, cfg.recipe.warmup_tokens) == (gbt, train, warm)
    opt = cfg.optim.optimizer
    assert opt._target_ == "torch.optim.AdamW" and (opt.lr, list(opt.betas), opt.weight_decay) == (3e-4, [0.9, 0.95], 0.01)
    assert cfg.optim.scheduler.min_lr == 3e-5
    t = cfg.trainer
    assert (t.devices, t.precision, t.gradient_clip_val, t.gradient_clip_algorithm) == (8, "bf16-mixed", 1.0, "norm")
    assert "DDPStrategy" in t.strategy._target_

    plan = apply_recipe(cfg)  # as `python run.py experiment=paper_<size> model=<family>` derives it on 8 GPUs
    assert plan.tokens_per_step == gbt and (plan.max_steps, plan.warmup_steps) == (steps, warm_steps)
    assert cfg.trainer.max_steps == cfg.optim.scheduler.total_steps == steps
    assert cfg.optim.scheduler.warmup_steps == warm_steps
    assert 8 * cfg.data.batch_size * 2048 * cfg.trainer.accumulate_grad_batches == gbt


def test_paper_run_on_fewer_gpus_keeps_the_global_batch():
    cfg = compose_cfg("experiment=paper_340m_15b", "trainer.devices=2")
    plan = apply_recipe(cfg)
    assert (plan.accumulate, plan.tokens_per_step) == (16, 524_288)


def test_ablation_is_small_and_sweepable():
    cfg = compose_cfg("experiment=ablation_small", "model.qk_norm=l1", "model.qk_activation=elu",
                      "model.use_short_conv=false", "trainer.accelerator=cpu")
    plan = apply_recipe(cfg)
    assert (cfg.model.qk_norm, cfg.model.qk_activation, cfg.model.use_short_conv) == ("l1", "elu", False)
    assert plan.tokens_per_step == 8192 and plan.max_steps == 244 and cfg.data._target_.endswith("PackedLMDataModule")
