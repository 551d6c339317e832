"""`FaultInjector`: a test tool that injects faults into a real run, for the tests of fault handling and exact resume:

    python run.py experiment=smoke +callbacks.fault._target_=tests.fault_injector.FaultInjector \\
        '+callbacks.fault.nan_loss_steps=[3]' +callbacks.fault.sigkill_at_step=7
    python run.py experiment=smoke +callbacks.fault._target_=tests.fault_injector.FaultInjector \\
        +callbacks.fault.sigterm_at_step=7        # or +callbacks.fault.enospc_at_step=15

(run from the repository root, which puts `tests` on the path). Steps are 0-based optimizer steps
(`trainer.global_step` when the step starts); with gradient accumulation every micro-batch of a listed step is affected.
"""
from __future__ import annotations

import errno
import os
import signal
from typing import Any, Sequence

import lightning as L
import torch


class FaultInjector(L.Callback):
    """NaN loss, Inf gradient, SIGKILL, SIGTERM or a full disk at chosen optimizer steps, without touching model code.

    Args:
        nan_loss_steps: steps whose loss becomes NaN (a forward hook on `pl_module.model` rewrites the output's loss).
        inf_grad_steps: steps where one gradient entry becomes +Inf just before the optimizer step.
        sigkill_at_step: SIGKILL this process when this step starts (the hard crash of the resume test).
        sigterm_at_step: SIGTERM this process as the step's first micro-batch starts (a preemption mid-step).
        enospc_at_step: from this step on, every `torch.save` writes a few bytes and fails with ENOSPC (a full disk).
    """

    def __init__(self, nan_loss_steps: Sequence[int] = (), inf_grad_steps: Sequence[int] = (),
                 sigkill_at_step: int | None = None, sigterm_at_step: int | None = None,
                 enospc_at_step: int | None = None):
        self.nan_loss_steps = {int(s) for s in nan_loss_steps}
        self.inf_grad_steps = {int(s) for s in inf_grad_steps}
        self.sigkill_at_step = sigkill_at_step
        self.sigterm_at_step = sigterm_at_step
        self.enospc_at_step = enospc_at_step
        self._handle = None
        self._sent_sigterm = False

    @staticmethod
    def _full_disk_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if hasattr(f, "write"):
            f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    @staticmethod
    def _nan_loss(module: torch.nn.Module, args: Any, output: Any) -> Any:
        if getattr(output, "loss", None) is not None:
            output.loss = output.loss * float("nan")
        return output

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.sigkill_at_step is not None and step == int(self.sigkill_at_step):
            os.kill(os.getpid(), signal.SIGKILL)
        if self.sigterm_at_step is not None and step == int(self.sigterm_at_step) and not self._sent_sigterm:
            self._sent_sigterm = True
            os.kill(os.getpid(), signal.SIGTERM)
        if self.enospc_at_step is not None and step == int(self.enospc_at_step):
            torch.save = self._full_disk_save
        if step in self.nan_loss_steps and self._handle is None:
            self._handle = pl_module.model.register_forward_hook(self._nan_loss)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # runs before the module's hook
        if trainer.global_step in self.inf_grad_steps:
            p = next(p for p in pl_module.model.parameters() if p.grad is not None)
            p.grad.view(-1)[0] = float("inf")
