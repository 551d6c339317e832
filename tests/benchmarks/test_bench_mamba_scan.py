"""benchmarks/bench_mamba_scan.py: the dry run (tiny shape, Triton interpreter on CPU) writes its table and JSON, and
the roofline byte count adds up the passes' traffic as documented."""
from __future__ import annotations

import json

from tests.helpers import load_script


def _bench():
    return load_script("benchmarks/bench_mamba_scan.py")


bench = _bench()


def test_roofline_bytes():
    t = bench.ScanTuning(BT=16, BD=16, bwd_BD=16)
    B, T, D, N, e = 2, 32, 16, 4, 2
    states = B * 2 * D * N * 4
    fwd = 4 * B * T * D * e + 2 * B * T * N * e + D * N * 4 + D * 4 + states
    assert bench.roofline_bytes(B, T, D, N, e, t, "fwd") == fwd
    bwd = 7 * B * T * D * e + 4 * B * T * N * e + states + 4 * B * T * N * 4 + 2 * B * D * N * 4
    assert bench.roofline_bytes(B, T, D, N, e, t, "fwdbwd") == fwd + bwd


def test_dry_run_writes_table_and_json(tmp_path):
    bench.main(["--out", str(tmp_path), "--dry-run", "--dtype", "float32"])
    data = json.loads((tmp_path / "bench_mamba_scan.json").read_text())
    cells = {(r["provider"], r["mode"]): r for r in data["results"]}
    assert set(cells) == {(p, m) for p in ("ours", "torch_seq") for m in ("fwd", "fwdbwd")}
    assert all(r["ms"] > 0 for r in cells.values())
    assert cells[("ours", "fwd")]["bytes"] > 0 and cells[("ours", "fwdbwd")]["roofline_ms"] > 0
    assert "| 1, 40, 16, 4 | fwdbwd |" in (tmp_path / "bench_mamba_scan.md").read_text()


def test_the_pytorch_loop_is_skipped_where_its_time_per_token_says_it_would_be_too_slow(tmp_path):
    b = _bench()  # a fresh module: no times per token yet
    b.main(["--out", str(tmp_path), "--dry-run", "--dtype", "float32", "--providers", "torch_seq"])
    assert b.SEQ_S_PER_TOKEN["fwd"] > 0
    per_token = min(b.SEQ_S_PER_TOKEN.values())
    # a shape long enough that, at the time per token just measured, one run would exceed --max-run-s
    T = int(2.0 / per_token) + 1
    b.main(["--out", str(tmp_path), "--dry-run", "--dtype", "float32", "--providers", "torch_seq",
            "--max-run-s", "1", "--shapes", f"1,{T},16,4"])
    rows = json.loads((tmp_path / "bench_mamba_scan.json").read_text())["results"]
    assert all("by the time per token" in r["skipped"] for r in rows)  # skipped without being run


def test_roofline_bytes_of_the_split_backward():
    one, split = bench.ScanTuning(BT=16), bench.ScanTuning(BT=16, bwd_split=True, bwd_chunks=1)
    B, T, D, N, e = 2, 32, 16, 4, 2
    states = B * 2 * D * N * 4
    extra = bench.roofline_bytes(B, T, D, N, e, split, "fwdbwd") - bench.roofline_bytes(B, T, D, N, e, one, "fwdbwd")
    assert extra == 2 * states + 2 * (B * 2 - B) * D * N * 4  # dh_right, and 2 chunk groups per sequence, not 1


def test_dry_run_sweep_of_the_backward_records_each_form(tmp_path):
    bench.main(["--out", str(tmp_path), "--dry-run", "--dtype", "float32", "--providers", "ours", "--sweep", "bwd"])
    rows = json.loads((tmp_path / "bench_mamba_scan.json").read_text())["sweep"]
    assert {r["tuning"]["bwd_split"] for r in rows} == {False, True} and all(r["ms"] > 0 for r in rows)
    md = (tmp_path / "bench_mamba_scan.md").read_text()
    assert "| one walk |" in md and "| split |" in md
