"""MQAR's and MAD's fast loop: `MQARModule`'s training without Lightning's work around each step.

    python run.py task=train_fast experiment=mqar model=deltanet callbacks=early_stopping
    python run.py task=train_fast experiment=mad data.task=selective_copying model=deltanet

A 2-layer width-64 MQAR model is launch-bound on a GPU: its kernels are tiny, so what the host does between them
sets the speed. This loop trains the same objects as ``python run.py experiment=mqar`` (the `MQARDataModule` and
its loaders, or `MADDataModule`'s, the `MQARModule` with its `training_step` loss, its AdamW parameter groups and schedule from
`configure_optimizers`, the same seed and the same batch order, `EpochShuffle`, hence the same losses) and
leaves out what a step does not need: no hooks, logging or progress bar per step, and no host synchronisation per
step (the loss has fixed shapes; the non-finite check runs at each evaluation instead of every step). The data stay
on the GPU (``data.device=auto``). Every ``trainer.val_check_interval`` steps it evaluates the whole test set with
`MQARModule.validation_step` (Zoology's accuracy), writes the run record (``lit_module.record``) and stops once the
accuracy reaches ``callbacks.early_stopping.stopping_threshold`` (with ``callbacks=early_stopping``), or at
``trainer.max_steps`` / ``trainer.max_time``. One device, no gradient accumulation, no checkpoints (a run lasts
minutes): for those, use Lightning (``task=train``).
"""
from __future__ import annotations

import dataclasses
import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from lit_modules.causal_lm import NonFiniteTrainingError
from lit_modules.mqar import MQARModule, add_point, run_record, write_record

__all__ = ["train_fast", "evaluate"]


def _seconds(max_time: Any) -> float:
    """Lightning's ``trainer.max_time`` as "DD:HH:MM:SS" (or a dict of timedelta fields) -> seconds; None = no limit."""
    if max_time is None:
        return float("inf")
    if isinstance(max_time, str):
        days, hours, minutes, seconds = (int(x) for x in max_time.split(":"))
        return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    import datetime

    return datetime.timedelta(**dict(max_time)).total_seconds()


@torch.no_grad()
def evaluate(module: MQARModule, loader, autocast) -> tuple[float, float]:
    """(accuracy, loss) over the query positions of every batch of `loader`: `MQARModule`'s validation metric."""
    module.eval()
    for i, batch in enumerate(loader):
        with autocast:
            module.validation_step(batch, i)
    acc, loss = module.val_acc.compute().item(), module.val_loss.compute().item()
    module.val_acc.reset()
    module.val_loss.reset()
    module.train()
    return acc, loss


