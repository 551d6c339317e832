"""scripts/mqar_sweep.py: the commands `launch` builds, the report from run records, and a tiny sweep end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.mqar_sweep import best_runs, main

TINY = ["trainer.accelerator=cpu", "data.vocab_size=128", "model.vocab_size=128", "data.seq_len=32",
        "data.num_kv_pairs=4", "data.num_train_examples=32", "data.num_test_examples=16", "data.batch_size=8",
        "trainer.max_steps=4", "trainer.val_check_interval=2", "optim.scheduler.warmup_steps=1",
        "callbacks.model_checkpoint.every_n_train_steps=null", "run_final_validation=false"]


def _record(family: str, width: int, lr: float, acc: float, sequences: int, **kw) -> dict:
    steps = sequences // 256
    curve = [{"step": 0, "sequences": 0, "seconds": 0.0, "acc": 0.0, "loss": 9.0},
             {"step": steps, "sequences": sequences, "seconds": sequences / 1000, "acc": acc, "loss": 1.0}]
    return {"family": family, "width": width, "num_heads": max(1, width // 64), "num_layers": 2, "params": 1000,
            "lr": lr, "batch_size": 256, "seq_len": 512, "kv_pairs": 64, "train_kv_pairs": [4, 8, 16, 32, 64],
            "fresh_train_data": True, "num_train": 100_000, "steps": steps, "sequences": sequences,
            "train_seconds": sequences / 1000, "final_acc": acc, "best_acc": acc, "device": "NVIDIA H200",
            "torch": "2.11.0", "triton": "3.6.0", "curve": curve, **kw}


def _write_runs(root: Path, records: list[dict]) -> None:
    for i, r in enumerate(records):
        d = root / f"run{i}"
        d.mkdir(parents=True)
        (d / "mqar_run.json").write_text(json.dumps(r))


RECORDS = [
    _record("deltanet", 64, 1e-3, 0.50, 900_000),
    _record("deltanet", 64, 3e-3, 0.93, 2_000_000),  # best at 64: highest accuracy, none reached the target
    _record("deltanet", 128, 1e-3, 0.995, 600_000),
    _record("deltanet", 128, 3e-3, 0.991, 400_000),  # best at 128: reached the target with fewer sequences
    _record("deltanet", 128, 1e-2, 0.0002, 300_000),
    _record("transformer", 64, 1e-3, 0.20, 2_500_000),
]


def test_best_run_is_the_fewest_sequences_to_the_target_else_the_highest_accuracy():
    best = best_runs(RECORDS, target=0.99)
    assert list(best) == [("deltanet", 64), ("deltanet", 128), ("transformer", 64)]
    assert best["deltanet", 64]["lr"] == 3e-3 and best["deltanet", 128]["lr"] == 3e-3
    assert best_runs(RECORDS, target=0.999)["deltanet", 128]["lr"] == 1e-3  # neither reached: the higher accuracy


def test_report_writes_table_json_and_plot_and_regenerates_from_its_json(tmp_path):
    _write_runs(tmp_path / "runs", RECORDS)
    out = tmp_path / "results"
    main(["report", str(tmp_path / "runs"), "--out", str(out), "--note", "one seed per run"])
    md = (out / "mqar.md").read_text()
    assert ("| deltanet | 64 | 93.00% | 0.003 | 256 | mix 4,8,16,32,64 pairs, fresh | 2,000,000 | 2000 | "
            "0.001, 0.003 |") in md
    assert "| deltanet | 128 | 99.10% | 0.003 |" in md and "0.001, 0.003, 0.01 |" in md
    assert "Below the target (deltanet 64, transformer 64)" in md and "budget-limited" in md
    assert "- one seed per run" in md and "NVIDIA H200, torch 2.11.0, triton 3.6.0" in md
    assert md.count("| deltanet_w128_lr") == 3 and "| deltanet_w128_lr0.003_b256_mix_fresh |" in md
    assert "call" not in md.lower() and "session" not in md.lower()
    data = json.loads((out / "mqar.json").read_text())
    assert len(data["runs"]) == 6 and [b["lr"] for b in data["best"]] == [3e-3, 3e-3, 1e-3]
    assert all("curve" not in b for b in data["best"]) and data["notes"] == ["one seed per run"]
    assert (out / "mqar.png").stat().st_size > 10_000
    again = tmp_path / "again"  # from the report's own JSON, notes included
    main(["report", str(out / "mqar.json"), "--out", str(again)])
    strip = lambda text: [l for l in text.splitlines() if "mqar_sweep.py report" not in l]  # noqa: E731
    assert strip((again / "mqar.md").read_text()) == strip(md)


def test_report_without_records_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no mqar_run.json"):
        main(["report", str(tmp_path), "--out", str(tmp_path / "out")])


def test_launch_dry_run_builds_one_run_py_command_per_point(tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "deltanet_w64_lr0.001").mkdir(parents=True)
    (runs / "deltanet_w64_lr0.001" / "metrics.json").write_text("{}")  # finished: skipped
    (runs / "deltanet_w128_lr0.001" / "checkpoints").mkdir(parents=True)
    (runs / "deltanet_w128_lr0.001" / "checkpoints" / "last.ckpt").write_text("")  # a Lightning run cut short
    main(["launch", "--runs", str(runs), "--family", "deltanet", "transformer", "--width", "64", "128",
          "--lr", "1e-3", "--dry-run", "--", "data.fresh_train_data=true"])
    cmds = capsys.readouterr().out.strip().splitlines()
    assert len(cmds) == 3
    by_dir = {c.split("hydra.run.dir=")[1].split()[0]: c for c in cmds}
    assert str(runs / "deltanet_w64_lr0.001") not in by_dir
    resumed = by_dir[str(runs / "deltanet_w128_lr0.001")]
    assert "model.hidden_size=128 model.num_heads=2 optim.optimizer.lr=0.001" in resumed
    t64 = by_dir[str(runs / "transformer_w64_lr0.001")]
    assert "experiment=mqar model=transformer" in t64 and "model.num_heads=1" in t64
    assert all("task=train_fast" in c and "callbacks=early_stopping" in c for c in cmds) and "ckpt_path" not in t64
    assert resumed.endswith("data.fresh_train_data=true")  # a Lightning checkpoint is not the fast loop's state
    (runs / "deltanet_w128_lr0.001" / "checkpoints" / "fast_loop.pt").write_text("")  # a fast-loop run cut short
    main(["launch", "--runs", str(runs), "--family", "deltanet", "--width", "128", "--lr", "1e-3", "--dry-run"])
    assert capsys.readouterr().out.strip().endswith("ckpt_path=last")
    (runs / "deltanet_w128_lr0.001" / "checkpoints" / "fast_loop.pt").unlink()
    main(["launch", "--runs", str(runs), "--family", "deltanet", "--width", "128", "--lr", "1e-3", "--task", "train",
          "--dry-run"])
    lightning = capsys.readouterr().out.strip()
    assert "task=train experiment=mqar" in lightning and lightning.endswith("ckpt_path=last")  # Lightning resumes


def test_tiny_sweep_on_cpu_end_to_end(tmp_path):
    """Two real runs of the fast loop through run.py (sharing the machine), their records, and the report."""
    runs, out = tmp_path / "runs", tmp_path / "results"
    main(["launch", "--runs", str(runs), "--family", "deltanet", "--width", "32", "--lr", "1e-3", "3e-3",
          "--head-dim", "32", "--workers", "2", "--", *TINY])
    for name in ("deltanet_w32_lr0.001", "deltanet_w32_lr0.003"):
        assert (runs / name / "metrics.json").is_file(), (runs / f"{name}.log").read_text()[-3000:]
        rec = json.loads((runs / name / "mqar_run.json").read_text())
        assert [p["step"] for p in rec["curve"]] == [2, 4] and rec["sequences"] == 32
    main(["report", str(runs), "--out", str(out)])
    data = json.loads((out / "mqar.json").read_text())
    assert len(data["runs"]) == 2 and len(data["best"]) == 1 and data["best"][0]["width"] == 32


def test_launch_spreads_runs_over_the_gpus(tmp_path, monkeypatch, capsys):
    """--gpus: each run starts on the GPU with the fewest runs in flight (CUDA_VISIBLE_DEVICES of its process)."""
    import scripts.mqar_sweep as sweep

    started = []

    class FakeRun:  # a run that is still going at its first poll and done at its second
        def __init__(self, cmd, env, **kw):
            started.append((cmd[cmd.index("experiment=mqar") + 1], env.get("CUDA_VISIBLE_DEVICES")))
            self.polls, self.returncode = 0, None

        def poll(self):
            self.polls += 1
            self.returncode = 0 if self.polls > 1 else None
            return self.returncode

    monkeypatch.setattr(sweep.subprocess, "Popen", FakeRun)
    monkeypatch.setattr(sweep.time, "sleep", lambda s: None)
    main(["launch", "--runs", str(tmp_path / "runs"), "--family", "deltanet", "--width", "64", "128", "--lr", "1e-3",
          "3e-3", "--workers", "3", "--gpus", "2", "5"])
    gpus = [g for _, g in started]
    assert len(started) == 4 and gpus[:3] == ["2", "5", "2"]  # the first three at once: 2, then 5, then 2 again
    assert "on GPU 5" in capsys.readouterr().out
    main(["launch", "--runs", str(tmp_path / "dry"), "--family", "deltanet", "--width", "64", "128", "--lr", "1e-3",
          "--gpus", "0", "1", "--dry-run"])
    cmds = capsys.readouterr().out.strip().splitlines()
    assert [c.split()[0] for c in cmds] == ["CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"]
