"""How many sequences/s do MQAR's two trainers train at width 64: the fast loop and Lightning?

Trains DeltaNet width 64 (batch 256, 512 tokens, the mix-of-pairs recipe, a fresh train set per epoch) for --steps
steps, with `python run.py task=train_fast` (lit_modules/fast_loop.py) and `task=train` (Lightning), alone and as
--parallel processes sharing the GPU (what `scripts/mqar_sweep.py launch --workers` does). Both evaluate every
--steps / 4 steps and record the training seconds (evaluation excluded) in `mqar_run.json`; the throughput is the
sequences between the first and the last evaluation over the seconds between them, so the first quarter (Triton
compilation and autotuning) is left out. With --old-loop, also times the hand-written loop that the
sweep script had before (copy it out of git history first), the same model and data, 200 timed steps:

    git show <commit>:scripts/mqar_sweep.py > scripts/mqar_sweep_old.py
    python benchmarks/bench_mqar_trainer.py --out OUT --old-loop scripts/mqar_sweep_old.py

Writes OUT/bench_mqar_trainer.md and .json (command, GPU, torch and triton versions, sequences/s).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ["experiment=mqar", "model=deltanet", "data.train_kv_pairs=[4,8,16,32,64]", "data.fresh_train_data=true",
          "trainer.reload_dataloaders_every_n_epochs=1", "run_final_validation=false",
          "callbacks.model_checkpoint.every_n_train_steps=null"]


def runs(out: Path, task: str, n: int, steps: int, extra: list[str]) -> list[float]:
    """Sequences/s of each of n `run.py task=<task>` processes started together."""
    procs = []
    for i in range(n):
        run_dir = out / f"{task}_{n}x_{i}"
        cmd = [sys.executable, str(ROOT / "run.py"), f"task={task}", *RECIPE, f"trainer.max_steps={steps}",
               f"trainer.val_check_interval={steps // 4}", f"seed={i}", f"hydra.run.dir={run_dir}", *extra]
        procs.append((run_dir, subprocess.Popen(cmd, cwd=ROOT, stdout=open(f"{run_dir}.log", "w"),
                                                stderr=subprocess.STDOUT)))
    rates = []
    for run_dir, proc in procs:
        if proc.wait():
            raise SystemExit(f"run.py failed, see {run_dir}.log")
        curve = json.loads((run_dir / "mqar_run.json").read_text())["curve"]  # evaluations at steps/4, ..., steps
        first, last = curve[0], curve[-1]
        rates.append((last["sequences"] - first["sequences"]) / (last["seconds"] - first["seconds"]))
    return rates


def old_loop(out: Path, script: str) -> float:
    """Sequences/s of the old hand-written loop: its timing probe over 200 steps after 3 warm-up steps."""
    cmd = [sys.executable, script, "job", "--spec", "deltanet/64/3e-3/mix/600", "--out", str(out / "old_loop"),
           "--fresh-data", "--probe-steps", "203", "--max-steps", "203", "--override", "lit_module.record=null"]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=open(out / "old_loop.log", "w"), stderr=subprocess.STDOUT)
    record = json.loads(next((out / "old_loop" / "runs").glob("*.json")).read_text())
    return record["steps_per_s_probe"] * record["batch_size"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="directory for bench_mqar_trainer.md/.json")
    p.add_argument("--steps", type=int, default=400, help="steps per run (a multiple of 4)")
    p.add_argument("--parallel", type=int, default=4, help="processes sharing the GPU in the second measurement")
    p.add_argument("--old-loop", default=None, help="path of the old sweep script (from git history), to compare")
    p.add_argument("--overrides", nargs="+", default=[], help="extra Hydra overrides for run.py (tiny CPU trials)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch
    import triton

    rows = {}
    for task, name in (("train_fast", "fast loop"), ("train", "lightning")):
        rows[f"{name}, alone"] = runs(args.out, task, 1, args.steps, args.overrides)
        if args.parallel > 1:
            rows[f"{name}, {args.parallel} sharing"] = runs(args.out, task, args.parallel, args.steps, args.overrides)
    if args.old_loop:
        rows["old loop, alone"] = [old_loop(args.out, args.old_loop)]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    lines = ["# MQAR trainer throughput: `experiment=mqar`, DeltaNet width 64 (batch 256, 512 tokens by default)", "",
             f"`python benchmarks/bench_mqar_trainer.py {' '.join(sys.argv[1:])}` on {device}, torch "
             f"{torch.__version__}, triton {triton.__version__}; {args.steps} steps per run.", "",
             "| trainer | processes | sequences/s per process | sequences/s in all |", "|---|---|---|---|"]
    for name, rates in rows.items():
        lines.append(f"| {name} | {len(rates)} | {', '.join(f'{r:,.0f}' for r in rates)} | {sum(rates):,.0f} |")
    alone = {name: rates[0] for name, rates in rows.items() if name.endswith("alone")}
    base = alone["fast loop, alone"]
    lines += [""] + [f"{name} / fast loop, alone: {rate / base:.2f}" for name, rate in alone.items() if rate != base]
    (args.out / "bench_mqar_trainer.md").write_text("\n".join(lines) + "\n")
    (args.out / "bench_mqar_trainer.json").write_text(json.dumps({"device": device, "torch": torch.__version__,
                                                            "triton": triton.__version__, "steps": args.steps,
                                                            "sequences_per_s": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
