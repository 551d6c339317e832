"""bench_generate.py runs end to end in its CPU dry-run mode: a row per (family, batch, prompt), positive speeds and
bounds, the time box records skipped cells, and the table, JSON and plot are written."""
from __future__ import annotations

import json

from tests.helpers import load_script


def _bench():
    return load_script("benchmarks/bench_generate.py")


def test_bench_generate_dry_run_writes_outputs(tmp_path):
    mod = _bench()
    fams = ["deltanet", "deltanet_hybrid_swa", "transformer"]
    res = mod.main(["--dry-run", "--families", *fams, "--prompts", "40", "12", "--batch", "1", "2", "--steps", "3",
                    "--out", str(tmp_path)])
    rows = res["results"]
    assert [(r["family"], r["batch"], r["prompt"]) for r in rows] == [
        (f, b, p) for f in fams for b in (1, 2) for p in (12, 40)]
    assert all(r["status"] == "ok" and r["decode_tok_s"] > 0 and r["prefill_ms"] > 0 and 0 < r["bound_tok_s"]
               for r in rows)
    # the bound grows with the batch (weights read once for all rows) and, for global attention, falls with length
    t = {(r["family"], r["batch"], r["prompt"]): r["bound_tok_s"] for r in rows}
    assert t["deltanet", 2, 12] > t["deltanet", 1, 12] and t["deltanet", 1, 12] == t["deltanet", 1, 40]
    assert t["transformer", 1, 40] < t["transformer", 1, 12]
    assert json.loads((tmp_path / "bench_generate.json").read_text())["results"] == rows
    md = (tmp_path / "bench_generate.md").read_text()
    assert "| deltanet | None | 2 | 40 |" in md and "Command: `python benchmarks/bench_generate.py --dry-run" in md
    assert (tmp_path / "bench_generate.png").stat().st_size > 0


def test_bench_generate_time_box_skips_the_rest(tmp_path):
    res = _bench().main(["--dry-run", "--families", "deltanet", "retnet", "--prompts", "8", "--batch", "1",
                         "--steps", "2", "--max-seconds", "0", "--out", str(tmp_path)])
    assert [r["status"] for r in res["results"]] == ["skipped (time)", "skipped (time)"]
    assert "skipped (time)" in (tmp_path / "bench_generate.md").read_text()
    # --resume runs the skipped cells and keeps measured ones
    bench = _bench()
    res = bench.main(["--dry-run", "--families", "deltanet", "--prompts", "8", "--batch", "1", "--steps", "2",
                      "--out", str(tmp_path)])
    first = res["results"][0]
    res = bench.main(["--dry-run", "--families", "deltanet", "retnet", "--prompts", "8", "--batch", "1", "--steps",
                      "2", "--resume", "--out", str(tmp_path)])
    assert res["results"][0] == first and res["results"][1]["family"] == "retnet"
    assert res["results"][1]["status"] == "ok"
    # a resumed command that lists other cells keeps the earlier ones and names both commands
    res = bench.main(["--dry-run", "--families", "transformer", "--prompts", "8", "--batch", "1", "--steps", "2",
                      "--resume", "--out", str(tmp_path)])
    assert [r["family"] for r in res["results"]] == ["deltanet", "retnet", "transformer"]
    assert res["results"][0] == first and res["meta"]["command"].count("bench_generate.py") == 3


def test_step_bytes_counts_weights_and_states():
    mod = _bench()
    model = mod.build("deltanet", None, "cpu")
    c = model.config
    w = sum(p.numel() * 4 for n, p in model.named_parameters() if "embeddings" not in n)  # float32 in the dry run
    conv = 3 * c.num_heads * c.head_dim * (c.conv_size - 1) * 4
    rec = c.num_heads * c.head_dim * c.head_dim * 4 * 2  # read and written
    assert mod.step_bytes(model, 10, 1, 5) == w + c.num_layers * (conv + rec)


def test_bench_generate_resume_keeps_later_cells_on_disk_while_it_runs(tmp_path):
    """A resumed command that dies in its first cell leaves every earlier cell in the JSON, also those after it."""
    import pytest
    bench = _bench()
    args = ["--dry-run", "--families", "deltanet", "retnet", "--prompts", "8", "--batch", "1", "--steps", "2",
            "--out", str(tmp_path)]
    first = bench.main(args)["results"]
    path = tmp_path / "bench_generate.json"
    saved = json.loads(path.read_text())
    saved["results"][0] = {**{k: first[0][k] for k in ("family", "preset", "prompt", "batch")},
                           "status": "skipped (time)"}
    path.write_text(json.dumps(saved))

    def dies(*a, **k):
        raise RuntimeError("the process dies here")
    bench.bench_cell = dies
    with pytest.raises(RuntimeError):
        bench.main(args + ["--resume"])
    rows = json.loads(path.read_text())["results"]
    assert [r["status"] for r in rows] == ["started", "ok"] and rows[1] == first[1]
