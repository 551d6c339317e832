"""Causal language-model training: the LightningModule around `deltanet.DeltaNetForCausalLM`.

Once per optimizer step (in `on_before_optimizer_step`, after the last micro-batch's backward and before clipping) the
module logs, to TensorBoard and the progress bar:

    train/loss        token-weighted mean over the step's micro-batches and devices (torchmetrics, synced)
    train/ppl         exp(train/loss)
    train/grad_norm   global L2 norm of the gradient before clipping (over all shards under FSDP)
    train/lr          learning rate of the step
    train/tokens_per_s, train/tokens_per_s_per_device, train/mfu, train/peak_mem_gib, train/skipped_steps

A step whose loss or gradient is NaN/Inf is skipped: its gradients are dropped, so AdamW leaves weights and moments
untouched; it still counts as a step (tokens were consumed, so the token-based schedule and data position stay
aligned). After `max_bad_steps` consecutive bad steps the run stops with :class:`NonFiniteTrainingError`, naming the
newest checkpoint written before the fault (skipped steps never change the weights, so it is clean).
"""
from __future__ import annotations

import dataclasses
import random
import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from torchmetrics import MeanMetric

from deltanet import DeltaNetConfig, DeltaNetForCausalLM
from lit_modules.flops import flops_per_token, peak_flops

# FSDP / activation-checkpointing wrappers insert these segments into parameter names.
_WRAPPER_SEGMENTS = re.compile(r"(_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\.")


class NonFiniteTrainingError(RuntimeError):
    """Raised after `max_bad_steps` consecutive optimizer steps with a non-finite loss or gradient."""


def _clean(name: str) -> str:
    return _WRAPPER_SEGMENTS.sub("", name)


