"""benchmarks/bench_eval.py runs end to end on stand-in tasks (a tiny model, two tasks) and writes its table."""
from __future__ import annotations

import json

import pytest

from tests.helpers import ROOT

pytest.importorskip("lm_eval")


@pytest.mark.slow  # ~25 s: six lm-eval runs, each with lm-eval's fixed cost of a few seconds
def test_bench_eval_tiny_writes_the_expected_full_run_time(tmp_path, monkeypatch):
    import runpy
    import sys

    out = tmp_path / "bench"
    monkeypatch.setattr(sys, "argv", ["bench_eval.py", "--out", str(out), "--tiny", "--tasks", "piqa", "lambada_openai",
                                      "--task-dir", str(tmp_path / "tasks")])
    runpy.run_path(str(ROOT / "benchmarks" / "bench_eval.py"), run_name="__main__")
    result = json.loads((out / "bench_eval.json").read_text())
    assert [r["task"] for r in result["tasks"]] == ["lambada_openai", "piqa"]
    for r in result["tasks"]:
        assert r["examples_timed"] == 4 and r["expected_full_s"] >= r["seconds"] - 1e-9
        assert r["full_examples"] == {"piqa": 1838, "lambada_openai": 5153}[r["task"]]
    assert result["expected_full_run_s"] == pytest.approx(sum(r["expected_full_s"] for r in result["tasks"]))
    assert "Expected full run" in (out / "bench_eval.md").read_text()
    rows = (tmp_path / "tasks" / "standin_piqa.jsonl").read_text().splitlines()
    assert len(rows) == 1838 and len(json.loads(rows[0])["choices"]) == 2
