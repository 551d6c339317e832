"""benchmarks/bench_gla.py: the tiny run (one shape, Triton interpreter on CPU) times our kernel forward and
forward+backward and writes its table and JSON; an unavailable provider is a table cell, not a crash."""
from __future__ import annotations

import json
import os

import torch

from tests.helpers import load_script

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (the script reads --tiny from argv)


def _bench():
    return load_script("benchmarks/bench_gla.py")


def test_tiny_run_writes_table_and_json(tmp_path):
    bench = _bench()
    bench.main(["--out", str(tmp_path), "--tiny", "--providers", "ours_chunk,nope", "--key-ratio", "0.5"])
    data = json.loads((tmp_path / "bench_gla.json").read_text())
    cells = data["cells"]
    assert all(isinstance(cells[f"ours_chunk|{m}|1,40,2,32"], float) and cells[f"ours_chunk|{m}|1,40,2,32"] > 0
               for m in ("fwd", "fwdbwd"))
    assert cells["nope|fwd|1,40,2,32"].startswith("unknown provider")
    assert data["meta"]["options"] == {"key_ratio": 0.5}
    md = (tmp_path / "bench_gla.md").read_text()
    assert "| 1, 40, 2, 32 | fwdbwd |" in md and "K = 0.5 D" in md