def train_fast(cfg: DictConfig) -> dict[str, Any]:
    """Train ``cfg`` (an ``experiment=mqar`` config) in the fast loop; returns the final metrics and per-step losses."""
    import lightning as L
    from hydra.utils import instantiate

    from lit_modules.recipe import apply_recipe

    plan = apply_recipe(cfg)  # the same checks and derived steps as task=train
    if plan.world_size != 1 or plan.accumulate != 1:
        raise ValueError(f"task=train_fast runs on one device without accumulation; got {plan.describe()}. "
                         "Use task=train (Lightning) for that.")
    if not str(cfg.lit_module._target_).endswith("MQARModule"):
        raise ValueError(f"task=train_fast trains MQAR and MAD (experiment=mqar or experiment=mad); lit_module is "
                         f"{cfg.lit_module._target_}")
    tr = cfg.trainer
    on_gpu = tr.accelerator in ("gpu", "cuda") or (tr.accelerator == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if on_gpu else "cpu")
    precision = str(tr.precision) if tr.precision != "auto" else ("bf16-mixed" if on_gpu else "32-true")
    if precision not in ("bf16-mixed", "32-true", "32"):
        raise ValueError(f"task=train_fast supports trainer.precision auto, bf16-mixed or 32-true, got {precision}")
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16-mixed" else nullcontext())

    # The construction order of run.py's train(), so the random draws (model init, then the loaders) are the same.
    L.seed_everything(cfg.seed, workers=True)
    dm = instantiate(cfg.data)
    module: MQARModule = instantiate(cfg.lit_module, model_config=instantiate(cfg.model)).to(device)
    dm.setup()
    opt = module.configure_optimizers()
    optimizer, scheduler = (opt["optimizer"], opt["lr_scheduler"]["scheduler"]) if isinstance(opt, dict) \
        else (opt, None)
    clip = tr.get("gradient_clip_val")
    if clip and tr.get("gradient_clip_algorithm", "norm") not in (None, "norm"):
        raise ValueError(f"task=train_fast clips the gradient norm only; got {tr.gradient_clip_algorithm}")
    every, max_steps, deadline = int(tr.val_check_interval), int(tr.max_steps), _seconds(tr.get("max_time"))
    stop = (cfg.get("callbacks") or {}).get("early_stopping")
    target = float(stop.stopping_threshold) if stop is not None and stop.get("stopping_threshold") is not None else None
    cuda = device if device.type == "cuda" else None
    sync = (lambda: torch.cuda.synchronize(device)) if cuda is not None else (lambda: None)

    losses = torch.zeros(max_steps, device=device)  # per step, read once at the end (no host sync per step)
    step, epoch, sequences, tokens, seconds, reached = 0, 0, 0, 0, 0.0, False
    t_segment = time.perf_counter()
    while step < max_steps and not reached and seconds < deadline:
        dm.set_epoch(epoch)
        loader = dm.train_dataloader()  # the loader Lightning iterates in this epoch
        if len(loader) == 0:
            raise ValueError(f"data.num_train_examples={dm.num_train_examples} < data.batch_size={dm.batch_size}: "
                             "no whole batch to train on")
        for batch in loader:
            if batch["input_ids"].device != device:  # sets kept on another device (data.device)
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast:
                loss = module.training_step(batch, step)  # the LightningModule's loss (and its train/loss meter)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(module.parameters(), float(clip))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            losses[step] = loss.detach()
            step += 1
            sequences += batch["input_ids"].shape[0]
            tokens += batch["input_ids"].numel()
            if step % every and step < max_steps:
                continue
            sync()
            seconds += time.perf_counter() - t_segment
            train_loss = module.train_loss.compute().item()
            module.train_loss.reset()
            if not torch.isfinite(torch.tensor(train_loss)):
                raise NonFiniteTrainingError(f"the train loss of steps {step - every}..{step - 1} is {train_loss}: "
                                             "lower optim.optimizer.lr or raise optim.scheduler.warmup_steps")
            acc, val_loss = evaluate(module, dm.val_dataloader(), autocast)
            add_point(module.curve, {"step": step, "sequences": sequences, "seconds": round(seconds, 2), "acc": acc,
                                     "loss": val_loss})
            print(f"MQAR step {step}: test accuracy {acc:.4f}, test loss {val_loss:.4f}, train loss {train_loss:.4f}, "
                  f"{sequences / max(seconds, 1e-9):.0f} sequences/s", flush=True)
            if module.record is not None:
                write_record(module.record, run_record(module, dm, dm.batch_size, cuda))
            reached = target is not None and acc >= target
            t_segment = time.perf_counter()
            if reached or step >= max_steps or seconds >= deadline:
                break
        epoch += 1
    metrics = {"val/acc": module.curve[-1]["acc"], "val/loss": module.curve[-1]["loss"]} if module.curve else {}
    out = {"metrics": metrics, "global_step": step, "summary": {"sequences_per_s": sequences / max(seconds, 1e-9),
           "tokens_per_s": tokens / max(seconds, 1e-9), "train_seconds": seconds},
           "plan": dataclasses.asdict(plan), "model": dataclasses.asdict(module.model_config),
           "overrides": _overrides(), "reached_target": reached}
    Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.paths.output_dir) / "metrics.json").write_text(json.dumps(out, indent=2, default=str))
    print(f"Run directory: {cfg.paths.output_dir}")
    return {**out, "train_losses": losses[:step].tolist()}


def _overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # not under @hydra.main
        return []
