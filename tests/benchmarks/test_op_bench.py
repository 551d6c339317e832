"""benchmarks/op_bench.py (through bench_gated_delta_rule.py's tiny run, Triton interpreter on CPU): a table filled
over several commands.  ``--max-seconds`` writes the cells it did not start as skipped, ``--resume`` runs only
those, a cell whose process died is run once more and then stays killed, and a resumed command with other settings
is refused."""
from __future__ import annotations

import json
import os

import pytest
import torch

from tests.helpers import load_script

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

KEY = "ours_chunk|{}|1,40,2,32"


def _bench():
    return load_script("benchmarks/bench_gated_delta_rule.py")


def _json(out):
    return json.loads((out / "bench_gated_delta_rule.json").read_text())


def test_skipped_cells_are_run_by_resume_and_the_table_names_both_commands(tmp_path):
    bench = _bench()
    base = ["--out", str(tmp_path), "--tiny", "--providers", "ours_chunk"]
    bench.main(base + ["--max-seconds", "0"])
    assert _json(tmp_path)["cells"] == {KEY.format("fwd"): "skipped (time)", KEY.format("fwdbwd"): "skipped (time)"}
    bench.main(base + ["--resume"])
    data = _json(tmp_path)
    assert all(isinstance(data["cells"][KEY.format(m)], float) for m in ("fwd", "fwdbwd"))
    assert data["by"] == {KEY.format("fwd"): 2, KEY.format("fwdbwd"): 2}
    md = (tmp_path / "bench_gated_delta_rule.md").read_text()
    assert "    1: python benchmarks/bench_gated_delta_rule.py" in md and "    2: " in md and "--resume" in md
    assert "| 1, 40, 2, 32 | fwd | " in md and " [2] |" in md


def test_a_killed_cell_runs_once_more_then_stays_killed(tmp_path):
    bench = _bench()
    base = ["--out", str(tmp_path), "--tiny", "--providers", "ours_chunk"]
    bench.main(base)
    path = tmp_path / "bench_gated_delta_rule.json"
    data = _json(tmp_path)
    data["cells"][KEY.format("fwd")] = "started"  # as a process that died inside the cell leaves it
    path.write_text(json.dumps(data))
    bench.main(base + ["--resume"])
    data = _json(tmp_path)
    assert isinstance(data["cells"][KEY.format("fwd")], float) and data["attempts"] == {KEY.format("fwd"): 2}
    data["cells"][KEY.format("fwd")] = "started"  # it died again
    path.write_text(json.dumps(data))
    bench.main(base + ["--resume"])
    assert _json(tmp_path)["cells"][KEY.format("fwd")] == "killed (did not finish)"
    assert isinstance(_json(tmp_path)["cells"][KEY.format("fwdbwd")], float)  # measured once, kept


def test_resume_refuses_other_settings(tmp_path):
    bench = _bench()
    bench.main(["--out", str(tmp_path), "--tiny", "--providers", "ours_chunk", "--max-seconds", "0"])
    with pytest.raises(SystemExit, match="rep"):
        bench.main(["--out", str(tmp_path), "--tiny", "--providers", "ours_chunk", "--resume", "--rep", "7"])


def test_bad_shapes_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _bench().main(["--out", str(tmp_path), "--shapes", "1,2,3"])
    err = capsys.readouterr().err
    assert "--shapes must be B,T,H,D (four integers each)" in err


def test_fla_gated_backward_guard_lifts_and_restores_flas_flag(monkeypatch):
    """The guard helper flips fla's module flag for its Hopper refusal, and puts fla's own value back."""
    import sys
    import types

    from benchmarks import op_bench

    chunk_o = types.SimpleNamespace(TRITON_ABOVE_3_7_1=False)
    mods = {"fla": types.ModuleType("fla"), "fla.ops": types.ModuleType("fla.ops"),
            "fla.ops.common": types.ModuleType("fla.ops.common")}
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    mods["fla"].ops, mods["fla.ops"].common = mods["fla.ops"], mods["fla.ops.common"]
    mods["fla.ops.common"].chunk_o = chunk_o
    monkeypatch.setitem(sys.modules, "fla.ops.common.chunk_o", chunk_o)
    monkeypatch.setattr(op_bench, "_FLA_GUARD", {})
    op_bench.fla_gated_backward_guard(False)
    assert chunk_o.TRITON_ABOVE_3_7_1 is True
    op_bench.fla_gated_backward_guard(True)
    assert chunk_o.TRITON_ABOVE_3_7_1 is False


def test_gated_bench_sets_ours_against_fla_guarded_and_unguarded(tmp_path):
    """Two ratio columns: ours against fla's op, and against it with its Hopper refusal lifted (time only)."""
    bench = load_script("benchmarks/bench_gated_delta_rule.py")
    bench.main(["--out", str(tmp_path), "--tiny"])
    data = json.loads((tmp_path / "bench_gated_delta_rule.json").read_text())
    assert data["providers"] == ["ours_chunk", "fla_chunk", "fla_chunk_unguarded"]
    assert "| ours/fla | ours/fla, guard lifted |" in (tmp_path / "bench_gated_delta_rule.md").read_text()
