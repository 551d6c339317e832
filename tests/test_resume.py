"""Runs that lose no time: killed (SIGKILL) or preempted (SIGTERM) runs resume from their directory alone
(`python run.py ckpt_path=<run dir>`) and log the same loss at every step as an uninterrupted run.

Deterministic smoke runs (CPU, `trainer.deterministic=true`) with the token recipe (global batch 512 tokens = 4 x 64 x
2 micro-batches), validation every 6 steps and a checkpoint every 4. The `transformer` family keeps this cheap on
2 CPU cores; the resume path (model, optimizer, scheduler, step, RNG, data position) is the same for every family.
The resumed runs repeat none of the original overrides: the config comes from the run directory, and only
`~callbacks.fault` (drop the fault injector) goes on top.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT, read_scalars, run_py

COMMON = ["experiment=smoke", "model=transformer", "trainer.accelerator=cpu", "trainer.deterministic=true", "seed=11",
          "recipe.global_batch_tokens=512", "recipe.train_tokens=6144", "recipe.warmup_tokens=1024",
          "recipe.val_every_steps=6", "trainer.log_every_n_steps=1", "callbacks.model_checkpoint.every_n_train_steps=4",
          "run_final_validation=false"]
FAULT = "+callbacks.fault._target_=tests.fault_injector.FaultInjector"


def run_raw(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *overrides], cwd=ROOT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=600)


def scalars(run_dir, tag) -> dict[int, float]:
    by_step: dict[int, float] = {}
    for step, value in read_scalars(run_dir, tag):
        assert by_step.setdefault(step, value) == value, f"{tag} at step {step} logged twice with different values"
    return by_step


def assert_same_curves(full, resumed) -> None:
    for tag in ("train/loss", "val/loss", "train/lr"):
        want, got = scalars(full, tag), scalars(resumed, tag)
        assert len(want) == (12 if tag != "val/loss" else 2), want
        assert got == want, f"{tag}: resumed {got} != uninterrupted {want}"


def global_step(ckpt) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, shared_data_dir):
    full = tmp_path_factory.mktemp("full") / "run"
    run_py(*COMMON, f"paths.data_dir={shared_data_dir}", f"hydra.run.dir={full}")
    return full


def test_sigkill_then_resume_from_the_run_directory_alone(full_run, tmp_path, shared_data_dir):
    crashed = tmp_path / "crashed"
    proc = run_raw(*COMMON, f"paths.data_dir={shared_data_dir}", f"hydra.run.dir={crashed}", FAULT,
                   "+callbacks.fault.sigkill_at_step=9")
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-3000:])
    ckpts = sorted(p.name for p in (crashed / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["last.ckpt", "step0000004.ckpt", "step0000008.ckpt"], ckpts
    assert not (crashed / "metrics.json").exists()

    # A config that does not fit the checkpoint is refused before training, naming the key, in one short paragraph.
    bad = run_raw(f"ckpt_path={crashed / 'checkpoints' / 'last.ckpt'}", "model.hidden_size=128")
    assert bad.returncode == 1, bad.stderr[-3000:]
    assert "model.hidden_size: checkpoint 64, config 128" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) <= 6, bad.stderr
    group = run_raw(f"ckpt_path={crashed}", "model=deltanet")
    assert group.returncode == 1 and "the run used model=transformer" in group.stderr, group.stderr[-3000:]

    resumed = run_py(f"ckpt_path={crashed}", "~callbacks.fault")
    out = resumed.stdout + resumed.stderr
    assert f"Resuming {crashed.resolve()} from checkpoints/last.ckpt" in out and "~callbacks.fault" in out, out[-3000:]
    assert "Restoring states from the checkpoint path" in out
    assert (crashed / "metrics.json").exists()
    assert_same_curves(full_run, crashed)


def test_sigterm_saves_and_stops_cleanly_then_resumes_exactly(full_run, tmp_path, shared_data_dir):
    run_dir = tmp_path / "preempted"
    # SIGTERM lands as step 9's first micro-batch starts: step 9 finishes, is saved as last.ckpt (global step 10),
    # logged, and the run stops before step 10.
    proc = run_raw(*COMMON, f"paths.data_dir={shared_data_dir}", f"hydra.run.dir={run_dir}", FAULT,
                   "+callbacks.fault.sigterm_at_step=9")
    assert proc.returncode == 143, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "Stopped on SIGTERM after step 10" in proc.stderr and f"ckpt_path={run_dir}" in proc.stderr
    assert global_step(run_dir / "checkpoints" / "last.ckpt") == 10
    assert not list((run_dir / "checkpoints").glob(".*tmp*"))
    assert max(scalars(run_dir, "train/loss")) == 9  # steps 0..9 logged

    run_py(f"ckpt_path={run_dir}", "~callbacks.fault")
    assert_same_curves(full_run, run_dir)


def test_time_based_checkpoint_rewrites_last_ckpt(tmp_path, shared_data_dir):
    run_dir = tmp_path / "run"
    # every_minutes tiny: due at every step; numbered checkpoints never (every 1000 steps)
    proc = run_raw(*COMMON, f"paths.data_dir={shared_data_dir}", f"hydra.run.dir={run_dir}",
                   "callbacks.model_checkpoint.every_n_train_steps=1000", "callbacks.model_checkpoint.every_minutes=1e-9",
                   FAULT, "+callbacks.fault.sigkill_at_step=5")
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
    assert global_step(run_dir / "checkpoints" / "last.ckpt") == 5


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, shared_data_dir):
    run_dir = tmp_path / "run"
    proc = run_raw(*COMMON, f"paths.data_dir={shared_data_dir}", f"hydra.run.dir={run_dir}", FAULT,
                   "+callbacks.fault.enospc_at_step=6")  # the checkpoint at step 8 hits a full disk
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and "No space left on device" in proc.stderr, proc.stderr[-3000:]
    assert "the previous last.ckpt is kept unchanged" not in proc.stderr  # the numbered file fails first: none there
    files = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert files == ["last.ckpt", "step0000004.ckpt"], files  # no partial step0000008.ckpt, no temporary file
    assert global_step(run_dir / "checkpoints" / "last.ckpt") == 4  # what `ckpt_path=<run dir>` resumes from


def test_resume_errors_are_one_paragraph(tmp_path):
    proc = run_raw(f"ckpt_path={tmp_path / 'nowhere'}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"no checkpoint file or run directory at {tmp_path / 'nowhere'}" in proc.stderr
    debug = subprocess.run([sys.executable, str(ROOT / "run.py"), f"ckpt_path={tmp_path / 'nowhere'}"], cwd=ROOT,
                           env={**os.environ, "DELTANET_DEBUG": "1"}, capture_output=True, text=True, timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr + debug.stdout


@pytest.mark.gpu
def test_sigterm_under_two_gpu_ddp_saves_stops_and_resumes(tmp_path, shared_data_dir):
    """The SIGTERM decision is an all-reduce over the ranks (NCCL here): every rank saves and stops at the same step."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    run_dir = tmp_path / "run"
    ddp = ["experiment=smoke", "model=transformer", "trainer=ddp", "trainer.devices=2", "recipe.global_batch_tokens=1024",
           "recipe.train_tokens=6144", "recipe.warmup_tokens=1024", "recipe.val_every_steps=3",
           "trainer.log_every_n_steps=1", f"paths.data_dir={shared_data_dir}"]
    proc = run_raw(*ddp, f"hydra.run.dir={run_dir}", FAULT, "+callbacks.fault.sigterm_at_step=3")
    assert proc.returncode == 143, (proc.returncode, proc.stderr[-3000:])
    assert "Stopped on SIGTERM after step 4" in proc.stderr and "Traceback" not in proc.stderr
    assert global_step(run_dir / "checkpoints" / "last.ckpt") == 4
    run_py(f"ckpt_path={run_dir}", "~callbacks.fault")
    assert sorted(scalars(run_dir, "train/loss")) == list(range(6))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
