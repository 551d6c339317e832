"""AtomicCheckpointIO: a failed write (a full disk) leaves the previous checkpoint intact and no temporary file."""
from __future__ import annotations

import errno
import os

import pytest
import torch

from lit_modules.callbacks import AtomicCheckpointIO, CheckpointWriteError, StepCheckpoint


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 4, "w": torch.arange(3.0)}, path)
    before = path.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match=r"No space left on device \(the previous last.ckpt is kept"
                                                   r" unchanged\).*ckpt_path=" + str(tmp_path)) as info:
        io.save_checkpoint({"global_step": 8, "w": torch.zeros(3)}, path)
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # the temporary file is gone
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 4


def test_every_minutes_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="every_minutes=0 must be a positive number"):
        StepCheckpoint(dirpath=str(tmp_path), every_minutes=0)
