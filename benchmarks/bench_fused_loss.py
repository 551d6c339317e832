"""Question: does training with the fused glue give the loss of the plain model, to bf16 noise?

    python benchmarks/bench_fused_loss.py --out DIR [--steps 200] [-- extra run.py overrides]

Three ``run.py`` trainings on the embedded corpus (``experiment=smoke`` data and recipe, the model widened by
``--model``, same seed and data order): the fused model (``model.fused=true``), the plain model
(``model.fused=false``), both under bf16 autocast, and the plain model in float32 (``trainer.precision=32-true``).
The yardstick of "bf16 noise" is the float32 run: |fused - plain| per step should be no larger than
|plain bf16 - plain float32|, the difference that bf16 rounding alone makes.  Writes ``bench_fused_loss.md``
(summary and every 20th step), ``bench_fused_loss.json`` (all per-step losses) and ``bench_fused_loss.png`` to ``--out``.

``--dry-run``: 4 steps of the smoke model on CPU (there all three runs take the plain path, so it checks the script).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ["model.hidden_size=1024", "model.num_layers=8", "model.num_heads=8", "data.seq_len=2048",
         "data.batch_size=4"]
RUNS = {"fused_bf16": ["model.fused=true"], "plain_bf16": ["model.fused=false"],
        "plain_fp32": ["model.fused=false", "trainer.precision=32-true"]}


def read_losses(run_dir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    vals: list[tuple[int, float]] = []
    for f in sorted(run_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        if "train/loss" in acc.Tags()["scalars"]:
            vals += [(e.step, e.value) for e in acc.Scalars("train/loss")]
    return [v for _, v in sorted(vals)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", nargs="*", default=MODEL, help="run.py overrides of the model and batch size")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("extra", nargs="*", help="more run.py overrides (after --)")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    steps = 4 if a.dry_run else a.steps
    common = ["experiment=smoke", f"trainer.max_steps={steps}", "trainer.log_every_n_steps=1", f"seed={a.seed}",
              "run_final_validation=false", f"trainer.val_check_interval={steps}", "trainer.limit_val_batches=1",
              f"paths.data_dir={out / 'data'}",
              # no checkpoints: at the default width one is ~1.8 GB and the smoke recipe writes one every 10 steps
              "~callbacks.model_checkpoint", "+trainer.enable_checkpointing=false"]
    common += ["trainer.accelerator=cpu", "trainer.deterministic=true"] if a.dry_run else a.model
    losses, secs = {}, {}
    for name, over in RUNS.items():
        if a.dry_run and "precision" in " ".join(over):
            over = [o for o in over if "precision" not in o]  # CPU runs are float32 already
        cmd = [sys.executable, str(ROOT / "run.py"), *common, *over, *a.extra, f"hydra.run.dir={out / name}"]
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        secs[name] = time.time() - t0
        log = proc.stdout[-20000:] + proc.stderr[-20000:]
        (out / f"{name}.log").write_text(log)
        if proc.returncode != 0:
            tail = "\n".join(log.strip().splitlines()[-15:])
            raise SystemExit(f"{name} failed (exit status {proc.returncode}); the end of {out / (name + '.log')}:\n{tail}")
        losses[name] = read_losses(out / name)
    n = min(len(v) for v in losses.values())
    f, b, r = (losses[k][:n] for k in ("fused_bf16", "plain_bf16", "plain_fp32"))
    d_fused = [abs(x - y) for x, y in zip(f, b)]
    d_bf16 = [abs(x - y) for x, y in zip(b, r)]
    last = slice(max(0, n - 20), n)
    summary = {"steps": n, "max_abs_fused_minus_plain": max(d_fused), "max_abs_bf16_minus_fp32": max(d_bf16),
               "mean_last20_fused_minus_plain": sum(d_fused[last]) / len(d_fused[last]),
               "mean_last20_bf16_minus_fp32": sum(d_bf16[last]) / len(d_bf16[last]),
               "final": {k: v[n - 1] for k, v in losses.items()}, "seconds": secs}
    shown = [o.replace(str(out), a.out.rstrip("/")) for o in common]  # --out as given, not this machine's path
    import torch
    import triton
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    res = {"command": " ".join(["python", "benchmarks/bench_fused_loss.py"] + (argv or sys.argv[1:])),
           "device": device, "torch": torch.__version__, "triton": triton.__version__,
           "overrides": shown, "summary": summary, "losses": losses}
    (out / "bench_fused_loss.json").write_text(json.dumps(res, indent=2))
    md = ["# bench_fused_loss.py: fused vs plain glue, loss per step on the embedded corpus", "",
          "    " + res["command"], "", f"{device}; torch {torch.__version__}, triton {triton.__version__}", "",
          "run.py overrides: `" + " ".join(shown) + "`", "",
          "| | max over steps | mean of the last 20 steps |", "|---|---|---|",
          f"| abs(fused bf16 - plain bf16) | {summary['max_abs_fused_minus_plain']:.4f} | "
          f"{summary['mean_last20_fused_minus_plain']:.4f} |",
          f"| abs(plain bf16 - plain fp32) (bf16 noise) | {summary['max_abs_bf16_minus_fp32']:.4f} | "
          f"{summary['mean_last20_bf16_minus_fp32']:.4f} |", "",
          "| step | fused bf16 | plain bf16 | plain fp32 |", "|---|---|---|---|"]
    md += [f"| {i} | {f[i]:.4f} | {b[i]:.4f} | {r[i]:.4f} |" for i in range(0, n, max(1, n // 10))]
    (out / "bench_fused_loss.md").write_text("\n".join(md) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        for k, v in losses.items():
            a1.plot(v[:n], label=k)
        a2.plot(d_fused, label="|fused - plain| (bf16)")
        a2.plot(d_bf16, label="|plain bf16 - plain fp32|")
        for ax, y in ((a1, "train loss"), (a2, "abs difference")):
            ax.set_xlabel("step")
            ax.set_ylabel(y)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "bench_fused_loss.png", dpi=110)
        plt.close(fig)
    except ImportError:
        pass
    print((out / "bench_fused_loss.md").read_text())
    return res


if __name__ == "__main__":
    main()
