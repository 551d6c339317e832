"""MQAR sweep: launch family x width x lr runs of ``python run.py experiment=mqar``, and report the best run per point.

    # one run per (family, width, lr) in the fast loop (--task train: Lightning), --workers at a time sharing the
    # GPU (with --gpus 0 1 ...: spread over those GPUs, each run on the one with the fewest runs); each stops at 99%
    # test accuracy (callbacks=early_stopping), at trainer.max_steps or trainer.max_time
    python scripts/mqar_sweep.py launch --runs RUNS --family deltanet transformer --width 64 128 --lr 1e-3 3e-3 \\
        --workers 4 -- 'data.train_kv_pairs=[4,8,16,32,64]' data.fresh_train_data=true \\
        trainer.reload_dataloaders_every_n_epochs=1 trainer.val_check_interval=250
    # tables (markdown + JSON) and the plot (accuracy vs width, one line per family) from the runs' records
    python scripts/mqar_sweep.py report RUNS --out benchmarks/results

``launch --dry-run`` prints the commands (``run.py task=<train_fast|train> experiment=mqar model=<family>
model.hidden_size=<width> model.num_heads=<width / --head-dim> optim.optimizer.lr=<lr> callbacks=early_stopping
<overrides after -->`` in ``RUNS/<name>``); a finished run is skipped, one cut short resumes from its last
checkpoint. Hydra alone
sweeps one width: ``python run.py -m task=train_fast experiment=mqar model=deltanet,transformer
optim.optimizer.lr=1e-3,3e-3 callbacks=early_stopping``. The report reads every run's ``mqar_run.json`` under the
directories, or an earlier report's mqar.json (runs and notes); best per (family, width) by Zoology's rule: reached
the target with the fewest sequences, else the best final accuracy.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_name(family: str, width: int, lr: float) -> str:
    return f"{family}_w{width}_lr{lr:g}"


def run_command(family: str, width: int, lr: float, run_dir: Path, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, str(ROOT / "run.py"), f"task={args.task}", "experiment=mqar", f"model={family}",
           f"model.hidden_size={width}", f"model.num_heads={max(1, width // args.head_dim)}",
           f"optim.optimizer.lr={lr:g}", "callbacks=early_stopping", f"hydra.run.dir={run_dir}", *args.overrides]
    state = "last.ckpt" if args.task == "train" else "fast_loop.pt"  # Lightning's, or the fast loop's (at evaluations)
    if (run_dir / "checkpoints" / state).is_file():
        cmd.append("ckpt_path=last")  # cut short: carry on from its last checkpoint
    return cmd


def launch(args: argparse.Namespace) -> None:
    runs = Path(args.runs).resolve()
    todo = []
    for family, width, lr in itertools.product(args.family, args.width, args.lr):
        run_dir = runs / run_name(family, width, lr)
        if not (run_dir / "metrics.json").is_file():  # a finished run is kept
            todo.append((run_dir, run_command(family, width, lr, run_dir, args)))
    gpus = [str(g) for g in args.gpus or []]
    if args.dry_run:
        for i, (_, cmd) in enumerate(todo):  # the GPU each would get if every run took as long
            env = [f"CUDA_VISIBLE_DEVICES={gpus[i % len(gpus)]}"] if gpus else []
            print(shlex.join([*env, "python", *cmd[1:]]))
        return
    runs.mkdir(parents=True, exist_ok=True)
    running, t0 = [], time.time()  # (run dir, process, GPU) triples
    while todo or running:
        for run_dir, proc, gpu in [r for r in running if r[1].poll() is not None]:
            running.remove((run_dir, proc, gpu))
            print(f"[sweep {time.time() - t0:6.0f}s] {run_dir.name}: exit {proc.returncode}", flush=True)
        while todo and len(running) < args.workers:
            run_dir, cmd = todo.pop(0)
            env = dict(os.environ)
            gpu = min(gpus, key=lambda g: sum(r[2] == g for r in running)) if gpus else None
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
            log = open(runs / f"{run_dir.name}.log", "a")
            running.append((run_dir, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
                            gpu))
            print(f"[sweep {time.time() - t0:6.0f}s] {run_dir.name}: started"
                  + (f" on GPU {gpu}" if gpu is not None else ""), flush=True)
        time.sleep(1.0)


def load_records(paths: list[str]) -> tuple[list[dict], list[str]]:
    """The run records under `paths`, and the notes of an earlier report among them."""
    records, notes = [], []
    for p in map(Path, paths):
        if p.is_dir():
            records += [json.loads(f.read_text()) for f in sorted(p.rglob("mqar_run.json"))]
        else:
            data = json.loads(p.read_text())
            records += data["runs"] if "runs" in data else [data]
            notes += data.get("notes", [])
    if not records:
        raise SystemExit(f"no mqar_run.json under {paths}: have the runs validated yet?")
    return records, notes


def data_label(r: dict) -> str:
    pairs = r.get("train_kv_pairs")
    mix = f"mix {','.join(map(str, pairs))} pairs" if pairs else f"{r['kv_pairs']} pairs"
    return f"{mix}, " + ("fresh" if r.get("fresh_train_data") else f"fixed {r['num_train']:,}")


def label(r: dict) -> str:
    return (f"{run_name(r['family'], r['width'], r['lr'])}_b{r['batch_size']}"
            f"_{'mix' if r.get('train_kv_pairs') else 'pure'}_{'fresh' if r.get('fresh_train_data') else 'fixed'}")


def best_runs(records: list[dict], target: float) -> dict[tuple, dict]:
    best: dict[tuple, tuple] = {}
    for r in records:
        reached = r["final_acc"] >= target
        score = (reached, -r["sequences"] if reached else r["final_acc"])
        key = (r["family"], r["width"])
        if key not in best or score > best[key][0]:
            best[key] = (score, r)
    return {k: v[1] for k, v in sorted(best.items())}


def report(args: argparse.Namespace) -> None:
    records, old_notes = load_records(args.runs)
    note_text = args.note or old_notes  # regenerating from an earlier mqar.json keeps its notes
    records.sort(key=lambda r: (r["family"], r["width"], label(r)))
    best = best_runs(records, args.target)
    (out := Path(args.out)).mkdir(parents=True, exist_ok=True)
    r0 = records[0]  # the task: the same in every run
    versions = sorted({f"{r['device']}, torch {r['torch']}" + (f", triton {r['triton']}" if r.get("triton") else "")
                       for r in records})
    notes = [f"- {n}" for n in note_text]  # markdown list items
    lines = [f"# MQAR (Zoology): sequence {r0['seq_len']}, {r0['kv_pairs']} key-value pairs, "
             f"{r0['num_layers']} layers; test accuracy on the held-out set", "", "![MQAR accuracy vs width](mqar.png)",
             "", f"Runs on {'; '.join(versions)}. This page, mqar.json and mqar.png: "
             f"`python scripts/mqar_sweep.py report {' '.join(args.runs)} --out {args.out}"
             + ("` (notes: --note, kept in mqar.json)." if notes else "`."), *([""] + notes if notes else []), "",
             f"Best run per family x width (target {100 * args.target:g}% test accuracy):", "",
             "| family | width | test acc | lr | batch | train data | sequences | train s | lrs tried |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (family, width), r in best.items():
        tried = sorted({x["lr"] for x in records if (x["family"], x["width"]) == (family, width)})
        lines.append(f"| {family} | {width} | {100 * r['final_acc']:.2f}% | {r['lr']:g} | {r['batch_size']} | "
                     f"{data_label(r)} | {r['sequences']:,} | {r['train_seconds']:.0f} | "
                     f"{', '.join(f'{x:g}' for x in tried)} |")
    short = [f"{f} {w}" for (f, w), r in best.items() if r["final_acc"] < args.target]
    if short:
        lines += ["", f"Below the target ({', '.join(short)}): the best runs of these points ended at their step or "
                  "time budget before reaching it; budget-limited, so not capacity results."]
    lines += ["", "All runs (test accuracy at the end and the best on the way; seconds of training, validation "
              "excluded):", "", "| run | train data | test acc | best acc | steps | sequences | train s | seq/s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {label(r)} | {data_label(r)} | {100 * r['final_acc']:.2f}% | {100 * r['best_acc']:.2f}% | "
                     f"{r['steps']} | {r['sequences']:,} | {r['train_seconds']:.0f} | "
                     f"{r['sequences'] / max(r['train_seconds'], 1e-9):,.0f} |")
    (out / "mqar.md").write_text("\n".join(lines) + "\n")
    (out / "mqar.json").write_text(json.dumps({"target": args.target, "notes": note_text, "best": [
        {k: v for k, v in r.items() if k != "curve"} for r in best.values()], "runs": records}, indent=1) + "\n")
    plot(best, args.target, out / "mqar.png")
    print("\n".join(lines))


def plot(best: dict[tuple, dict], target: float, path: Path) -> None:
    import matplotlib.pyplot as plt
    plt.switch_backend("Agg")  # files only, no display

    fig, ax = plt.subplots(figsize=(8, 5))
    for family in sorted({f for f, _ in best}):
        pts = [(w, r) for (f, w), r in best.items() if f == family]
        left = [(w, r) for w, r in pts if r["best_acc"] >= 0.01]  # points that never left chance: hollow, not joined
        line, = ax.plot([w for w, _ in left], [100 * r["final_acc"] for _, r in left], "o-", label=family)
        chance = [(w, 100 * r["final_acc"]) for w, r in pts if r["best_acc"] < 0.01]
        if chance:
            ax.plot(*zip(*chance), "o", mfc="none", color=line.get_color())
        for w, r in pts:
            ax.annotate(f"lr {r['lr']:g}\n{r['sequences'] / 1e6:.2f}M seq, {r['train_seconds']:.0f} s",
                        (w, 100 * r["final_acc"]), textcoords="offset points", fontsize=7, color=line.get_color(),
                        xytext=(5, -22 - 20 * sum(f < family and abs(o["final_acc"] - r["final_acc"]) < 0.1
                                                  for (f, v), o in best.items() if v == w)))  # below close ones
    ax.axhline(100 * target, color="gray", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths := sorted({w for _, w in best}), [str(w) for w in widths])
    ax.margins(x=0.25)
    ax.set(ylim=(-5, 102), xlabel="model width", ylabel="test accuracy (%)",
           title="MQAR: best run per family and width (hollow: at chance)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("launch", help="run family x width x lr")
    s.add_argument("--runs", required=True, help="directory of the run directories")
    s.add_argument("--family", nargs="+", required=True, help="model config names: deltanet transformer ...")
    s.add_argument("--width", nargs="+", type=int, required=True)
    s.add_argument("--lr", nargs="+", type=float, required=True)
    s.add_argument("--head-dim", type=int, default=64, help="model.num_heads = width // head_dim (at least 1)")
    s.add_argument("--task", choices=["train_fast", "train"], default="train_fast", help="fast loop or Lightning")
    s.add_argument("--workers", type=int, default=1, help="runs at a time, in all (sharing the GPUs)")
    s.add_argument("--gpus", nargs="+", type=int, default=None, help="GPU indices to spread the runs over, each run "
                   "on the one with the fewest runs (CUDA_VISIBLE_DEVICES); default: the runs see this process's GPUs")
    s.add_argument("--dry-run", action="store_true", help="print the commands only")
    s.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    s = sub.add_parser("report", help="tables and plot from the runs' records")
    s.add_argument("runs", nargs="+", help="directories searched for mqar_run.json, or an earlier mqar.json")
    s.add_argument("--out", required=True)
    s.add_argument("--target", type=float, default=0.99)
    s.add_argument("--note", action="append", help="a line under the heading (repeatable)")
    args = p.parse_args(argv)
    launch(args) if args.cmd == "launch" else report(args)


if __name__ == "__main__":
    main()
