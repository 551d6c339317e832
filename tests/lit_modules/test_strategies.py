"""trainer=ddp / trainer=fsdp build the strategies they document (construction only: running them needs GPUs)."""
from __future__ import annotations

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from deltanet.model import Block
from tests.helpers import ROOT


def strategy_of(trainer: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"trainer={trainer}"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.max_steps == 120  # the rest inherited from default.yaml
    return instantiate(cfg.trainer.strategy)


def test_fsdp_wraps_each_block_in_bf16_with_fp32_reduction():
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    s = strategy_of("fsdp")
    assert isinstance(s, FSDPStrategy)
    mp = s.mixed_precision_config
    assert (mp.param_dtype, mp.reduce_dtype, mp.buffer_dtype) == (torch.bfloat16, torch.float32, torch.float32)
    assert s.kwargs["use_orig_params"] is True and s.sharding_strategy.name == "FULL_SHARD"
    policy = s.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and policy._module_classes == {Block}


def test_ddp_strategy():
    from lightning.pytorch.strategies import DDPStrategy

    s = strategy_of("ddp")
    assert isinstance(s, DDPStrategy) and s._ddp_kwargs == {"find_unused_parameters": False, "static_graph": False}


def test_fsdp_clips_through_fsdp_and_ddp_through_lightning():
    """Lightning's FSDPPrecision refuses norm clipping: under FSDP the module calls the root FSDP's clip_grad_norm_."""
    from functools import partial
    from types import SimpleNamespace

    from deltanet import DeltaNetConfig
    from lit_modules import CausalLMModule

    calls = []
    module = CausalLMModule(DeltaNetConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2),
                            optimizer=partial(torch.optim.AdamW, lr=1e-3))
    fsdp = strategy_of("fsdp")
    fsdp._model = SimpleNamespace(clip_grad_norm_=lambda v: calls.append(("fsdp", v)))
    module._trainer = SimpleNamespace(strategy=fsdp)
    module.clip_gradients = lambda opt, v, alg: calls.append(("lightning", v, alg))
    module.configure_gradient_clipping(None, 1.0, "norm")
    module._trainer = SimpleNamespace(strategy=strategy_of("ddp"))
    module.configure_gradient_clipping(None, 1.0, "norm")
    assert calls == [("fsdp", 1.0), ("lightning", 1.0, "norm")]
