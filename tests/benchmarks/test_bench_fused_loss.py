"""benchmarks/bench_fused_loss.py: the dry run (three 4-step run.py trainings on the embedded corpus, CPU) writes its
table and per-step losses and no checkpoints (at the GPU width each is ~1.8 GB), and a failing training names
itself and shows the end of its log."""
from __future__ import annotations

import json

import pytest

from tests.helpers import load_script


def _bench():
    return load_script("benchmarks/bench_fused_loss.py")


def test_dry_run_writes_losses_and_no_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)
    res = _bench().main(["--out", tmp_path.name, "--dry-run"])  # a relative --out, as the README gives it
    assert res["summary"]["steps"] == 4
    data = json.loads((tmp_path / "bench_fused_loss.json").read_text())
    assert set(data["losses"]) == {"fused_bf16", "plain_bf16", "plain_fp32"}
    # on the CPU all three take the plain float32 path: the same losses
    assert data["summary"]["max_abs_fused_minus_plain"] < 1e-5
    md = (tmp_path / "bench_fused_loss.md").read_text()
    assert "abs(fused bf16 - plain bf16)" in md
    # the recorded overrides name the data directory as --out gave it, not this machine's absolute path
    assert f"paths.data_dir={tmp_path.name}/data" in md and str(tmp_path) not in md
    assert data["device"] and data["torch"]
    assert not list(tmp_path.rglob("*.ckpt"))


def test_failing_training_names_itself_and_shows_its_log(tmp_path):
    expected = r"(?s)fused_bf16 failed \(exit status [1-9]\d*\); the end of .*fused_bf16.log:\n.*num_heads=3 must divide"
    with pytest.raises(SystemExit, match=expected):
        _bench().main(["--out", str(tmp_path), "--dry-run", "--", "model.num_heads=3"])
