"""bench_model.py fills one table over several commands (CPU dry run): ``--resume`` keeps the cells already measured
byte for byte and runs only the missing ones, ``--max-seconds`` writes the cells it does not start as skipped, a cell
whose process died is reported as killed and run again, and a resume under other settings is refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import load_script


def _bench():
    """A fresh bench_model module whose bench_one counts the cells it measures (in ``mod.measured``)."""
    mod = load_script("benchmarks/bench_model.py")
    mod.measured = []
    real = mod.bench_one

    def counting(name, preset, T, B, *args):
        mod.measured.append((name, T, B))
        return real(name, preset, T, B, *args)
    mod.bench_one = counting
    return mod


def _results(out: Path) -> list[dict]:
    return json.loads((out / "bench_model.json").read_text())["results"]


def _by_cell(rows: list[dict]) -> dict:
    return {(r["model"], r["T"], r["B"]): r for r in rows}


def test_resume_keeps_earlier_cells_and_names_every_command(tmp_path):
    first_cmd = ["--dry-run", "--models", "deltanet", "--lengths", "16x1", "--out", str(tmp_path)]
    first = _bench().main(first_cmd)["results"]
    assert [(r["model"], r["T"], r["B"], r["command"]) for r in first] == [("deltanet", 16, 1, 1)]

    mod = _bench()
    res = mod.main(["--dry-run", "--models", "deltanet", "transformer", "--lengths", "16x1", "24x1", "--resume",
                    "--out", str(tmp_path)])
    # only the missing cells ran; the first command's cell is the same row, byte for byte
    assert mod.measured == [("transformer", 16, 1), ("deltanet", 24, 1), ("transformer", 24, 1)]
    rows = _by_cell(res["results"])
    assert json.dumps(rows["deltanet", 16, 1]) == json.dumps(first[0])
    assert all(rows[c]["command"] == 2 and rows[c]["tokens_per_s"] > 0 for c in mod.measured)
    assert res["results"] == _results(tmp_path)
    cmds = res["meta"]["command"].split(" && ")
    # --out outside the repository is written DIR: a recorded table names no machine's paths
    assert cmds == ["python benchmarks/bench_model.py " + " ".join(first_cmd[:-1] + ["DIR"]),
                    "python benchmarks/bench_model.py --dry-run --models deltanet transformer --lengths 16x1 24x1 "
                    "--resume --out DIR"]
    md = (tmp_path / "bench_model.md").read_text()
    assert f"    1: {cmds[0]}" in md and f"    2: {cmds[1]}" in md
    speed = md.split("peak memory")[0]
    assert "| 16, 1 |" in speed and "| 24, 1 |" in speed and speed.count("[1]") == 1 and speed.count("[2]") == 3
    assert "deltanet / transformer tokens/s" in md

    # a resumed command that lists fewer cells keeps the others in the table, in the earlier order
    mod = _bench()
    res = mod.main(["--dry-run", "--models", "transformer", "--lengths", "24x1", "--resume", "--out", str(tmp_path)])
    assert mod.measured == []
    assert sorted(json.dumps(r) for r in res["results"]) == sorted(json.dumps(r) for r in rows.values())
    assert len(res["meta"]["command"].split(" && ")) == 3
    md = (tmp_path / "bench_model.md").read_text()
    assert "| (T, B) | deltanet | transformer |" in md and md.index("| 16, 1 |") < md.index("| 24, 1 |")


def test_max_seconds_skips_cells_and_profile_then_resume_measures_them(tmp_path):
    mod = _bench()
    res = mod.main(["--dry-run", "--profile", "--models", "deltanet", "retnet", "--lengths", "16x1", "--max-seconds",
                    "0", "--out", str(tmp_path)])
    assert mod.measured == []
    assert [(r["model"], r["status"]) for r in res["results"]] == [("deltanet", "skipped (time)"),
                                                                   ("retnet", "skipped (time)")]
    md = (tmp_path / "bench_model.md").read_text()
    assert "| 16, 1 | skipped (time) | skipped (time) |" in md and "Note: profile not run" in md
    assert not (tmp_path / "bench_model_profile.md").exists()
    assert (tmp_path / "bench_model.png").stat().st_size > 0  # an empty table still plots

    mod = _bench()
    res = mod.main(["--dry-run", "--profile", "--models", "deltanet", "retnet", "--lengths", "16x1", "--resume",
                    "--out", str(tmp_path)])
    assert mod.measured == [("deltanet", 16, 1), ("retnet", 16, 1)]
    assert all(r["tokens_per_s"] > 0 and r["command"] == 2 for r in res["results"])
    md = (tmp_path / "bench_model.md").read_text()
    assert "skipped (time)" not in md and "profile not run" not in md
    assert (tmp_path / "bench_model_profile.md").read_text().count("## ") == 2


def test_started_cell_is_reported_killed_and_run_again(tmp_path):
    args = ["--dry-run", "--models", "deltanet", "transformer", "--lengths", "16x1", "--out", str(tmp_path)]
    first = _bench().main(args)["results"]
    saved = json.loads((tmp_path / "bench_model.json").read_text())
    # the process died inside transformer's cell: its row is still the one written before it began
    saved["results"][1] = {"model": "transformer", "T": 16, "B": 1, "status": "started", "command": 1, "attempts": 1}
    (tmp_path / "bench_model.json").write_text(json.dumps(saved))

    mod = _bench()  # no time left: the killed cell is reported, kept for a later command
    res = mod.main(args + ["--resume", "--max-seconds", "0"])
    assert mod.measured == []
    assert json.dumps(res["results"][0]) == json.dumps(first[0])
    assert res["results"][1]["status"] == "killed (did not finish)"
    assert "(0.0%) [1] | killed (did not finish) |" in (tmp_path / "bench_model.md").read_text()

    mod = _bench()
    res = mod.main(args + ["--resume"])
    assert mod.measured == [("transformer", 16, 1)]
    assert json.dumps(res["results"][0]) == json.dumps(first[0])
    assert res["results"][1]["tokens_per_s"] > 0 and res["results"][1]["command"] == 3
    md = (tmp_path / "bench_model.md").read_text()
    assert "transformer (16, 1): killed (did not finish) in command 1, started again in command 3" in md

    # killed a second time, a cell stays killed: it would take every later command whole
    saved = json.loads((tmp_path / "bench_model.json").read_text())
    saved["results"][1] = {"model": "transformer", "T": 16, "B": 1, "status": "started", "command": 3, "attempts": 2}
    (tmp_path / "bench_model.json").write_text(json.dumps(saved))
    mod = _bench()
    res = mod.main(args + ["--resume"])
    assert mod.measured == [] and res["results"][1]["status"] == "killed (did not finish)"


def test_resume_writes_every_earlier_cell_before_it_runs_one(tmp_path):
    args = ["--dry-run", "--models", "deltanet", "transformer", "--lengths", "16x1", "--out", str(tmp_path)]
    first = _bench().main(args)["results"]
    saved = json.loads((tmp_path / "bench_model.json").read_text())
    saved["results"][0] = {"model": "deltanet", "T": 16, "B": 1, "status": "skipped (time)", "command": 1}
    (tmp_path / "bench_model.json").write_text(json.dumps(saved))
    mod = _bench()

    def dies(*a):
        raise RuntimeError("the process dies in the first cell")
    mod.bench_one = dies
    with pytest.raises(RuntimeError):
        mod.main(args + ["--resume"])
    rows = _results(tmp_path)
    assert rows[0]["status"] == "started" and json.dumps(rows[1]) == json.dumps(first[1])


def test_resume_refuses_a_table_measured_otherwise(tmp_path):
    args = ["--dry-run", "--models", "deltanet", "--lengths", "16x1", "--out", str(tmp_path)]
    _bench().main(args)
    before = (tmp_path / "bench_model.json").read_text()
    with pytest.raises(SystemExit, match="steps = 2, this command has steps = 3"):
        _bench().main(args + ["--resume", "--steps", "3"])
    with pytest.raises(SystemExit, match="warmup = 1, this command has warmup = 2"):
        _bench().main(args + ["--resume", "--warmup", "2"])
    assert (tmp_path / "bench_model.json").read_text() == before
    saved = json.loads(before)
    saved["meta"]["preset"] = "340M"
    (tmp_path / "bench_model.json").write_text(json.dumps(saved))
    with pytest.raises(SystemExit, match="preset = '340M'"):
        _bench().main(args + ["--resume"])
    # an older JSON without warmup/steps fields is compared by its setup line
    del saved["meta"]["warmup"], saved["meta"]["steps"]
    saved["meta"]["preset"] = "dry-run (tiny, CPU)"
    (tmp_path / "bench_model.json").write_text(json.dumps(saved))
    with pytest.raises(SystemExit, match="setup"):
        _bench().main(args + ["--resume", "--steps", "3"])
    # without --resume a new table replaces the old one
    assert _bench().main(args + ["--steps", "3"])["meta"]["command"].count(" && ") == 0


def test_command_line_writes_out_relative_to_the_repository():
    from benchmarks.sweep import ROOT, command_line
    assert (command_line("bench_x.py", ["--out", str(ROOT / "benchmarks" / "results"), "--resume"])
            == "python benchmarks/bench_x.py --out benchmarks/results --resume")
    assert command_line("bench_x.py", ["--out", "/elsewhere/r"]) == "python benchmarks/bench_x.py --out DIR"


def test_remeasure_runs_the_listed_cells_again_and_keeps_the_others(tmp_path):
    _bench().main(["--dry-run", "--models", "deltanet", "transformer", "--lengths", "16x1", "--out", str(tmp_path)])
    first = _by_cell(_results(tmp_path))
    mod = _bench()
    res = mod.main(["--dry-run", "--models", "deltanet", "--lengths", "16x1", "--resume", "--remeasure",
                    "--out", str(tmp_path)])
    assert mod.measured == [("deltanet", 16, 1)]  # measured again although the table had it
    rows = _by_cell(res["results"])
    assert rows["deltanet", 16, 1]["command"] == 2 and rows["deltanet", 16, 1]["tokens_per_s"] > 0
    assert json.dumps(rows["transformer", 16, 1]) == json.dumps(first["transformer", 16, 1])  # not listed: kept
    assert any("--remeasure" in n and "deltanet (16, 1)" in n for n in res["notes"])
    assert "measured again (--remeasure)" in (tmp_path / "bench_model.md").read_text()


def test_remeasure_past_the_deadline_keeps_the_earlier_row(tmp_path):
    _bench().main(["--dry-run", "--models", "deltanet", "--lengths", "16x1", "--out", str(tmp_path)])
    first = _results(tmp_path)
    mod = _bench()
    res = mod.main(["--dry-run", "--models", "deltanet", "--lengths", "16x1", "--resume", "--remeasure",
                    "--max-seconds", "0", "--out", str(tmp_path)])
    assert mod.measured == []
    assert json.dumps(res["results"]) == json.dumps(first)  # not replaced by a skipped row


def test_remeasure_without_resume_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _bench().main(["--dry-run", "--remeasure", "--out", str(tmp_path)])
    assert "--remeasure replaces cells of an earlier table: it needs --resume" in capsys.readouterr().err
