"""End to end: `python run.py experiment=smoke` trains, logs, checkpoints, and is reproducible."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, read_scalars, run_py

FAMILIES = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))


def check_console(proc) -> None:
    """Each message once, no advertisement, no epoch counters, the progress bar within 100 columns."""
    out = proc.stdout + proc.stderr
    assert "litlogger" not in out and "Epoch" not in out and "Traceback" not in out, out[-3000:]
    lines = [l.strip() for chunk in out.split("\n") for l in chunk.split("\r") if l.strip()]
    bars = [l for l in lines if l.startswith("step ") and "|" in l]
    assert bars and max(len(l) for l in bars) <= 100, max(bars, key=len)
    assert any("loss" in l and "tok/s" in l and "val/loss" in l for l in bars), bars[-3:]
    messages = [l for l in lines if "|" not in l and not l.startswith("[") and "\x1b" not in l
                and not l.startswith(("tokenizing", "corpus already prepared", "train:", "validation:"))]
    repeated = {l for l in messages if messages.count(l) > 1}
    assert not repeated, repeated  # (the data module's lines repeat: it is set up again for the final validation)


@pytest.mark.parametrize("family", FAMILIES)
def test_smoke_run_trains_each_family(family, tmp_path, shared_data_dir):
    run_dir = tmp_path / "run"
    proc = run_py("experiment=smoke", f"model={family}", "trainer.accelerator=cpu",
                  f"hydra.run.dir={run_dir}", f"paths.data_dir={shared_data_dir}")
    assert "Model parameters:" in proc.stdout
    check_console(proc)
    line = next(l for l in proc.stdout.splitlines() if l.startswith("Final validation:"))
    val_loss = float(line.split("loss")[1].split(",")[0])
    assert math.isfinite(val_loss) and val_loss < math.log(32000), line
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    losses = read_scalars(run_dir, "train/loss")
    assert len(losses) >= 3
    assert all(math.isfinite(v) for _, v in losses)
    assert read_scalars(run_dir, "val/loss")
    # The checkpoint loads for generation, which carries the recurrent state / caches token by token.
    gen = run_py("task=generate", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "prompt=The delta rule",
                 "max_new_tokens=8", "generation.stream=true", "generation.prefill_chunk_size=2",
                 f"hydra.run.dir={tmp_path / 'gen'}",
                 f"paths.data_dir={shared_data_dir}")
    assert "The delta rule" in gen.stdout, gen.stdout[-2000:]
    assert "prefill" in gen.stdout and "new tokens, eager, static state)" in gen.stdout, gen.stdout[-2000:]


def test_same_seed_gives_identical_losses(tmp_path, shared_data_dir):
    curves = []
    for i in range(2):
        run_dir = tmp_path / f"run{i}"
        run_py("experiment=smoke", "trainer.accelerator=cpu", "trainer.deterministic=true", "seed=7",
               f"hydra.run.dir={run_dir}", f"paths.data_dir={shared_data_dir}")
        curves.append(read_scalars(run_dir, "train/loss") + read_scalars(run_dir, "val/loss"))
    assert curves[0] and curves[0] == curves[1]


def test_loss_falls_on_a_repeated_tiny_batch():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smoke"])
    torch.manual_seed(0)
    module = instantiate(cfg.lit_module, model_config=instantiate(cfg.model), scheduler=None)
    optimizer = module.configure_optimizers()
    batch = {"input_ids": torch.randint(0, 32000, (2, 32))}
    losses = []
    for _ in range(30):
        loss = module._loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_user_errors_print_one_paragraph(tmp_path):
    import os
    import subprocess
    import sys

    for override, says in [("optim.scheduler.min_lr=1.0", "optim.scheduler.min_lr=1.0 must lie in"),
                           ("data=local_files", "data.source.train")]:
        proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "experiment=smoke", "trainer.accelerator=cpu",
                               override, f"hydra.run.dir={tmp_path / 'run'}", f"paths.data_dir={tmp_path / 'data'}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert proc.returncode == 1, (override, proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr + proc.stdout and says in proc.stderr, (override, proc.stderr[-3000:])
        error = [l for l in proc.stderr.splitlines() if l.strip()]
        assert len(error) <= 3 and error[0].startswith("Error ("), error
