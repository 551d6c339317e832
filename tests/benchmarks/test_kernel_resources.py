"""benchmarks/kernel_resources.py: records an op's kernel launches under the interpreter and compiles each for
sm_90 without a GPU, reporting registers and spill bytes; --launch compiles a kernel with another setting."""
from __future__ import annotations

import importlib
import inspect
import json

import pytest

from tests.helpers import load_script


def test_records_every_kernel_and_compiles_it_for_sm90(tmp_path):
    pytest.importorskip("triton.backends.nvidia")
    mod = load_script("benchmarks/kernel_resources.py")
    res = mod.main(["--out", str(tmp_path), "--ops", "delta_rule", "--dims", "32", "--shape", "1,64,2",
                    "--launch", "bwd_dqkw_kernel=8,1"])
    kernels = [r["kernel"] for r in res["rows"]]
    assert {"wy_fwd_kernel", "fwd_h_kernel", "fwd_o_kernel", "bwd_dhu_kernel", "bwd_dqkw_kernel",
            "wy_bwd_kernel"} <= set(kernels)
    assert all(0 < r["registers"] <= 255 and r["spill_bytes"] >= 0 for r in res["rows"])
    dqkw = next(r for r in res["rows"] if r["kernel"] == "bwd_dqkw_kernel")
    assert (dqkw["num_warps"], dqkw["num_stages"], dqkw["default"]) == (8, 1, False)
    assert all(r["default"] for r in res["rows"] if r["kernel"] != "bwd_dqkw_kernel")
    md = (tmp_path / "kernel_resources.md").read_text()
    assert "| delta_rule | 32 | `bwd_dqkw_kernel` | 8, 1 (--launch) |" in md
    assert json.loads((tmp_path / "kernel_resources.json").read_text())["meta"]["target"] == "sm_90"


def test_alignment_is_what_the_jit_would_assume():
    """Tensors and ints divisible by 16 are recorded as 16-aligned, other ints not, and 1 as a constant: the JIT's
    specialisation, without which the kernels would vectorise less than on the GPU."""
    mod = load_script("benchmarks/kernel_resources.py")
    recs = json.loads(mod._child(["_record", "short_conv", "32", "1", "40", "2", "float32"], True))
    fwd = next(r for r in recs if r["kernel"] == "_short_conv_fwd_kernel")
    sc = importlib.import_module("kernels.conv.short_conv")  # the attribute path resolves to the function
    names = list(inspect.signature(sc._short_conv_fwd_kernel.fn).parameters)
    assert names.index("x") in fwd["aligned"] and fwd["types"]["x"] == "*fp32"
    assert fwd["types"]["T"] == "i32" and names.index("T") not in fwd["aligned"]  # T = 40
    assert fwd["constexprs"]["W"] == 4


def test_bad_launch_override_names_the_form():
    mod = load_script("benchmarks/kernel_resources.py")
    with pytest.raises(SystemExit, match="KERNEL=WARPS,STAGES"):
        mod.parse_launch(["bwd_dqkw_kernel:8"])
