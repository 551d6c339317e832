"""bench_model.py runs end to end in its CPU dry-run mode and writes its table, JSON, plot and profile."""
from __future__ import annotations

import json

from tests.helpers import load_script


def test_bench_model_dry_run_writes_outputs(tmp_path):
    mod = load_script("benchmarks/bench_model.py")
    res = mod.main(["--dry-run", "--profile", "--lengths", "32x2", "48x1", "--models", "deltanet", "transformer",
                    "deltanet_hybrid_swa", "--out", str(tmp_path)])
    assert {r["model"] for r in res["results"]} == {"deltanet", "transformer", "deltanet_hybrid_swa"}
    assert all(r["tokens_per_s"] > 0 and r["mfu"] > 0 and r["loss"] > 0 for r in res["results"])
    for r in res["results"]:  # the median step sets tokens/s; the spread and the wall-clock mean come with it
        assert r["ms_min"] <= r["ms"] <= r["ms_max"] and r["ms_mean_wall"] > 0
        assert abs(r["tokens_per_s"] - r["T"] * r["B"] / (r["ms"] / 1e3)) < 1e-6 * r["tokens_per_s"]
    assert json.loads((tmp_path / "bench_model.json").read_text())["results"] == res["results"]
    md = (tmp_path / "bench_model.md").read_text()
    assert "| 32, 2 |" in md and "| 48, 1 |" in md and "deltanet / transformer tokens/s" in md
    assert "step time (ms): median (fastest-slowest step)" in md
    assert (tmp_path / "bench_model.png").stat().st_size > 0
    prof = (tmp_path / "bench_model_profile.md").read_text()
    assert prof.count("## ") == 3 and "aten::" in prof
    # the all-kernels row counts every launch of the step (not only the top rows')
    for ks in res["profile"]["kernels"].values():
        assert ks[-1]["kernel"] == mod.ALL_KERNELS and ks[-1]["calls"] >= sum(k["calls"] for k in ks[:-1]) > 0


def test_busy_line_gives_the_share_of_the_step_in_kernels():
    mod = load_script("benchmarks/bench_model.py")
    assert mod.busy_line(30.0, 1200, 120.0) == ("1200 kernel launches, 30.0 ms of kernels; the step takes 120.0 ms "
                                                "in the table, so the GPU runs kernels for 25% of it.")
    assert mod.busy_line(30.0, 1200, None) == "1200 kernel launches, 30.0 ms of kernels."


def test_mixer_flops_counts_window_and_chunk():
    mod = load_script("benchmarks/bench_model.py")
    from deltanet import DeltaNetConfig
    c = DeltaNetConfig(family="transformer", hidden_size=64, num_heads=2, num_layers=1)
    assert mod.mixer_flops(c, 4, 1) == 3 * 4 * 2 * 32 * (1 + 2 + 3 + 4)
    w = DeltaNetConfig(family="transformer", hidden_size=64, num_heads=2, num_layers=1, attn_window=2)
    assert mod.mixer_flops(w, 4, 1) == 3 * 4 * 2 * 32 * (1 + 2 + 2 + 2)
    d = DeltaNetConfig(hidden_size=64, num_heads=2, num_layers=1, chunk_size=16)
    assert mod.mixer_flops(d, 10, 3) == 3 * 3 * 10 * 2 * (6 * 32 * 32 + 16 * 3 * 32)
    gla = DeltaNetConfig(family="gla", hidden_size=64, num_heads=2, num_layers=1, chunk_size=16)
    assert mod.mixer_flops(gla, 10, 3) == 3 * 3 * 10 * 2 * (4 * 16 * 32 + 16 * (16 + 32))  # K = D / 2 = 16
    ret = DeltaNetConfig(family="retnet", hidden_size=64, num_heads=2, num_layers=1, chunk_size=16)
    assert mod.mixer_flops(ret, 10, 3) == 3 * 3 * 10 * 2 * (6 * 32 * 64 + 16 * (2 * 32 + 64))  # V = 2 K = 64


def test_bench_model_dry_run_gla(tmp_path):
    mod = load_script("benchmarks/bench_model.py")
    res = mod.main(["--dry-run", "--lengths", "32x1", "--models", "gla", "--out", str(tmp_path)])
    assert [r["model"] for r in res["results"]] == ["gla"] and res["results"][0]["tokens_per_s"] > 0
