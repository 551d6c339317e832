"""`python run.py -m experiment=mad` over all six tasks at toy size (one process, CPU): each run logs val/acc and
writes it to metrics.json, and scripts/mad_report.py turns the sweep into the paper's table."""
from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from datamodules.mad import TASKS
from scripts.mad_report import COLUMNS, main as report
from tests.helpers import read_scalars, run_py


def test_multirun_of_the_six_tasks_logs_accuracy_and_makes_the_table(tmp_path):
    sweep = tmp_path / "sweep"
    tasks = ",".join(task for task, _ in COLUMNS)
    proc = run_py("-m", "experiment=mad", "model=deltanet", f"data.task={tasks}", "trainer.accelerator=cpu",
                  f"hydra.sweep.dir={sweep}", "model.hidden_size=32", "model.num_heads=2",
                  "data.num_train_examples=16", "data.num_test_examples=8", "data.batch_size=8",
                  "trainer.max_steps=2", "trainer.val_check_interval=1")
    assert proc.stdout.count("Final validation:") == len(TASKS)
    seen = {}
    for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
        task = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["data"]["task"]
        acc = json.loads((job / "metrics.json").read_text())["metrics"]["val/acc"]
        assert 0.0 <= acc <= 1.0
        logged = read_scalars(job, "val/acc")
        assert len(logged) >= 2 and all(0.0 <= a <= 1.0 for _, a in logged), task
        seen[task] = acc
    assert set(seen) == set(TASKS)
    out = report([str(sweep), "--out", str(tmp_path / "table")])
    md = (tmp_path / "table" / "mad.md").read_text()
    assert "| family | compress | fuzzy recall | in-context recall | memorize | noisy recall | selective copy | average |" in md
    scores = out["deltanet"]["scores"]
    assert [scores[name] for _, name in COLUMNS] == [100.0 * seen[task] for task, _ in COLUMNS]
    assert math.isclose(out["deltanet"]["average"], sum(scores.values()) / 6)


def _fake_run(root: Path, name: str, family: str, task: str, acc: float) -> None:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
        {"data": {"_target_": "datamodules.mad.MADDataModule", "task": task}}))
    (run / "metrics.json").write_text(json.dumps({"metrics": {"val/acc": acc}, "model": {"family": family}}))


def test_report_keeps_the_best_run_per_cell_orders_columns_and_skips_other_runs(tmp_path):
    root = tmp_path / "runs"
    for i, (task, _) in enumerate(COLUMNS):
        _fake_run(root, f"t{i}a", "transformer", task, 0.1 * (i + 1))
        _fake_run(root, f"t{i}b", "transformer", task, 0.05 * (i + 1))  # a worse learning rate: not kept
    _fake_run(root, "d0", "deltanet", "in_context_recall", 1.0)
    other = root / "lm"  # a language-model run: not part of the table
    (other / ".hydra").mkdir(parents=True)
    (other / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"data": {"_target_": "datamodules.lm.X"}}))
    (other / "metrics.json").write_text(json.dumps({"metrics": {"val/acc": 0.9}, "model": {"family": "gla"}}))
    out = report([str(root), "--out", str(tmp_path / "t"), "--families", "deltanet", "transformer"])
    assert list(out) == ["deltanet", "transformer"]
    assert [round(v, 6) for v in out["transformer"]["scores"].values()] == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    assert math.isclose(out["transformer"]["average"], 35.0)
    assert out["deltanet"]["average"] is None and out["deltanet"]["scores"]["in-context recall"] == 100.0
    md = (tmp_path / "t" / "mad.md").read_text().splitlines()
    at = md.index("| deltanet | - | - | 100.0 | - | - | - | - |")
    assert md[at + 1] == "| transformer | 10.0 | 20.0 | 30.0 | 40.0 | 50.0 | 60.0 | 35.0 |"
    assert md[at + 2] == "| DeltaNet, paper | 42.2 | 35.7 | 100.0 | 52.8 | 100.0 | 100.0 | 71.8 |"
    assert "| transformer | memorization | - | None / None | - | - | None | None | t3a |" in md  # the kept run, per cell


def test_report_marks_runs_stopped_before_their_planned_steps(tmp_path):
    """A run cut by trainer.max_time is starred; steps planned come from the run's own config."""
    root = tmp_path / "runs"
    for name, steps in (("done", 400), ("cut", 150)):
        _fake_run(root, name, "deltanet" if name == "done" else "transformer", "memorization", 0.5)
        cfg = yaml.safe_load((root / name / ".hydra" / "config.yaml").read_text())
        cfg["mad_tasks"] = {"memorization": {"train_steps": 400}}
        cfg["trainer"] = {"max_steps": "${mad_tasks.${data.task}.train_steps}"}
        cfg["optim"] = {"optimizer": {"lr": 5e-4, "weight_decay": 0.0}}
        (root / name / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
        m = json.loads((root / name / "metrics.json").read_text())
        (root / name / "metrics.json").write_text(json.dumps({**m, "global_step": steps,
                                                              "summary": {"train_seconds": 12.3}}))
    report([str(root), "--out", str(tmp_path / "t"), "--note", "the command"])
    md = (tmp_path / "t" / "mad.md").read_text()
    assert "the command" in md and "| deltanet | - | - | - | 50.0 | - | - | - |" in md
    assert "| transformer | - | - | - | 50.0* | - | - | - |" in md and "stopped at trainer.max_time" in md
    assert "| transformer | memorization | - | 150 / 400 | 12 | - | 0.0005 | 0.0 | cut |" in md


def test_report_names_each_runs_heads(tmp_path):
    """The run table states the heads x head dim each run trained with (metrics.json's model config)."""
    root = tmp_path / "runs"
    _fake_run(root, "d", "deltanet", "selective_copying", 0.9)
    m = json.loads((root / "d" / "metrics.json").read_text())
    m["model"].update(num_heads=4, head_dim=32)
    (root / "d" / "metrics.json").write_text(json.dumps(m))
    report([str(root), "--out", str(tmp_path / "t")])
    assert "| deltanet | selective_copying | 4 x 32 | None / None |" in (tmp_path / "t" / "mad.md").read_text()
