"""MQAR training: `CausalLMModule` plus accuracy on the query positions of the test set (Zoology's metric).

Select it from an experiment with ``lit_module._target_: lit_modules.mqar.MQARModule``. The loss is the model's own
(mean cross-entropy over the labelled positions, i.e. the query answers); accuracy is the share of queries whose
arg-max prediction is the value paired with the queried key.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from lit_modules.causal_lm import CausalLMModule

__all__ = ["MQARModule", "query_predictions"]


def query_predictions(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
                      ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets at the labelled positions only, for a `DeltaNetForCausalLM`.

    input_ids, labels: (B, T), labels aligned with input_ids (``labels[t + 1]`` is what the logits at t predict).
    Returns ``(logits (n, V) float32, targets (n,))`` for the n labelled positions, without building the
    (B, T, V) logits of the whole batch.
    """
    h, _ = model.model(input_ids)  # (B, T, C), final norm applied
    target = labels[:, 1:]  # (B, T-1)
    keep = target != ignore_index
    logits = model.lm_head(h[:, :-1][keep]).float()  # (n, V)
    return logits, target[keep]


class MQARModule(CausalLMModule):
    """`CausalLMModule` whose validation also logs ``val/acc``: arg-max accuracy over all query positions."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.val_acc = MeanMetric()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits, target = query_predictions(self.model, batch["input_ids"], batch["labels"])
        n = target.numel()
        if n == 0:
            return
        self.val_loss.update(F.cross_entropy(logits, target), weight=n)
        self.val_acc.update((logits.argmax(-1) == target).float().mean(), weight=n)

    def on_validation_epoch_end(self) -> None:
        acc = self.val_acc.compute()
        self.val_acc.reset()
        self.log("val/acc", acc, prog_bar=True, sync_dist=False)
        super().on_validation_epoch_end()
        if not self.trainer.sanity_checking:
            self.print(f"MQAR step {self.global_step}: test accuracy {acc.item():.4f}")
