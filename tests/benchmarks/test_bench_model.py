"""bench_model.py runs end to end in its CPU dry-run mode and writes its table, JSON, plot and profile."""
from __future__ import annotations

import json

import pytest

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


def test_graph_models_parse_and_need_cuda(tmp_path, capsys):
    """``<model>@graph`` names a CUDA-graph step of a known model; on the CPU dry run it is refused, naming it."""
    mod = load_script("benchmarks/bench_model.py")
    assert mod.model_name("deltanet@graph") == "deltanet@graph" and mod.base_model("deltanet@graph") == "deltanet"
    with pytest.raises(SystemExit):
        mod.main(["--dry-run", "--models", "deltanet@grap", "--out", str(tmp_path)])
    assert "unknown model 'deltanet@grap'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mod.main(["--dry-run", "--models", "deltanet", "transformer@graph", "--out", str(tmp_path)])
    assert "transformer@graph: a CUDA-graph step needs a CUDA device" in capsys.readouterr().err


def test_tables_set_a_graph_step_against_its_eager_step():
    mod = load_script("benchmarks/bench_model.py")
    row = dict(T=64, B=2, params=1e6, mfu=0.1, peak_mem_gib=1.0, ms=1.0, ms_min=1.0, ms_max=1.0)
    rows = [{**row, "model": "deltanet", "tokens_per_s": 100.0}, {**row, "model": "deltanet@graph",
                                                                   "tokens_per_s": 125.0}]
    assert "- T = 64: deltanet@graph / deltanet tokens/s 1.25" in mod.tables(rows, ["deltanet", "deltanet@graph"],
                                                                             [(64, 2)])


@pytest.mark.gpu
def test_gpu_graph_step_trains_as_the_eager_step():
    """The captured step replays the eager step's work: after the same number of steps from the same weights, the
    same loss (bf16 noise) and the weights moved."""
    import torch

    mod = load_script("benchmarks/bench_model.py")
    losses = {}
    for kind in ("eager", "graph"):
        torch.manual_seed(0)
        model = mod.DeltaNetForCausalLM(mod.DeltaNetConfig(**mod.DRY_SIZES)).cuda()
        ids = torch.randint(0, 97, (2, 64), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=True)
        w0 = model.lm_head.weight.detach().clone()
        step = mod.model_step("deltanet" if kind == "eager" else "deltanet@graph", model, ids, opt, "cuda", 2)
        if kind == "eager":
            for _ in range(2):
                step()
        out = [float(step()) for _ in range(3)]
        assert not torch.equal(model.lm_head.weight, w0)
        losses[kind] = out
    assert losses["graph"] == pytest.approx(losses["eager"], rel=2e-2)
    assert losses["graph"][-1] < losses["graph"][0]
