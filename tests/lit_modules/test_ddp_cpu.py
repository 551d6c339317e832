"""trainer=ddp through run.py on 2 CPU processes (gloo): Lightning relaunches run.py for rank 1 into the same Hydra run
directory, the recipe derives the accumulation from the world size, and only rank 0 writes metrics.json."""
from __future__ import annotations

import json
import math

import pytest

from tests.helpers import read_scalars, run_py


@pytest.mark.slow
def test_ddp_two_cpu_processes_keep_the_global_batch(tmp_path, shared_data_dir):
    run_dir = tmp_path / "run"
    proc = run_py("experiment=smoke", "model=transformer", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                  "recipe.global_batch_tokens=1024", "recipe.train_tokens=6144", "recipe.warmup_tokens=1024",
                  "recipe.val_every_steps=3", "trainer.log_every_n_steps=1", f"hydra.run.dir={run_dir}",
                  f"paths.data_dir={shared_data_dir}")
    assert "Batch: global 1,024 tokens = 2 device(s) x 4 sequences x 64 tokens x 2 accumulation step(s)" in proc.stdout
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["global_step"] == 6 and summary["plan"]["world_size"] == 2
    assert summary["summary"]["tokens_seen"] == 6 * 1024  # counted over both ranks
    losses = read_scalars(run_dir, "train/loss")
    assert [s for s, _ in losses] == sorted({s for s, _ in losses}) and len(losses) == 6
    assert all(math.isfinite(v) for _, v in losses) and math.isfinite(summary["metrics"]["val/loss"])
