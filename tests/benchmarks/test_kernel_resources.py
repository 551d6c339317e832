"""benchmarks/kernel_resources.py: records the chunk stages' launches under the interpreter and compiles each for
sm_90 without a GPU, reporting registers and spill bytes; --launch compiles a stage with another setting."""
from __future__ import annotations

import json

import pytest

from tests.helpers import load_script


def test_records_every_stage_and_compiles_it_for_sm90(tmp_path):
    pytest.importorskip("triton.backends.nvidia")
    mod = load_script("benchmarks/kernel_resources.py")
    res = mod.main(["--out", str(tmp_path), "--dims", "32", "--shape", "1,64,2", "--launch", "bwd_dqkw=8,1"])
    stages = [r["stage"] for r in res["rows"]]
    assert {"wy_fwd", "fwd_h", "fwd_o", "bwd_dhu", "bwd_dqkw", "wy_bwd"} <= set(stages)
    assert all(0 < r["registers"] <= 255 and r["spill_bytes"] >= 0 for r in res["rows"])
    dqkw = next(r for r in res["rows"] if r["stage"] == "bwd_dqkw")
    assert (dqkw["num_warps"], dqkw["num_stages"], dqkw["default"]) == (8, 1, False)
    assert all(r["default"] for r in res["rows"] if r["stage"] != "bwd_dqkw")
    md = (tmp_path / "kernel_resources.md").read_text()
    assert "| 32 | bwd_dqkw | `bwd_dqkw_kernel` | 8, 1 (--launch) |" in md
    assert json.loads((tmp_path / "kernel_resources.json").read_text())["meta"]["target"] == "sm_90"


def test_bad_launch_override_names_the_form():
    mod = load_script("benchmarks/kernel_resources.py")
    with pytest.raises(SystemExit, match="NAME=WARPS,STAGES"):
        mod.parse_launch(["bwd_dqkw:8"])
