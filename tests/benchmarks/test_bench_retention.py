"""benchmarks/bench_retention.py: the tiny run (Triton interpreter on CPU) times our retention kernel forward and
forward+backward with RetNet's fixed decays and V = 2 K, and writes its table and JSON; fla's providers are table
cells when fla is missing."""
from __future__ import annotations

import json
import math
import os

import torch

from tests.helpers import load_script

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported


def test_tiny_run_writes_table_and_json(tmp_path):
    bench = load_script("benchmarks/bench_retention.py")
    bench.main(["--out", str(tmp_path), "--tiny", "--value-ratio", "2"])
    data = json.loads((tmp_path / "bench_retention.json").read_text())
    assert data["meta"]["options"] == {"value_ratio": 2.0}
    assert data["providers"] == ["ours_chunk", "fla_chunk", "fla_chunk_unguarded", "fla_retention"]
    md = (tmp_path / "bench_retention.md").read_text()
    assert "| ours/fla | ours/fla, guard lifted | ours/fla_retention |" in md
    assert all(isinstance(data["cells"][f"ours_chunk|{m}|1,40,2,32"], float) for m in ("fwd", "fwdbwd"))
    assert "K = D, V = 2 D" in (tmp_path / "bench_retention.md").read_text()


def test_inputs_are_retnets():
    bench = load_script("benchmarks/bench_retention.py")
    (q, k, v, g), do = bench.make_inputs(2, 8, 3, 16, device="cpu", dtype=torch.float32, value_ratio=2)
    assert v.shape == do.shape == (2, 8, 3, 32) and q.shape == (2, 8, 3, 16)
    assert torch.allclose(g[1, 5], torch.tensor([math.log(1 - 2.0 ** (-5 - h)) for h in range(3)]))
    assert not g.requires_grad and q.requires_grad and v.requires_grad
