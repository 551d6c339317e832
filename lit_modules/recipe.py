"""The token-based training recipe: derive accumulation, steps and warm-up from token counts, and refuse bad configs.

The paper gives its recipe in tokens (batch 0.5M tokens, 15B training tokens, 0.5B warm-up tokens); Lightning counts
micro-batches and optimizer steps. :func:`apply_recipe` turns the one into the other, in place on the composed Hydra
config, before anything is built::

    accumulate   = global_batch_tokens / (world_size * data.batch_size * data.seq_len)     (must be a whole number)
    max_steps    = round(train_tokens  / global_batch_tokens)
    warmup_steps = round(warmup_tokens / global_batch_tokens)

so the global batch is exact for any number of devices, and the schedule (a function of the optimizer step) is a
function of tokens seen. With ``recipe.global_batch_tokens: null`` nothing is derived: the step-based values in
``trainer`` / ``optim.scheduler`` are used as written (``experiment=smoke``).

Every check raises :class:`RecipeError` at start with the values to change, not an error minutes into the run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, open_dict

__all__ = ["RecipeError", "BatchPlan", "world_size", "plan_batch", "apply_recipe", "validate_config"]


class RecipeError(ValueError):
    """A configuration that cannot work; the message names the values to change."""


@dataclass(frozen=True)
class BatchPlan:
    world_size: int
    micro_batch_size: int  # sequences per device per forward pass (data.batch_size)
    seq_len: int
    accumulate: int  # micro-batches per optimizer step on each device
    max_steps: int
    warmup_steps: int
    global_batch_tokens: int | None = None  # None: step-based run, nothing derived
    train_tokens: int | None = None
    warmup_tokens: int | None = None

    @property
    def tokens_per_step(self) -> int:
        return self.world_size * self.micro_batch_size * self.seq_len * self.accumulate

    def describe(self) -> str:
        per = (f"{self.world_size} device(s) x {self.micro_batch_size} sequences x {self.seq_len} tokens"
               f" x {self.accumulate} accumulation step(s) = {self.tokens_per_step:,} tokens per optimizer step")
        if self.global_batch_tokens is None:
            return (f"Batch (step-based, recipe.global_batch_tokens=null): {per}; {self.max_steps} steps"
                    f" ({self.max_steps * self.tokens_per_step / 1e6:.2f}M tokens), warm-up {self.warmup_steps} steps")
        return (f"Batch: global {self.global_batch_tokens:,} tokens = {per}; "
                f"{self.max_steps} steps for {self.train_tokens / 1e9:g}B tokens "
                f"({self.max_steps * self.tokens_per_step / 1e9:.4f}B trained), "
                f"warm-up {self.warmup_steps} steps for {self.warmup_tokens / 1e9:g}B tokens")


def world_size(trainer_cfg: Any, cuda_devices: int | None = None) -> int:
    """Processes that train together: devices per node x num_nodes (resolving `auto` / -1 like Lightning does)."""
    devices = trainer_cfg.get("devices", 1)
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if cuda_devices is None:
        import torch

        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda_devices > 0)
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if devices in ("auto", -1):
        n = cuda_devices if on_gpu else 1
    elif isinstance(devices, int):
        n = devices
    elif isinstance(devices, str):  # "0,1" means the listed GPUs
        n = len([d for d in devices.split(",") if d.strip()])
    else:
        n = len(list(devices))
    nodes = int(trainer_cfg.get("num_nodes", 1) or 1)
    if n < 1 or nodes < 1:
        raise RecipeError(f"trainer.devices={devices!r} x trainer.num_nodes={nodes} gives no process to train on")
    return n * nodes


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise RecipeError(f"{name} must be a positive whole number, got {value!r}")
    return int(value)


def plan_batch(*, world_size: int, micro_batch_size: int, seq_len: int, global_batch_tokens: int | float | None = None,
               train_tokens: int | float | None = None, warmup_tokens: int | float | None = None,
               max_steps: int | None = None, warmup_steps: int | None = None, accumulate: int = 1) -> BatchPlan:
    """Derive the accumulation and the step counts; without `global_batch_tokens`, pass the step-based values through."""
    micro_batch_size = _positive_int("data.batch_size", micro_batch_size)
    seq_len = _positive_int("data.seq_len", seq_len)
    if global_batch_tokens is None:
        if train_tokens is not None or warmup_tokens is not None:
            raise RecipeError("recipe.train_tokens / recipe.warmup_tokens need recipe.global_batch_tokens: set it, "
                              "or set both token counts to null and use trainer.max_steps / optim.scheduler.warmup_steps")
        max_steps = _positive_int("trainer.max_steps", max_steps)
        warmup_steps = int(warmup_steps or 0)
        if not 0 <= warmup_steps <= max_steps:
            raise RecipeError(f"optim.scheduler.warmup_steps={warmup_steps} must lie in [0, trainer.max_steps={max_steps}]")
        return BatchPlan(world_size, micro_batch_size, seq_len, _positive_int("trainer.accumulate_grad_batches",
                                                                               accumulate), max_steps, warmup_steps)

    gbt = _positive_int("recipe.global_batch_tokens", global_batch_tokens)
    per_pass = world_size * micro_batch_size * seq_len
    if gbt % per_pass:
        ok_gbt = math.ceil(gbt / per_pass) * per_pass
        divisors = [b for b in range(1, micro_batch_size + 1) if gbt % (world_size * b * seq_len) == 0]
        hint = f"data.batch_size={max(divisors)}" if divisors else "a trainer.devices / data.seq_len that divides it"
        raise RecipeError(
            f"recipe.global_batch_tokens={gbt:,} is not a multiple of world size {world_size} x data.batch_size="
            f"{micro_batch_size} x data.seq_len={seq_len} = {per_pass:,} tokens per forward pass over all devices. "
            f"Change recipe.global_batch_tokens (e.g. to {ok_gbt:,}) or use {hint}.")
    if train_tokens is None:
        raise RecipeError("recipe.global_batch_tokens is set but recipe.train_tokens is null: give the training length "
                          "in tokens (e.g. recipe.train_tokens=15e9)")
    train = _positive_int("recipe.train_tokens", train_tokens)
    warm = int(warmup_tokens or 0)
    if train < gbt:
        raise RecipeError(f"recipe.train_tokens={train:,} is less than one global batch "
                          f"(recipe.global_batch_tokens={gbt:,}): raise train_tokens or lower the batch")
    if not 0 <= warm <= train:
        raise RecipeError(f"recipe.warmup_tokens={warm:,} must lie in [0, recipe.train_tokens={train:,}]")
    steps = max(1, round(train / gbt))
    return BatchPlan(world_size, micro_batch_size, seq_len, gbt // per_pass, steps, min(steps, round(warm / gbt)),
                     gbt, train, warm)


def validate_config(cfg: DictConfig, plan: BatchPlan) -> None:
    """Checks that need the whole config (after :func:`plan_batch`)."""
    trainer = cfg.trainer
    strategy = trainer.get("strategy", "auto")
    name = strategy if isinstance(strategy, str) else str(strategy.get("_target_", ""))
    accelerator = str(trainer.get("accelerator", "auto"))
    import torch

    if "fsdp" in name.lower() and (accelerator == "cpu" or not torch.cuda.is_available()):
        raise RecipeError("trainer=fsdp needs CUDA GPUs (FSDP mixed precision and NCCL); use trainer=ddp or "
                          "trainer=default on CPU")
    ckpt = (cfg.get("callbacks") or {}).get("model_checkpoint")
    if ckpt is not None and ckpt.get("every_n_train_steps") is not None and int(ckpt.every_n_train_steps) < 1:
        raise RecipeError(f"callbacks.model_checkpoint.every_n_train_steps={ckpt.every_n_train_steps} must be >= 1 "
                          "(or null to save only at the end)")
    sched = cfg.optim.get("scheduler")
    lr = float(cfg.optim.optimizer.lr)
    if sched is not None and "min_lr" in sched and not 0 <= float(sched.min_lr) <= lr:
        raise RecipeError(f"optim.scheduler.min_lr={sched.min_lr} must lie in [0, optim.optimizer.lr={lr}]")
    max_bad = cfg.lit_module.get("max_bad_steps", 1)
    if max_bad is not None and int(max_bad) < 1:
        raise RecipeError(f"lit_module.max_bad_steps={max_bad} must be >= 1")


def apply_recipe(cfg: DictConfig) -> BatchPlan:
    """Validate `cfg` and write the derived values into it (trainer.accumulate_grad_batches, trainer.max_steps,
    optim.scheduler.warmup_steps, and trainer.val_check_interval from recipe.val_every_steps)."""
    recipe = cfg.get("recipe") or {}
    trainer = cfg.trainer
    ws = world_size(trainer)
    sched = cfg.optim.get("scheduler")
    plan = plan_batch(world_size=ws, micro_batch_size=cfg.data.batch_size, seq_len=cfg.data.seq_len,
                      global_batch_tokens=recipe.get("global_batch_tokens"), train_tokens=recipe.get("train_tokens"),
                      warmup_tokens=recipe.get("warmup_tokens"), max_steps=trainer.get("max_steps"),
                      warmup_steps=sched.get("warmup_steps") if sched is not None else 0,
                      accumulate=trainer.get("accumulate_grad_batches", 1))
    validate_config(cfg, plan)
    with open_dict(cfg):
        trainer.accumulate_grad_batches = plan.accumulate
        trainer.max_steps = plan.max_steps
        if sched is not None and "warmup_steps" in sched:
            sched.warmup_steps = plan.warmup_steps
        val_every = recipe.get("val_every_steps")
        if val_every is not None:  # Lightning counts validation intervals in micro-batches
            trainer.val_check_interval = _positive_int("recipe.val_every_steps", val_every) * plan.accumulate
    return plan


def write_metrics(path: str, metrics: dict[str, float], plan: BatchPlan, lit_module: Any, trainer: Any) -> dict:
    """`<run dir>/metrics.json`: final metrics, throughput summary, batch plan, model config and the Hydra overrides,
    read by `scripts/collect_results.py` (one row per run of a sweep)."""
    import dataclasses
    import json
    from pathlib import Path

    overrides: list[str] = []
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except Exception:  # not under @hydra.main (tests calling train() directly)
        pass
    out = {"metrics": metrics, "summary": lit_module.summary(), "global_step": int(trainer.global_step),
           "plan": dataclasses.asdict(plan), "model": dataclasses.asdict(lit_module.model_config),
           "overrides": overrides}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2, default=str))
    return out
