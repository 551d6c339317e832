"""The MAD table (Poli et al. 2024): test accuracy (%) of each family on the six tasks, from run directories.

Reads every ``metrics.json`` under the given directories (runs of ``experiment=mad``), takes the task from the
run's ``.hydra/config.yaml`` (``data.task``) and the family from metrics.json, keeps the best final ``val/acc`` of
each (family, task) (the MAD protocol keeps the best run of its learning-rate x weight-decay grid), and writes
``mad.md`` and ``mad.json`` in the paper's column order: compress, fuzzy recall, in-context recall, memorize, noisy
recall, selective copy, average (the average only when all six are there).

The whole table, baseline setting of each task, MAD-Lab's default lr 5e-4 and weight decay 0:

    python run.py -m task=train_fast experiment=mad model=deltanet,transformer \\
        data.task=compression,fuzzy_in_context_recall,in_context_recall,memorization,noisy_in_context_recall,selective_copying \\
        hydra.sweep.dir=logs/mad
    python scripts/mad_report.py logs/mad --out benchmarks/results/mad

The MAD protocol's learning-rate grid adds ``optim.optimizer.lr=1e-4,5e-4,1e-3 optim.optimizer.weight_decay=0,0.1``
(6 times the cost); its difficulty levels (longer sequences, larger vocabularies, fewer examples, more noise) are
``data.<field>=`` overrides whose scores MAD averages per task: the table here is the baseline setting only.

Cost on one H200 (an estimate from step counts, not a measurement): per family 5 tasks x 20,000 steps +
memorization's 400 = 100,400 optimizer steps of 128 sequences (128 to 257 tokens) through a 2-layer, width-128
model (about 0.4M parameters). Such a model is bound by per-step overhead (kernel launches, the Lightning loop),
about 10 to 25 ms a step under Lightning (``task=train``), so 20 to 45 minutes per family and about 1.5 hours for
DeltaNet and Transformer++ at one learning rate; the 6-point grid about 9 hours. The fast loop (``task=train_fast``,
the sets on the GPU) leaves out Lightning's share of that overhead; its MAD cost is not measured yet.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import yaml

COLUMNS = [("compression", "compress"), ("fuzzy_in_context_recall", "fuzzy recall"),
           ("in_context_recall", "in-context recall"), ("memorization", "memorize"),
           ("noisy_in_context_recall", "noisy recall"), ("selective_copying", "selective copy")]
DEFAULT_TASK = "in_context_recall"  # conf/data/mad.yaml's data.task


def read_run(metrics_path: Path) -> dict | None:
    """(family, task, acc %) of one run, or None when it is not a finished MAD run."""
    m = json.loads(metrics_path.read_text())
    acc = m.get("metrics", {}).get("val/acc")
    hydra_cfg = metrics_path.parent / ".hydra" / "config.yaml"
    if acc is None or not hydra_cfg.is_file():
        return None
    data = (yaml.safe_load(hydra_cfg.read_text()) or {}).get("data") or {}
    if data.get("_target_") != "datamodules.mad.MADDataModule":
        return None
    return {"family": m.get("model", {}).get("family", "?"), "task": data.get("task", DEFAULT_TASK),
            "acc": 100.0 * float(acc), "run": str(metrics_path.parent)}


def collect(dirs: list[Path]) -> dict[str, dict[str, dict]]:
    """{family: {task: best run}} over every metrics.json under ``dirs``."""
    best: dict[str, dict[str, dict]] = {}
    for d in dirs:
        for path in sorted(Path(d).rglob("metrics.json")):
            run = read_run(path)
            if run is None or math.isnan(run["acc"]):
                continue
            cur = best.setdefault(run["family"], {}).get(run["task"])
            if cur is None or run["acc"] > cur["acc"]:
                best[run["family"]][run["task"]] = run
    return best


def table(best: dict[str, dict[str, dict]], families: list[str] | None = None) -> tuple[str, dict]:
    """Markdown table and its JSON form, one row per family, in the paper's column order."""
    rows, out = [], {}
    header = "| family | " + " | ".join(name for _, name in COLUMNS) + " | average |"
    rows += [header, "|---" * (len(COLUMNS) + 2) + "|"]
    for family in families or sorted(best):
        runs = best.get(family, {})
        scores = {name: runs[task]["acc"] if task in runs else None for task, name in COLUMNS}
        avg = sum(scores.values()) / len(scores) if all(v is not None for v in scores.values()) else None
        cells = ["-" if v is None else f"{v:.1f}" for v in [*scores.values(), avg]]
        rows.append(f"| {family} | " + " | ".join(cells) + " |")
        out[family] = {"scores": scores, "average": avg, "runs": {t: r["run"] for t, r in runs.items()}}
    return "\n".join(rows) + "\n", out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories of experiment=mad")
    p.add_argument("--out", type=Path, required=True, help="output directory for mad.md and mad.json")
    p.add_argument("--families", nargs="*", default=None, help="rows and their order (default: every family found)")
    args = p.parse_args(argv)
    best = collect(args.dirs)
    if not best:
        raise SystemExit(f"no finished experiment=mad run (metrics.json with val/acc) under {args.dirs}")
    md, js = table(best, args.families)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mad.md").write_text("# MAD: test accuracy (%), best run per cell\n\n" + md)
    (args.out / "mad.json").write_text(json.dumps(js, indent=2))
    print(md, end="")
    return js


if __name__ == "__main__":
    main()
