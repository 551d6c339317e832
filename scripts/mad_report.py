"""The MAD table (Poli et al. 2024): test accuracy (%) of each family on the six tasks, from run directories.

Reads every ``metrics.json`` under the given directories (runs of ``experiment=mad``), takes the task from the
run's ``.hydra/config.yaml`` (``data.task``) and the family from metrics.json, keeps the best final ``val/acc`` of
each (family, task) (the MAD protocol keeps the best run of its learning-rate x weight-decay grid), and writes
``mad.md`` and ``mad.json`` in the paper's column order: compress, fuzzy recall, in-context recall, memorize, noisy
recall, selective copy, average (the average only when all six are there).

The whole table, baseline setting of each task, MAD-Lab's default lr 5e-4 and weight decay 0, one run after another
(a Hydra multirun), or all 12 at once sharing the GPU (a run directory each):

    python run.py -m task=train_fast experiment=mad model=deltanet,transformer \\
        data.task=compression,fuzzy_in_context_recall,in_context_recall,memorization,noisy_in_context_recall,selective_copying \\
        hydra.sweep.dir=logs/mad
    for m in deltanet transformer; do for t in compression fuzzy_in_context_recall in_context_recall memorization \\
        noisy_in_context_recall selective_copying; do python run.py task=train_fast experiment=mad model=$m \\
        data.task=$t hydra.run.dir=logs/mad/${m}_$t & done; done; wait
    python scripts/mad_report.py logs/mad --out logs/mad

The MAD protocol's learning-rate grid adds ``optim.optimizer.lr=1e-4,5e-4,1e-3 optim.optimizer.weight_decay=0,0.1``
(6 times the cost); its difficulty levels (longer sequences, larger vocabularies, fewer examples, more noise) are
``data.<field>=`` overrides whose scores MAD averages per task: the table here is the baseline setting only.

Cost on one H200, measured with the 12 runs started at once, 16 heads of 8 each: 1.8K to 4.4K sequences/s per
DeltaNet run and 3.4K to 7.6K per Transformer++ run (the seq/s column of mad.md's run table). A 20,000-step task is 2.56M sequences, so
the slowest run (DeltaNet's selective copying, 257 tokens) bounds the table at about 25 minutes. With
``callbacks.model_checkpoint`` (the default) each evaluation saves the fast loop's state, and the same command with
``ckpt_path=last`` continues a run that was cut short.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from omegaconf import OmegaConf

COLUMNS = [("compression", "compress"), ("fuzzy_in_context_recall", "fuzzy recall"),
           ("in_context_recall", "in-context recall"), ("memorization", "memorize"),
           ("noisy_in_context_recall", "noisy recall"), ("selective_copying", "selective copy")]
DEFAULT_TASK = "in_context_recall"  # conf/data/mad.yaml's data.task


def read_run(metrics_path: Path) -> dict | None:
    """The family, task, heads, final test accuracy (%), steps (done and planned) and training seconds of one run, or None
    when it is not a MAD run with a test accuracy."""
    m = json.loads(metrics_path.read_text())
    acc = m.get("metrics", {}).get("val/acc")
    hydra_cfg = metrics_path.parent / ".hydra" / "config.yaml"
    if acc is None or not hydra_cfg.is_file():
        return None
    cfg = OmegaConf.load(hydra_cfg)
    data = cfg.get("data") or {}
    if data.get("_target_") != "datamodules.mad.MADDataModule":
        return None
    try:  # trainer.max_steps interpolates the task table (conf/data/mad.yaml)
        planned = int(OmegaConf.select(cfg, "trainer.max_steps", throw_on_missing=True))
    except Exception:
        planned = None
    summary = m.get("summary") or {}
    model = m.get("model") or {}
    heads = f"{model['num_heads']} x {model['head_dim']}" if "num_heads" in model and "head_dim" in model else None
    return {"family": model.get("family", "?"), "task": data.get("task", DEFAULT_TASK), "heads": heads,
            "acc": 100.0 * float(acc), "run": str(metrics_path.parent), "steps": m.get("global_step"),
            "max_steps": planned, "seconds": summary.get("train_seconds"), "seq_per_s": summary.get("sequences_per_s"),
            "lr": OmegaConf.select(cfg, "optim.optimizer.lr"), "weight_decay": OmegaConf.select(cfg,
                                                                                     "optim.optimizer.weight_decay")}


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


# The DeltaNet paper's MAD row (Yang et al. 2024, Table 2), in COLUMNS order, and its average.
PAPER_DELTANET = [42.2, 35.7, 100.0, 52.8, 100.0, 100.0]


def _cells(values: list[float | None]) -> str:
    return " | ".join("-" if v is None else f"{v:.1f}" for v in values)


def table(best: dict[str, dict[str, dict]], families: list[str] | None = None) -> tuple[str, dict]:
    """Markdown (the accuracy table, the paper's DeltaNet row under it, then each run's steps, seconds and
    hyperparameters) and its JSON form, one row per family, in the paper's column order. A cell whose run stopped
    before its planned steps (at trainer.max_time) is marked with *."""
    rows, out, short = [], {}, False
    rows += ["| family | " + " | ".join(name for _, name in COLUMNS) + " | average |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    details = ["| family | task | heads x dim | steps | seconds | seq/s | lr | weight decay | run |",
               "|---|---|---|---|---|---|---|---|---|"]
    for family in families or sorted(best):
        runs = best.get(family, {})
        scores = {name: runs[task]["acc"] if task in runs else None for task, name in COLUMNS}
        avg = sum(scores.values()) / len(scores) if all(v is not None for v in scores.values()) else None
        cells = []
        for (task, _), v in zip(COLUMNS, scores.values()):
            r = runs.get(task)
            cut = r is not None and r.get("steps") is not None and r.get("max_steps") is not None \
                and r["steps"] < r["max_steps"]
            short |= cut
            cells.append("-" if v is None else f"{v:.1f}" + ("*" if cut else ""))
            if r is not None:
                sec = "-" if r.get("seconds") is None else f"{r['seconds']:.0f}"
                rate = "-" if r.get("seq_per_s") is None else f"{r['seq_per_s']:,.0f}"
                details.append(f"| {family} | {task} | {r.get('heads') or '-'} | {r.get('steps')} / "
                               f"{r.get('max_steps')} | {sec} | {rate} | {r.get('lr')} | {r.get('weight_decay')} | "
                               f"{Path(r['run']).name} |")
        starred = any(c.endswith("*") for c in cells)
        rows.append(f"| {family} | " + " | ".join(cells) + f" | {_cells([avg])}{'*' if starred and avg else ''} |")
        out[family] = {"scores": scores, "average": avg, "runs": {t: r for t, r in runs.items()}}
    rows.append(f"| DeltaNet, paper | {_cells(PAPER_DELTANET)} | {_cells([sum(PAPER_DELTANET) / 6])} |")
    notes = ["", "The paper's Transformer averages 74.5."]
    if short:
        notes.append("* the run stopped at trainer.max_time before its planned steps: not the protocol's score.")
    return "\n".join(rows + notes + ["", "Runs (training seconds exclude the evaluations):", ""] + details) + "\n", out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories of experiment=mad")
    p.add_argument("--out", type=Path, required=True, help="output directory for mad.md and mad.json")
    p.add_argument("--families", nargs="*", default=None, help="rows and their order (default: every family found)")
    p.add_argument("--note", action="append", default=[], help="a line for the top of mad.md (the command, the GPU)")
    args = p.parse_args(argv)
    best = collect(args.dirs)
    if not best:
        raise SystemExit(f"no finished experiment=mad run (metrics.json with val/acc) under {args.dirs}")
    md, js = table(best, args.families)
    args.out.mkdir(parents=True, exist_ok=True)
    head = "# MAD: test accuracy (%), best run per cell\n\n" + "".join(f"{n}\n\n" for n in args.note)
    (args.out / "mad.md").write_text(head + md)
    (args.out / "mad.json").write_text(json.dumps({"notes": args.note, "families": js}, indent=2))
    print(md, end="")
    return js


if __name__ == "__main__":
    main()
