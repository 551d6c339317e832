"""benchmarks/bench_short_conv.py: the tiny run (Triton interpreter on CPU) times both providers forward and
forward+backward and writes the table, the ratio column and the JSON; the two providers compute the same op."""
from __future__ import annotations

import json

import torch

from benchmarks import bench_short_conv as bench


def test_tiny_run_writes_table_and_json(tmp_path):
    bench.main(["--out", str(tmp_path), "--tiny"])
    md = (tmp_path / "bench_short_conv.md").read_text()
    assert "| B, T, H, D | mode | ours | torch | ours/torch |" in md
    cells = json.loads((tmp_path / "bench_short_conv.json").read_text())["cells"]
    for key in ("ours|fwd|1,40,2,32", "ours|fwdbwd|1,40,2,32", "torch|fwd|1,40,2,32", "torch|fwdbwd|1,40,2,32"):
        assert isinstance(cells[key], float), (key, cells.get(key))


def test_providers_agree():
    (x, wq, wk, wv, D), do = bench.make_inputs(2, 37, 2, 16, device="cpu", dtype=torch.float32)
    p = bench.load_providers()
    outs, grads = [], []
    for name in ("ours", "torch"):
        for t in (x, wq, wk, wv):
            t.grad = None
        o = p[name](x, wq, wk, wv, D)
        o.backward(do)
        outs.append(o.detach())
        grads.append([t.grad.clone() for t in (x, wq, wk, wv)])
    assert torch.allclose(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
