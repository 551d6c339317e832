"""MQAR training: `CausalLMModule` plus accuracy on the query positions of the test set (Zoology's metric).

Select it from an experiment with ``lit_module._target_: lit_modules.mqar.MQARModule``. The loss is the model's own
(mean cross-entropy over the labelled positions, i.e. the query answers); accuracy is the share of queries whose
arg-max prediction is the value paired with the queried key.

MQAR models are tiny (2 layers, width 64): a step is short, so the module keeps the host out of the way. Batches
from `MQARDataModule` carry the answer positions with a fixed width per set (``answer_pos``, ``answer``: (B, P)),
and the training loss gathers them instead of masking the labels, which would wait for the GPU at every step to
learn how many rows the mask keeps. The value is the model's loss (same targets, same mean).

With ``record`` set (``experiment=mqar`` sets ``<run dir>/mqar_run.json``), every validation writes the run's record
for ``scripts/mqar_sweep.py report``: the model, data and lr of the run, and the test curve (step, sequences seen,
training seconds without validation, accuracy, loss).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from lit_modules.causal_lm import CausalLMModule

__all__ = ["MQARModule", "query_predictions", "answer_loss", "run_record", "write_record"]


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


def answer_loss(model: torch.nn.Module, input_ids: torch.Tensor, answer_pos: torch.Tensor,
                answer: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy over the query answers, with fixed shapes (no host synchronisation).

    input_ids: (B, T) long; answer_pos: (B, P) long, positions t whose logits predict ``answer``; answer: (B, P)
    long, ``ignore_index`` where a row has fewer than P queries (see `datamodules.mqar.answer_index`).
    Equals ``model(input_ids, labels=labels).loss`` for the labels these were built from.
    """
    h, _ = model.model(input_ids)  # (B, T, C)
    hq = h.gather(1, answer_pos.unsqueeze(-1).expand(-1, -1, h.shape[-1]))  # (B, P, C)
    logits = model.lm_head(hq).float()  # (B, P, V)
    return F.cross_entropy(logits.flatten(0, 1), answer.flatten(), ignore_index=ignore_index)


class MQARModule(CausalLMModule):
    """`CausalLMModule` whose validation also logs ``val/acc``: arg-max accuracy over all query positions.

    Args (besides `CausalLMModule`'s):
        record: path of the run's JSON record, rewritten after every validation; None writes nothing.
    """

    def __init__(self, *args, record: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.val_acc = MeanMetric()
        self.record = record
        self.curve: list[dict[str, float]] = []  # one point per validation (saved in checkpoints)
        self.train_seconds = 0.0  # time in training steps, validation excluded (saved in checkpoints)
        self._segment_start: float | None = None

    # ---------------------------------------------------------------- loss
    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "answer_pos" not in batch:
            return super()._loss(batch)
        return answer_loss(self.model, batch["input_ids"], batch["answer_pos"], batch["answer"])

    # ---------------------------------------------------------------- accuracy
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits, target = query_predictions(self.model, batch["input_ids"], batch["labels"])
        n = target.numel()
        if n == 0:
            return
        self.val_loss.update(F.cross_entropy(logits, target), weight=n)
        self.val_acc.update((logits.argmax(-1) == target).float().mean(), weight=n)

    def on_validation_epoch_start(self) -> None:
        self._stop_clock()

    def on_validation_epoch_end(self) -> None:
        acc = self.val_acc.compute()
        self.val_acc.reset()
        loss = self.val_loss.compute()  # read before the parent logs and resets it
        self.log("val/acc", acc, prog_bar=True, sync_dist=False)
        super().on_validation_epoch_end()
        if self.trainer.sanity_checking:
            return
        self.print(f"MQAR step {self.global_step}: test accuracy {acc.item():.4f}")
        self._add_point(acc.item(), loss.item())
        if self.trainer.state.fn == "fit":
            self._segment_start = time.perf_counter()

    # ---------------------------------------------------------------- training time and the run record
    def on_train_start(self) -> None:
        super().on_train_start()
        self._segment_start = time.perf_counter()

    def on_train_end(self) -> None:
        self._stop_clock()

    def _stop_clock(self) -> None:
        if self._segment_start is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the queued steps belong to the training time
        self.train_seconds += time.perf_counter() - self._segment_start
        self._segment_start = None

    def _add_point(self, acc: float, loss: float) -> None:
        seq_len = self._seq_len or getattr(self.trainer.datamodule, "seq_len", 0) or 1
        add_point(self.curve, {"step": int(self.global_step), "sequences": int(self.tokens_seen // seq_len),
                               "seconds": round(self.train_seconds, 2), "acc": acc, "loss": loss})
        if self.record is not None and self.trainer.is_global_zero:
            tr = self.trainer
            write_record(self.record, run_record(
                self, tr.datamodule, getattr(tr.datamodule, "batch_size", 0) * tr.world_size
                * tr.accumulate_grad_batches, self._cuda))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        seconds = self.train_seconds
        if self._segment_start is not None:
            seconds += time.perf_counter() - self._segment_start
        checkpoint["mqar_state"] = {"curve": self.curve, "train_seconds": seconds}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("mqar_state")
        if state is not None:
            self.curve, self.train_seconds = list(state["curve"]), float(state["train_seconds"])


def add_point(curve: list[dict], point: dict) -> None:
    """Append a validation point; one at the step of the last replaces it (run.py's final validation)."""
    if curve and curve[-1]["step"] == point["step"]:
        curve[-1] = point
    else:
        curve.append(point)


def run_record(module: MQARModule, datamodule: Any, batch_size: int, cuda: torch.device | None) -> dict[str, Any]:
    """The run as `scripts/mqar_sweep.py report` reads it (one JSON object), from its module and data.

    batch_size: sequences per optimizer step; cuda: the training GPU, or None on CPU.
    """
    import triton

    cfg, dm, last = module.model_config, datamodule, module.curve[-1]
    return {"family": cfg.family, "width": cfg.hidden_size, "num_heads": cfg.num_heads,
            "num_layers": cfg.num_layers, "params": module._n_params,
            "lr": getattr(module.optimizer_factory, "keywords", {}).get("lr"), "batch_size": batch_size,
            "seq_len": getattr(dm, "seq_len", None), "kv_pairs": getattr(dm, "num_kv_pairs", None),
            "train_kv_pairs": getattr(dm, "train_kv_pairs", None),
            "fresh_train_data": bool(getattr(dm, "fresh_train_data", False)),
            "num_train": getattr(dm, "num_train_examples", None), "steps": last["step"],
            "sequences": last["sequences"], "train_seconds": last["seconds"], "final_acc": last["acc"],
            "best_acc": max(p["acc"] for p in module.curve),
            "device": torch.cuda.get_device_name(cuda) if cuda is not None else "cpu",
            "torch": torch.__version__, "triton": triton.__version__, "curve": module.curve}


def write_record(path: str, record: dict[str, Any]) -> None:
    """Write whole or not at all: a run cut short still leaves its last whole record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
