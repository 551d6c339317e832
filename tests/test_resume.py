"""A run killed with SIGKILL and resumed with `ckpt_path=last` logs the same loss at every step as an uninterrupted run.

Deterministic smoke runs (CPU, `trainer.deterministic=true`) with the token recipe (global batch 512 tokens = 4 x 64 x
2 micro-batches), validation every 6 steps and a checkpoint every 4. The killed run dies (SIGKILL from
`tests.fault_injector.FaultInjector`) as step 9 starts, so the resumed run restarts from step 8's checkpoint in the
middle of the data epoch and of the cosine schedule. The `transformer` family keeps this cheap on 2 CPU cores; the
resume path (model, optimizer, scheduler, step, RNG, data position) is the same for every family.
"""
from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import ROOT, read_scalars, run_py

COMMON = ["experiment=smoke", "model=transformer", "trainer.accelerator=cpu", "trainer.deterministic=true", "seed=11",
          "recipe.global_batch_tokens=512", "recipe.train_tokens=6144", "recipe.warmup_tokens=1024",
          "recipe.val_every_steps=6", "trainer.log_every_n_steps=1", "callbacks.model_checkpoint.every_n_train_steps=4",
          "run_final_validation=false"]


def scalars(run_dir, tag) -> dict[int, float]:
    by_step: dict[int, float] = {}
    for step, value in read_scalars(run_dir, tag):
        assert by_step.setdefault(step, value) == value, f"{tag} at step {step} logged twice with different values"
    return by_step


def test_sigkill_and_resume_logs_identical_losses(tmp_path, shared_data_dir):
    data = f"paths.data_dir={shared_data_dir}"
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    run_py(*COMMON, data, f"hydra.run.dir={full}")

    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *COMMON, data, f"hydra.run.dir={crashed}",
                           "+callbacks.fault._target_=tests.fault_injector.FaultInjector",
                           "+callbacks.fault.sigkill_at_step=9"],
                          cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-3000:])
    ckpts = sorted(p.name for p in (crashed / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["last.ckpt", "step0000004.ckpt", "step0000008.ckpt"], ckpts
    assert not (crashed / "metrics.json").exists()

    resumed = run_py(*COMMON, data, f"hydra.run.dir={crashed}", "ckpt_path=last")
    assert "Restoring states from the checkpoint path" in resumed.stdout + resumed.stderr

    for tag in ("train/loss", "val/loss", "train/lr"):
        want, got = scalars(full, tag), scalars(crashed, tag)
        assert len(want) == (12 if tag != "val/loss" else 2), want
        assert got == want, f"{tag}: resumed {got} != uninterrupted {want}"
