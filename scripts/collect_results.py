"""Collect the final validation metrics of every run under a directory (a Hydra multirun) into one markdown table.

    python run.py -m experiment=ablation_small model.qk_norm=l2,l1 model.qk_activation=silu,relu,elu \
        model.use_short_conv=true,false hydra.sweep.dir=logs/ablation
    python scripts/collect_results.py logs/ablation --out logs/ablation/results.md

Each run's `metrics.json` (written by run.py at the end of training) gives the metrics and the command-line overrides;
the table has one column per override that differs between runs, then val/loss, val/ppl, train/loss, steps and
tokens/s, sorted by val/loss. Runs that died before the end have no metrics.json and are listed as missing.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def load_runs(root: Path) -> list[dict]:
    runs = []
    for path in sorted(root.rglob("metrics.json")):
        data = json.loads(path.read_text())
        overrides = dict(o.split("=", 1) for o in data.get("overrides", []) if "=" in o)
        runs.append({**data, "dir": str(path.parent.relative_to(root)) or ".", "overrides": overrides})
    return runs


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def table(runs: list[dict], sort_by: str = "val/loss") -> str:
    if not runs:
        raise SystemExit("no metrics.json found: did the runs finish? (run.py writes it at the end of training)")
    keys = sorted({k for r in runs for k in r["overrides"]})
    varying = [k for k in keys if len({r["overrides"].get(k) for r in runs}) > 1] or keys
    varying = [k for k in varying if not k.startswith(("hydra.", "paths."))]
    def rank(r: dict) -> float:  # missing or NaN metrics sort last
        v = r["metrics"].get(sort_by)
        return v if isinstance(v, (int, float)) and math.isfinite(v) else float("inf")

    runs = sorted(runs, key=rank)
    head = ["run", *varying, "val/loss", "val/ppl", "train/loss", "steps", "tokens/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        m, s = r["metrics"], r.get("summary", {})
        cells = [r["dir"], *(r["overrides"].get(k, "-") for k in varying), _fmt(m.get("val/loss")),
                 _fmt(m.get("val/ppl"), 2), _fmt(m.get("train/loss")), str(r.get("global_step", "-")),
                 _fmt(s.get("tokens_per_s"), 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def missing_runs(root: Path) -> list[str]:
    """Hydra job directories (they hold .hydra/) without a metrics.json."""
    return sorted(str(d.parent.relative_to(root)) for d in root.rglob(".hydra")
                  if not (d.parent / "metrics.json").exists())


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a sweep directory (hydra.sweep.dir) or any folder of runs")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--sort", default="val/loss", help="metric to sort by (default val/loss)")
    args = parser.parse_args(argv)
    text = table(load_runs(args.root), args.sort)
    missing = missing_runs(args.root)
    if missing:
        text += f"\nMissing (no metrics.json, run did not finish): {', '.join(missing)}\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    sys.stdout.write(text)
    return text


if __name__ == "__main__":
    main()