class CausalLMModule(L.LightningModule):
    """Next-token prediction with AdamW and a warm-up + cosine schedule.

    Args:
        model_config: a `DeltaNetConfig` (or its dict, as stored in checkpoints).
        optimizer: a partial optimizer, called with the parameter groups (weight decay only on >= 2-D weights).
        scheduler: a partial scheduler factory, called with the optimizer; stepped every optimizer step.
        max_bad_steps: consecutive non-finite steps (loss or gradient) after which training stops.
        peak_flops_per_device: FLOP/s for MFU; None = look the GPU up in `lit_modules.flops.PEAK_BF16` (no MFU on CPU).
    """

    def __init__(self, model_config: DeltaNetConfig | dict, optimizer: Callable, scheduler: Callable | None = None,
                 max_bad_steps: int = 3, peak_flops_per_device: float | None = None):
        super().__init__()
        if not isinstance(model_config, DeltaNetConfig):  # a dict (checkpoint) or the DictConfig Hydra passes
            from omegaconf import DictConfig, OmegaConf

            if isinstance(model_config, DictConfig):
                model_config = OmegaConf.to_container(model_config, resolve=True)
            model_config = DeltaNetConfig.from_dict(dict(model_config))
        # Only the model's config goes into the checkpoint's hyper-parameters: the optimizer recipe lives in the Hydra config.
        self.save_hyperparameters({"model_config": dataclasses.asdict(model_config)})
        self.model_config = model_config
        self.model = DeltaNetForCausalLM(model_config)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.max_bad_steps = int(max_bad_steps)
        self.peak_flops_per_device = peak_flops_per_device
        self._count_parameters()
        self.train_loss = MeanMetric(nan_strategy="disable")  # NaN must reach the fault check, not be dropped
        self.val_loss = MeanMetric()
        # counters saved in checkpoints
        self.skipped_steps = 0
        self.consecutive_bad = 0
        self.first_bad_step: int | None = None
        self.tokens_seen = 0
        # per-step bookkeeping (not saved)
        self._window_tokens = 0
        self._window_bad = False
        self._last_time: float | None = None
        self._pending_rng: dict | None = None
        self._seq_len = 0  # context of the current batch, for the FLOPs estimate
        self._cuda: torch.device | None = None  # the training GPU, set when training starts
        self.throughput: list[float] = []  # global tokens/s of each timed step, for the run summary

    def _count_parameters(self) -> None:
        """The decayed parameters' names and the parameter count, from ``self.model`` as it is now (a subclass that
        adds a submodule calls it again).  Decided on the unwrapped model: under FSDP (use_orig_params) the sharded
        parameters are 1-D views.  Mamba's A_log [E, N] is 2-D but, as published, is not decayed (it says so by
        `_no_weight_decay`)."""
        self._decay_names = {n for n, p in self.model.named_parameters()
                             if p.dim() >= 2 and not getattr(p, "_no_weight_decay", False)}
        self._n_params = sum(p.numel() for p in self.model.parameters())

    # ---------------------------------------------------------------- forward / loss
    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any):
        return self.model(input_ids, labels=labels, **kwargs)

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        input_ids = batch["input_ids"]                      # (B, T)
        labels = batch.get("labels", input_ids)              # (B, T), -100 = ignored; shifted inside the model
        kwargs = {"cu_seqlens": batch["cu_seqlens"]} if "cu_seqlens" in batch else {}
        return self.model(input_ids, labels=labels, **kwargs).loss

    @staticmethod
    def _targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch.get("labels", batch["input_ids"])
        return (labels[:, 1:] != -100).sum().clamp_min(1)  # predicted tokens: the weight of this batch's mean loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.train_loss.update(loss.detach().float(), self._targets(batch))
        self._window_tokens += batch["input_ids"].numel()
        return loss

    # ---------------------------------------------------------------- once per optimizer step
    def _grad_norm(self) -> torch.Tensor:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.device)
        sq = torch.stack([g.detach().float().pow(2).sum() for g in grads]).sum()
        from lightning.pytorch.strategies import FSDPStrategy

        if isinstance(self.trainer.strategy, FSDPStrategy) and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sq)  # each rank holds a shard of every gradient
        return sq.sqrt()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        loss = self.train_loss.compute()  # synced over devices
        self.train_loss.reset()
        grad_norm = self._grad_norm()
        # One host sync per step; every rank sees the same synced loss and (reduced) gradient norm -> same decision.
        bad = not bool(torch.isfinite(loss).item() and torch.isfinite(grad_norm).item())
        step = self.global_step
        if bad:
            for p in self.model.parameters():
                p.grad = None  # AdamW skips parameters without a gradient: weights and moments stay as they were
            self.skipped_steps += 1
            self.consecutive_bad += 1
            if self.consecutive_bad == 1:
                self.first_bad_step = step
        else:
            self.consecutive_bad = 0

        tokens = self._window_tokens * self.trainer.world_size
        self._window_tokens = 0
        self.tokens_seen += tokens
        metrics = {"train/loss": loss, "train/ppl": torch.exp(loss), "train/grad_norm": grad_norm, "train/lr": optimizer.param_groups[0]["lr"],
                   "train/skipped_steps": float(self.skipped_steps)}
        now = time.perf_counter()
        if self._last_time is not None:
            tps = tokens / max(now - self._last_time, 1e-9)
            self.throughput.append(tps)
            per_device = tps / self.trainer.world_size
            metrics["train/tokens_per_s"] = tps
            metrics["train/tokens_per_s_per_device"] = per_device
            peak = self._peak_flops()
            if peak:
                metrics["train/mfu"] = per_device * self._flops_per_token() / peak
        self._last_time = now
        if self.device.type == "cuda":
            metrics["train/peak_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        for name, value in metrics.items():
            self.log(name, value, on_step=True, on_epoch=False, rank_zero_only=True,
                     prog_bar=name in ("train/loss", "train/grad_norm", "train/lr", "train/tokens_per_s", "train/mfu"))

        if bad and self.consecutive_bad >= self.max_bad_steps:
            raise NonFiniteTrainingError(self._fault_message(step))

    def _fault_message(self, step: int) -> str:
        first = self.first_bad_step if self.first_bad_step is not None else step
        msg = (f"Stopping: {self.consecutive_bad} consecutive optimizer steps (steps {first}..{step}, 0-based) had a "
               f"non-finite loss or gradient (lit_module.max_bad_steps={self.max_bad_steps}; "
               f"{self.skipped_steps} skipped in total). The weights were last updated at step {first - 1}. ")
        cb = self.trainer.checkpoint_callback
        before = []
        if cb is not None and cb.dirpath and Path(cb.dirpath).is_dir():
            for f in Path(cb.dirpath).glob("*.ckpt"):
                m = re.search(r"(\d+)", f.stem)
                if m and f.name != "last.ckpt" and int(m.group(1)) <= first:
                    before.append((int(m.group(1)), f))
        if before:
            msg += f"Newest checkpoint from before the fault: {max(before)[1]} (resume with ckpt_path=<that path>). "
        else:
            msg += "No checkpoint was written before the fault (lower callbacks.model_checkpoint.every_n_train_steps). "
        return msg + "Check the data, or lower optim.optimizer.lr / raise optim.scheduler.warmup_steps."

    def _flops_per_token(self) -> float:
        return flops_per_token(self.model_config, self._seq_len, self._n_params)

    def _peak_flops(self) -> float | None:
        if self.peak_flops_per_device:
            return float(self.peak_flops_per_device)
        if self._cuda is None:
            return None
        return peak_flops(torch.cuda.get_device_name(self._cuda))

    def on_train_batch_start(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._seq_len = batch["input_ids"].shape[1]

    # ---------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.val_loss.update(self._loss(batch).float(), self._targets(batch))

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # token-weighted, synced over devices
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", torch.exp(loss), prog_bar=True, sync_dist=False)
        self._last_time = None  # validation time is not training throughput

    # ---------------------------------------------------------------- run summary
    def summary(self) -> dict[str, float]:
        """Throughput over the run (median of the timed steps, the first 2 dropped as warm-up) and fault counters."""
        out: dict[str, float] = {"skipped_steps": float(self.skipped_steps), "tokens_seen": float(self.tokens_seen)}
        timed = self.throughput[2:] if len(self.throughput) > 4 else self.throughput
        if timed:
            tps = statistics.median(timed)
            out["tokens_per_s"] = tps
            out["tokens_per_s_per_device"] = tps / self.trainer.world_size
            peak = self._peak_flops()
            if peak:
                out["mfu"] = out["tokens_per_s_per_device"] * self._flops_per_token() / peak
        if self._cuda is not None:
            out["peak_mem_gib"] = torch.cuda.max_memory_allocated(self._cuda) / 2**30
        return out

    # ---------------------------------------------------------------- exact resume
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain types and tensors only: Lightning loads checkpoints with torch.load(weights_only=True).
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        rng = {"python": random.getstate(), "torch": torch.get_rng_state(),
               "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["recipe_state"] = {"skipped_steps": self.skipped_steps, "consecutive_bad": self.consecutive_bad,
                                      "first_bad_step": self.first_bad_step, "tokens_seen": self.tokens_seen,
                                      "rng": rng}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("recipe_state")
        if state is None:
            return
        self.skipped_steps = state["skipped_steps"]
        self.consecutive_bad = state["consecutive_bad"]
        self.first_bad_step = state["first_bad_step"]
        self.tokens_seen = state["tokens_seen"]
        self._pending_rng = state.get("rng")  # set when training starts, after Lightning's own setup

    def on_train_start(self) -> None:
        self._cuda = self.device if self.device.type == "cuda" else None  # summary() runs after teardown moved us to CPU
        rng, self._pending_rng = self._pending_rng, None
        if rng is None:
            return
        random.setstate(rng["python"])
        kind, keys, pos, has_gauss, gauss = rng["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        from lightning.pytorch.strategies import FSDPStrategy

        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") \
                and isinstance(self.trainer.strategy, FSDPStrategy):
            # Lightning's FSDPPrecision refuses norm clipping (found on the H200 run); FSDP's own clip_grad_norm_
            # reduces the norm over the shards (collective: every rank calls it, also on skipped steps).
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ---------------------------------------------------------------- optimizer
    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (decay if _clean(name) in self._decay_names else no_decay).append(p)
        wd = self.optimizer_factory.keywords.get("weight_decay", 0.0) if hasattr(self.optimizer_factory, "keywords") else 0.0
        groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = self.optimizer_factory(groups)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}
