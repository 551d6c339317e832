"""Bookkeeping of a benchmark sweep that is filled over several commands (used by bench_generate.py, bench_model.py,
op_bench.py).

A sweep is a list of cells, one result row each, written to the script's JSON after every cell so that a command cut
short keeps what it measured.  A cell about to run is first written with status ``started``: a process that dies
inside it leaves that row behind.  ``--max-seconds`` stops starting cells (the rest are written ``skipped (time)``),
and ``--resume`` reads the earlier JSON back: its cells are kept, a ``started`` row becomes ``killed (did not
finish)``, and only the missing cells run.  The JSON's ``meta["command"]`` holds every command behind the table,
joined with `` && ``.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, Hashable, Iterable, Optional

ROOT = Path(__file__).resolve().parents[1]
STARTED, SKIPPED, KILLED = "started", "skipped (time)", "killed (did not finish)"
JOIN = " && "


def command_line(script: str, argv: Optional[Iterable[str]]) -> str:
    """The command as run from the repository root: ``python benchmarks/<script> ARGS`` (this process's arguments
    when ``argv`` is None), with ``--out`` written relative to the root, or as DIR when it lies outside (a recorded
    table names no machine's paths)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, a in enumerate(argv[:-1]):
        if a == "--out":
            p = Path(argv[i + 1]).resolve()
            argv[i + 1] = os.path.relpath(p, ROOT) if p.is_relative_to(ROOT) else "DIR"
    return " ".join(["python", f"benchmarks/{script}", *argv])


def commands(command: str) -> list[str]:
    """The commands behind a table, in order, from ``meta["command"]``."""
    return command.split(JOIN)


class Deadline:
    """``expired()`` once ``max_seconds`` have passed since it was made (never when ``max_seconds`` is None)."""

    def __init__(self, max_seconds: Optional[float]):
        self.max_seconds, self.t0 = max_seconds, time.time()

    def expired(self) -> bool:
        return self.max_seconds is not None and time.time() - self.t0 >= self.max_seconds


def check_same(prev: dict, meta: dict, fields: Iterable[str], path: Path) -> None:
    """Refuse to resume a table measured under other settings: one table must not mix them.  A field the earlier
    JSON does not record (an older version of the script) is not compared."""
    for f in fields:
        if f in prev and prev[f] != meta.get(f):
            raise SystemExit(f"--resume: {path} was measured with {f} = {prev[f]!r}, this command has {f} = "
                             f"{meta.get(f)!r}; one table cannot mix them (write to another --out, or run without "
                             f"--resume to start the table again)")


def split(prev_rows: list[dict], key: Callable[[dict], Hashable], wanted: set,
          max_attempts: int = 1) -> tuple[list[dict], dict, dict]:
    """Sort the rows of an earlier JSON against the cells this command lists (``wanted``, by ``key``).

    Returns ``(kept, done, retry)``: ``kept`` the rows of cells this command does not list (they stay in the table,
    in their order); ``done`` key -> row of listed cells that are not run again (measured, out of memory, an error,
    or killed ``max_attempts`` times: a row's ``attempts``, 1 when absent); ``retry`` key -> the ``killed`` row of a
    listed cell to run again.  Cells ``skipped (time)`` are in none of them: they run as if new.
    """
    kept, done, retry = [], {}, {}
    for r in prev_rows:
        if r.get("status") == STARTED:  # the process died inside this cell (cut short at a time limit, say)
            r = {**r, "status": KILLED}
        k = key(r)
        if k not in wanted:
            kept.append(r)
        elif r.get("status") == SKIPPED:
            continue
        elif r.get("status") == KILLED and r.get("attempts", 1) < max_attempts:
            retry[k] = r
        else:
            done[k] = r
    return kept, done, retry


class Rows:
    """The rows of a table in their order: ``kept`` (an earlier command's cells this one does not list), then one slot
    per cell of this command, filled from ``earlier`` (key -> row) at the start.  Every row known is on disk from the
    first write, so a command that dies early loses none of the earlier ones."""

    def __init__(self, kept: list[dict], cells: Iterable[Hashable], earlier: Optional[dict] = None):
        earlier = earlier or {}
        self.kept = list(kept)
        self.slots: dict = {c: earlier.get(c) for c in cells}

    def __getitem__(self, cell: Hashable) -> Optional[dict]:
        return self.slots[cell]

    def __setitem__(self, cell: Hashable, row: dict) -> None:
        self.slots[cell] = row

    def list(self) -> list[dict]:
        return self.kept + [r for r in self.slots.values() if r is not None]
