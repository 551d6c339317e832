"""bench_prepare.py end to end in its tiny mode: the table and JSON it writes hold every run and a sound capped run."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_prepare_tiny_writes_its_table(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_prepare.py"), "--tiny", "--backend",
                           "sentencepiece", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "bench_prepare.json").read_text())
    runs = result["runs"]
    assert [(r["backend"], r["procs"], r["files"]) for r in runs] == [("sentencepiece", 1, 2), ("sentencepiece", 2, 4)]
    assert runs[0]["scaling_efficiency"] == 1.0 and all(r["tokens_per_s"] > 0 for r in runs)
    assert runs[1]["tokens"] > runs[0]["tokens"] > 100_000
    cap = result["capped_run"]
    assert cap["cap"] == runs[1]["tokens"] // 100 and cap["cap"] <= cap["tokens"] < runs[0]["tokens"]
    assert 1 <= cap["files_tokenized"] <= 2  # no file started past the cap but the ones already running
    assert result["projection"]["627B_hours"] > result["projection"]["15B_hours"] > 0
    assert "| sentencepiece | 2 | 4 |" in (tmp_path / "bench_prepare.md").read_text()
