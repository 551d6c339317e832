"""Callbacks of the recipe: `StepCheckpoint` (conf/callbacks/default.yaml)."""
from __future__ import annotations

import os

from lightning.pytorch.callbacks import ModelCheckpoint


class StepCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` (every `every_n_train_steps`, `save_last`) that also writes `last.ckpt` when training ends
    between two periodic checkpoints, so `ckpt_path=last` always holds the final state of a finished run. A run that
    stops on an exception (e.g. `NonFiniteTrainingError`) is not saved here: its newest checkpoints stay as they were."""

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if not self.save_last or self.dirpath is None or trainer.global_step == 0:
            return
        if getattr(self, "_last_global_step_saved", -1) == trainer.global_step:
            return  # the periodic checkpoint of this step already wrote last.ckpt
        path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
        trainer.save_checkpoint(path, self.save_weights_only)  # collective under DDP/FSDP: every rank calls it
        self.last_model_path = path
