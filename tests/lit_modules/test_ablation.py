"""The ablation multirun (experiment=ablation_small, swept with -m) and scripts/collect_results.py's table."""
from __future__ import annotations

import json
import re

from tests.helpers import load_script, run_py


def load_collect():
    return load_script("scripts/collect_results.py")


def test_ablation_multirun_is_collected_into_one_table(tmp_path, shared_data_dir):
    sweep = tmp_path / "sweep"
    run_py("-m", "experiment=ablation_small", "model.qk_norm=l2,l1", "model.hidden_size=32", "model.num_layers=1",
           "model.num_heads=2", "data.seq_len=32", "data.batch_size=2", "data.num_workers=0",
           "recipe.global_batch_tokens=128", "recipe.train_tokens=384", "recipe.warmup_tokens=128",
           "recipe.val_every_steps=3", "trainer.limit_val_batches=2", "trainer.accelerator=cpu",
           f"hydra.sweep.dir={sweep}", f"paths.data_dir={shared_data_dir}")
    runs = {json.loads(p.read_text())["model"]["qk_norm"]: json.loads(p.read_text())
            for p in sweep.glob("*/metrics.json")}
    assert sorted(runs) == ["l1", "l2"]
    for r in runs.values():  # 3 steps of 2 sequences x 32 tokens x 2 micro-batches, the token recipe derived
        assert r["global_step"] == 3 and r["plan"]["accumulate"] == 2 and r["summary"]["tokens_seen"] == 384

    text = load_collect().main([str(sweep), "--out", str(tmp_path / "results.md")])
    assert (tmp_path / "results.md").read_text() == text
    lines = text.strip().splitlines()
    assert lines[0].startswith("| run | model.qk_norm | val/loss | val/ppl |")
    rows = {line.split("|")[2].strip(): line for line in lines[2:]}
    assert sorted(rows) == ["l1", "l2"]
    for norm, line in rows.items():
        val = float(line.split("|")[3])
        assert abs(val - runs[norm]["metrics"]["val/loss"]) < 1e-4
    vals = [float(l.split("|")[3]) for l in lines[2:]]
    assert vals == sorted(vals)  # best first


def test_collect_results_marks_unfinished_runs(tmp_path):
    for i, (act, loss) in enumerate([("silu", 3.5), ("relu", 3.25), ("elu", float("nan"))]):
        d = tmp_path / str(i)
        (d / ".hydra").mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({
            "metrics": {"val/loss": loss, "val/ppl": 2.718 ** loss, "train/loss": 3.0}, "global_step": 10,
            "summary": {"tokens_per_s": 1234.5}, "overrides": ["experiment=ablation_small", f"model.qk_activation={act}",
                                                            "model.qk_norm=l2", f"hydra.run.dir=x{i}"]}))
    (tmp_path / "3" / ".hydra").mkdir(parents=True)  # a job that died: no metrics.json
    text = load_collect().table(load_collect().load_runs(tmp_path))
    lines = text.strip().splitlines()
    assert lines[0] == "| run | model.qk_activation | val/loss | val/ppl | train/loss | steps | tokens/s |"
    assert [l.split("|")[2].strip() for l in lines[2:]] == ["relu", "silu", "elu"]  # sorted, nan last
    assert re.search(r"\| relu \| 3\.2500 \| 25\.\d\d \| 3\.0000 \| 10 \| 123\d \|", text), text
    assert load_collect().missing_runs(tmp_path) == ["3"]
