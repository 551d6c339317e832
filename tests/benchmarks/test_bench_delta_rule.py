"""benchmarks/bench_delta_rule.py's tiny run (Triton interpreter on CPU) and its table filled over several commands:
``--max-seconds`` writes the cells it did not start as skipped, ``--resume`` runs only those and keeps the earlier
shapes, and a resumed command with another timing is refused."""
from __future__ import annotations

import json
import os

import pytest
import torch

from tests.helpers import load_script

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported


def _json(out):
    return json.loads((out / "bench_delta_rule.json").read_text())


def test_tiny_run_then_resume(tmp_path):
    bench = load_script("benchmarks/bench_delta_rule.py")
    base = ["--out", str(tmp_path), "--tiny", "--providers", "ours_chunk,ours_recurrent,nope"]
    bench.main(base + ["--max-seconds", "0"])
    (row,) = _json(tmp_path)["results"]
    assert row["fwd"] == {"ours_chunk": "skipped (time)", "ours_recurrent": "skipped (time)", "nope": "skipped (time)"}
    bench.main(base + ["--resume"])
    data = _json(tmp_path)
    (row,) = data["results"]
    assert all(isinstance(row[m][p], float) and row[m][p] > 0 for m in ("fwd", "fwdbwd")
               for p in ("ours_chunk", "ours_recurrent"))
    assert row["fwd"]["nope"] == "unknown provider"
    assert row["rel_err_chunk_vs_recurrent"] < 1e-2  # float16, chunk against token by token
    measured = row["fwd"]["ours_chunk"]
    bench.main(base + ["--resume"])  # nothing left to run: the measured cells stay as they are
    assert _json(tmp_path)["results"][0]["fwd"]["ours_chunk"] == measured
    md = (tmp_path / "bench_delta_rule.md").read_text()
    assert "Commands behind this table, in order:" in md and "    3: python benchmarks/bench_delta_rule.py" in md
    assert "| 1, 40, 2, 32 |" in md


def test_resume_refuses_another_timing(tmp_path):
    bench = load_script("benchmarks/bench_delta_rule.py")
    bench.main(["--out", str(tmp_path), "--tiny", "--providers", "ours_chunk", "--max-seconds", "0"])
    data = _json(tmp_path)
    data["timing"] = "triton.testing.do_bench median, warmup=25 ms, rep=7 ms"
    (tmp_path / "bench_delta_rule.json").write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="timing"):
        bench.main(["--out", str(tmp_path), "--tiny", "--providers", "ours_chunk", "--resume"])


def test_bad_shapes_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_script("benchmarks/bench_delta_rule.py").main(["--out", str(tmp_path), "--shapes", "1,2,3"])
    assert "--shapes must be B,T,H,D (four integers each)" in capsys.readouterr().err
