"""Checkpointing and the console of a run (conf/callbacks/default.yaml, conf/trainer/default.yaml):

- :class:`StepCheckpoint`: numbered checkpoints every N optimizer steps, ``last.ckpt`` also every M minutes and at the
  end, and a checkpoint on SIGTERM (what SLURM sends before preemption) followed by a clean stop (:class:`Preempted`).
- :class:`AtomicCheckpointIO`: every checkpoint file is written beside its target and renamed over it, so a crash or
  a full disk mid-write leaves the previous file intact (:class:`CheckpointWriteError`).
- :class:`StepProgressBar`: one bar over optimizer steps (not epochs) with loss, tokens/s and the last val/loss.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf

__all__ = ["StepCheckpoint", "AtomicCheckpointIO", "CheckpointWriteError", "Preempted", "StepProgressBar"]

PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM  # 143: what a shell reports for a process ended by SIGTERM


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. ENOSPC); the previous file at that path is unchanged."""


class Preempted(Exception):
    """Raised after the SIGTERM checkpoint is written: run.py reports it and exits with status 143."""

    def __init__(self, message: str, path: str | None):
        super().__init__(message)
        self.path = path


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` to ``.<name>.tmp-<pid>`` in the target's directory, fsync, then ``os.replace`` onto the target.

    A reader sees the old file or the new one, never half of one. If the write fails (a full disk: ENOSPC, a quota,
    an I/O error) the temporary file is removed and :class:`CheckpointWriteError` names the path, the reason and the
    checkpoint that is still there.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            kept = f"the previous {target.name} is kept unchanged" if target.exists() else f"no {target.name} was written"
            raise CheckpointWriteError(
                e.errno, f"could not write checkpoint {target}: {e.strerror or e} ({kept}). Free space in "
                f"{target.parent} and resume with `python run.py ckpt_path={_run_dir_of(target)}`.") from e
        _fsync_dir(target.parent)


def _run_dir_of(ckpt: Path) -> Path:
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


class StepCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` (numbered files every `every_n_train_steps`, `save_last`) that also writes ``last.ckpt``

    - every `every_minutes` of training (rank 0's clock, broadcast; only ``last.ckpt`` is rewritten, so disk use
      does not grow), checked once per optimizer step;
    - at the end of training when that falls between two periodic checkpoints, so ``last.ckpt`` of a finished run
      holds its final state;
    - on SIGTERM: the signal only sets a flag; at the end of the optimizer step in progress (never inside a gradient
      accumulation window) ``last.ckpt`` is written, the step's logging and validation finish, and the run stops
      with :class:`Preempted` before the next step starts, so a requeued job resumes exactly.

    A run that stops on another exception (e.g. `NonFiniteTrainingError`) is not saved here: its newest checkpoints
    stay as they were.

    Args:
        every_minutes: minutes of training between two time-based ``last.ckpt`` writes; None = by steps only.
        **kwargs: `ModelCheckpoint`'s arguments.
    """

    def __init__(self, *args: Any, every_minutes: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if every_minutes is not None and not (isinstance(every_minutes, (int, float)) and every_minutes > 0):
            raise ValueError(f"callbacks.model_checkpoint.every_minutes={every_minutes!r} must be a positive number "
                             "of minutes (or null for steps only)")
        self.every_minutes = every_minutes
        self._timer_start: float | None = None
        self._seen_step = -1
        self._sigterm = False
        self._stop = False
        self._previous_handler: Any = None

    # ------------------------------------------------------------------ SIGTERM
    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if not self._sigterm:
            launcher = getattr(self._trainer.strategy, "launcher", None)
            if launcher is not None and hasattr(launcher, "kill"):
                launcher.kill(signum)  # the DDP processes this one started get the signal too
        self._sigterm = True

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._trainer = trainer
        self._timer_start = time.monotonic()
        self._seen_step = trainer.global_step
        self._sigterm = self._stop = False
        # Replaces Lightning's own handler, which would stop the run wherever the signal lands (mid-accumulation,
        # mid-validation) without a checkpoint. Lightning restores the original handler at teardown.
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _decisions(self, trainer) -> tuple[bool, bool]:
        """(SIGTERM on any rank, time checkpoint due on rank 0): one small all-reduce per step on several processes."""
        due = self.every_minutes is not None and self._timer_start is not None \
            and time.monotonic() - self._timer_start >= 60.0 * self.every_minutes
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flags = torch.tensor([float(self._sigterm), float(due and trainer.is_global_zero)],
                                 device=trainer.strategy.root_device)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            return bool(flags[0].item()), bool(flags[1].item())
        return self._sigterm, due

    def _write_last(self, trainer) -> str:
        path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
        self.last_model_path = path  # before saving: it is part of the saved state (a resumed run rewrites this file)
        trainer.save_checkpoint(path, self.save_weights_only)  # collective under DDP/FSDP: every rank calls it
        self._last_global_step_saved = trainer.global_step
        return path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._stop:  # the previous step finished, was saved, logged and validated
            path = self.last_model_path or None
            raise Preempted(f"Stopped on SIGTERM after step {trainer.global_step}: the run is saved in {path}. "
                            f"Resume it with `python run.py ckpt_path={_run_dir_of(Path(path)) if path else '<run dir>'}`.",
                            path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step = trainer.global_step
        if step == self._seen_step:
            return  # inside a gradient-accumulation window: no optimizer step finished
        self._seen_step = step
        sigterm, due = self._decisions(trainer)
        if (sigterm or due) and self.dirpath is not None:
            if getattr(self, "_last_global_step_saved", -1) != step or not self.save_last:
                self._write_last(trainer)
            self._timer_start = time.monotonic()
        self._stop = sigterm

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
        if self.save_last and self.dirpath is not None and trainer.global_step > 0 \
                and getattr(self, "_last_global_step_saved", -1) != trainer.global_step:
            self._write_last(trainer)  # unless the periodic checkpoint of this step already wrote last.ckpt
        if self._stop:  # SIGTERM during the last step: saved; run.py reports it instead of validating
            raise Preempted(f"Stopped on SIGTERM after the last step ({trainer.global_step}): saved in "
                            f"{self.last_model_path}.", self.last_model_path)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None


def _short(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    for unit, div in (("M", 1e6), ("K", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}"


class StepProgressBar(TQDMProgressBar):
    """One line a run reads at 100 columns: ``step 40/120 |####   | 02:10<04:20 loss 7.52, 1.0K tok/s, val 7.41``.

    Counts optimizer steps over the whole run (resumed runs start at their step), not micro-batches per epoch, so a
    step-based run shows no epoch counters. Every other metric is in TensorBoard (`tensorboard --logdir logs`).
    """

    BAR = "{desc} {n_fmt}/{total_fmt} |{bar}| {elapsed}<{remaining}{postfix}"  # desc "step"

    def __init__(self, refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate)
        self._val_loss: float | None = None

    def init_train_tqdm(self):
        total = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else None
        return Tqdm(desc="step", total=total, position=2 * self.process_position, disable=self.is_disabled, leave=True,
                    ncols=min(100, _columns()), file=sys.stdout, smoothing=0, bar_format=self.BAR)

    def init_validation_tqdm(self):
        has_main_bar = self.trainer.state.fn != "validate"
        return Tqdm(desc="validation", position=2 * self.process_position + has_main_bar, disable=self.is_disabled,
                    leave=not has_main_bar, ncols=min(60, _columns()), file=sys.stdout,
                    bar_format="{desc} {n_fmt}/{total_fmt} |{bar}| {elapsed}")

    def on_train_start(self, trainer, pl_module) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self.train_progress_bar.reset(total=total)
        self.train_progress_bar.initial = 0
        self.train_progress_bar.n = trainer.global_step

    def on_train_epoch_start(self, trainer, *_: Any) -> None:
        pass  # one bar for the whole run

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        n = trainer.global_step
        if bar is None or bar.disable or n == bar.n:
            return
        if self._should_update(n, bar.total):
            bar.n = n
            bar.set_postfix_str(self._postfix(trainer), refresh=False)
            bar.refresh()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx: int = 0) -> None:
        if not self.has_dataloader_changed(dataloader_idx):
            return
        self.val_progress_bar.reset(total=convert_inf(self.total_val_batches_current_dataloader))

    def on_validation_end(self, trainer, pl_module) -> None:
        self.val_progress_bar.close()
        self.reset_dataloader_idx_tracker()
        if self._train_progress_bar is not None and trainer.state.fn == "fit":
            self.train_progress_bar.set_postfix_str(self._postfix(trainer), refresh=True)

    def _postfix(self, trainer) -> str:
        m = trainer.callback_metrics
        parts = []
        if "train/loss" in m:
            parts.append(f"loss {float(m['train/loss']):.3f}")
        if "train/tokens_per_s" in m:
            parts.append(f"{_short(float(m['train/tokens_per_s']))} tok/s")
        if "val/loss" in m:
            self._val_loss = float(m["val/loss"])
        if self._val_loss is not None:
            parts.append(f"val/loss {self._val_loss:.3f}")
        return ", ".join(parts)  # tqdm puts ", " before it


def _columns() -> int:
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return int(os.environ.get("COLUMNS", 100) or 100)
