"""Is the one MQAR trainer (Lightning, `python run.py experiment=mqar`) fast enough for a width-64 sweep?

Trains DeltaNet width 64 (batch 256, 512 tokens, the mix-of-pairs recipe, a fresh train set per epoch) for --steps
steps without validation, alone and as --parallel processes sharing the GPU (what `scripts/mqar_sweep.py launch
--workers` does), and reads each run's training throughput (median tokens/s of its steps, `metrics.json`) as
sequences/s. With --old-loop, also times the hand-written loop that the sweep script had before (copy it out of git
history first), the same model and data, 200 timed steps:

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
          "trainer.reload_dataloaders_every_n_epochs=1", "trainer.val_check_interval=1000000",
          "run_final_validation=false", "callbacks.model_checkpoint.every_n_train_steps=null"]


def lightning_runs(out: Path, n: int, steps: int, extra: list[str]) -> list[float]:
    """Sequences/s of each of n `run.py` processes started together."""
    procs = []
    for i in range(n):
        run_dir = out / f"lightning_{n}x_{i}"
        cmd = [sys.executable, str(ROOT / "run.py"), *RECIPE, f"trainer.max_steps={steps}", f"seed={i}",
               f"hydra.run.dir={run_dir}", *extra]
        procs.append((run_dir, subprocess.Popen(cmd, cwd=ROOT, stdout=open(f"{run_dir}.log", "w"),
                                                stderr=subprocess.STDOUT)))
    rates = []
    for run_dir, proc in procs:
        if proc.wait():
            raise SystemExit(f"run.py failed, see {run_dir}.log")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        seq_len = metrics["plan"]["seq_len"]
        rates.append(metrics["summary"]["tokens_per_s"] / seq_len)
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
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--parallel", type=int, default=4, help="processes sharing the GPU in the second measurement")
    p.add_argument("--old-loop", default=None, help="path of the old sweep script (from git history), to compare")
    p.add_argument("--overrides", nargs="+", default=[], help="extra Hydra overrides for run.py (tiny CPU trials)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch
    import triton

    rows = {"lightning, alone": lightning_runs(args.out, 1, args.steps, args.overrides)}
    if args.parallel > 1:
        rows[f"lightning, {args.parallel} sharing"] = lightning_runs(args.out, args.parallel, args.steps,
                                                                     args.overrides)
    if args.old_loop:
        rows["old loop, alone"] = [old_loop(args.out, args.old_loop)]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    lines = ["# MQAR trainer throughput: `experiment=mqar`, DeltaNet width 64 (batch 256, 512 tokens by default)", "",
             f"`python benchmarks/bench_mqar_trainer.py {' '.join(sys.argv[1:])}` on {device}, torch "
             f"{torch.__version__}, triton {triton.__version__}; {args.steps} steps per run.", "",
             "| trainer | processes | sequences/s per process | sequences/s in all |", "|---|---|---|---|"]
    for name, rates in rows.items():
        lines.append(f"| {name} | {len(rates)} | {', '.join(f'{r:,.0f}' for r in rates)} | {sum(rates):,.0f} |")
    if args.old_loop:
        ratio = rows["lightning, alone"][0] / rows["old loop, alone"][0]
        lines += ["", f"Lightning alone / old loop alone: {ratio:.2f}"]
    (args.out / "bench_mqar_trainer.md").write_text("\n".join(lines) + "\n")
    (args.out / "bench_mqar_trainer.json").write_text(json.dumps({"device": device, "torch": torch.__version__,
                                                            "triton": triton.__version__, "steps": args.steps,
                                                            "sequences_per_s": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
