"""Causal language-model training: the LightningModule around `deltanet.DeltaNetForCausalLM`."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import lightning as L
import torch
from torchmetrics import MeanMetric

from deltanet import DeltaNetConfig, DeltaNetForCausalLM


class CausalLMModule(L.LightningModule):
    """Next-token prediction with AdamW and a warm-up + cosine schedule.

    Args:
        model_config: a `DeltaNetConfig` (or its dict, as stored in checkpoints).
        optimizer: a partial optimizer, called with the parameter groups (weight decay only on >= 2-D weights).
        scheduler: a partial scheduler factory, called with the optimizer; stepped every optimizer step.
    """

    def __init__(self, model_config: DeltaNetConfig | dict, optimizer: Callable, scheduler: Callable | None = None):
        super().__init__()
        if isinstance(model_config, dict):
            model_config = DeltaNetConfig(**model_config)
        # Only the model's config goes into the checkpoint's hyper-parameters: the optimizer recipe lives in the Hydra config.
        self.save_hyperparameters({"model_config": dataclasses.asdict(model_config)})
        self.model_config = model_config
        self.model = DeltaNetForCausalLM(model_config)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_loss = MeanMetric()
        self._tokens_seen = 0
        self._last_time: float | None = None

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any):
        return self.model(input_ids, labels=labels, **kwargs)

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        input_ids = batch["input_ids"]                      # (B, T)
        labels = batch.get("labels", input_ids)              # (B, T), -100 = ignored; shifted inside the model
        kwargs = {"cu_seqlens": batch["cu_seqlens"]} if "cu_seqlens" in batch else {}
        return self.model(input_ids, labels=labels, **kwargs).loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        tokens = batch["input_ids"].numel()
        self._tokens_seen += tokens
        now = time.perf_counter()
        if self._last_time is not None:
            self.log("train/tokens_per_s", tokens / max(now - self._last_time, 1e-9), prog_bar=True, on_step=True)
        self._last_time = now
        self.log("train/loss", loss, prog_bar=True, on_step=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.val_loss.update(self._loss(batch))

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", torch.exp(loss), prog_bar=True, sync_dist=False)
        self._last_time = None  # validation time is not training throughput

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        wd = self.optimizer_factory.keywords.get("weight_decay", 0.0) if hasattr(self.optimizer_factory, "keywords") else 0.0
        groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = self.optimizer_factory(groups)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}
