"""Does training scale to 2 GPUs? Tokens/s per GPU of a paper preset with DDP on 1 and 2 GPUs and FSDP on 2.

    python benchmarks/bench_scaling.py --out benchmarks/results          # all three runs, writes scaling.md/.json
    python benchmarks/bench_scaling.py --worker --strategy ddp --devices 2 --json r.json   # one run (used by the above)

Each run is its own process (Lightning launches one more process per extra GPU) and trains the preset's model
(`--preset`, default the 340M DeltaNet) with the real recipe (LightningModule, AdamW, clipping, bf16-mixed, fault
check, token-based accumulation) for `--steps` optimizer steps on synthetic tokens (random ids: the data pipeline is
not what is measured). The global batch is reduced to `--global-batch-tokens` so that a run is seconds, identical for
every run (1 GPU accumulates twice as many micro-batches as 2). Tokens/s are the median over the timed steps (the first
`--warmup` dropped); scaling efficiency = (tokens/s per GPU on 2) / (tokens/s on 1); peak memory is
torch.cuda.max_memory_allocated on rank 0.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import IterableDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DELTANET_ROOT", str(ROOT))


class RandomTokens(IterableDataset):
    """Endless micro-batches of random token ids, different on every rank."""

    def __init__(self, batch_size: int, seq_len: int, vocab_size: int, seed: int = 0):
        self.batch_size, self.seq_len, self.vocab_size, self.seed = batch_size, seq_len, vocab_size, seed

    def __iter__(self):
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        g = torch.Generator().manual_seed(self.seed + 1000 * rank)
        while True:
            yield {"input_ids": torch.randint(0, self.vocab_size, (self.batch_size, self.seq_len), generator=g)}


def worker(args) -> None:
    import lightning as L
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader

    from lit_modules.recipe import apply_recipe

    overrides = [f"experiment={args.preset}", f"trainer={args.strategy}", f"trainer.devices={args.devices}",
                 f"trainer.accelerator={args.accelerator}", f"data.batch_size={args.micro_batch}",
                 f"recipe.global_batch_tokens={args.global_batch_tokens}",
                 f"recipe.train_tokens={args.global_batch_tokens * args.steps}", "recipe.warmup_tokens=0",
                 "recipe.val_every_steps=null", f"paths.output_dir={args.run_dir}", *args.override]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    if args.accelerator == "cpu":
        cfg.trainer.precision = "32-true"
    plan = apply_recipe(cfg)
    L.seed_everything(0)
    module = instantiate(cfg.lit_module, model_config=instantiate(cfg.model))
    n_params = module.model.num_parameters()
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.update(logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                       val_check_interval=None, num_sanity_val_steps=0)
    trainer = instantiate(trainer_cfg)
    data = RandomTokens(cfg.data.batch_size, cfg.data.seq_len, cfg.model.vocab_size)
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=None))
    if not trainer.is_global_zero:
        return
    timed = module.throughput[args.warmup:]
    tps = statistics.median(timed)
    result = {"strategy": args.strategy, "devices": args.devices, "preset": args.preset, "params_M": n_params / 1e6,
              "micro_batch": plan.micro_batch_size, "seq_len": plan.seq_len, "accumulate": plan.accumulate,
              "global_batch_tokens": plan.tokens_per_step, "steps": trainer.global_step, "timed_steps": len(timed),
              "tokens_per_s": tps, "tokens_per_s_per_gpu": tps / plan.world_size,
              "mfu": module.summary().get("mfu"), "skipped_steps": module.skipped_steps,
              "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
              "wall_s": time.perf_counter() - t0}
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


def driver(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    known = {"ddp2": ("ddp", 2, None), "ddp1": ("ddp", 1, "0"), "fsdp2": ("fsdp", 2, None)}
    runs = [known[r] for r in args.runs.split(",")]
    results = []
    for strategy, devices, visible in runs:
        path = out / f"scaling_{strategy}{devices}.json"
        cmd = [sys.executable, __file__, "--worker", "--strategy", strategy, "--devices", str(devices),
               "--json", str(path), "--preset", args.preset, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--micro-batch", str(args.micro_batch), "--global-batch-tokens", str(args.global_batch_tokens),
               "--accelerator", args.accelerator, "--run-dir", str(out / f"run_{strategy}{devices}"),
               *sum((["--override", o] for o in args.override), [])]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible
        print(f"--- {strategy} on {devices} device(s): {' '.join(cmd)}", flush=True)
        try:
            proc = subprocess.run(cmd, env=env, timeout=args.timeout, capture_output=True, text=True)
            (out / f"scaling_{strategy}{devices}.log").write_text(proc.stdout[-20000:] + proc.stderr[-20000:])
            ok = proc.returncode == 0 and path.exists()
            if not ok:
                print(proc.stderr[-3000:], flush=True)
        except subprocess.TimeoutExpired as e:
            ok = False
            tail = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
            (out / f"scaling_{strategy}{devices}.log").write_text(tail[-40000:] + f"\ntimed out after {args.timeout}s\n")
            print(f"timed out after {args.timeout}s", flush=True)
        results.append(json.loads(path.read_text()) if ok else {"strategy": strategy, "devices": devices,
                                                                 "failed": True})
        write_table(results, out, args)  # after every run: a run cut short by a time limit still leaves a table


def write_table(results: list[dict], out: Path, args) -> None:
    one = next((r for r in results if r.get("devices") == 1 and not r.get("failed")), None)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    lines = [f"# Scaling: tokens/s per GPU, {args.preset}, DDP 1 -> 2 GPUs and FSDP on 2", "",
             f"Command: `python benchmarks/bench_scaling.py --out benchmarks/results --preset {args.preset} "
             f"--steps {args.steps} --warmup {args.warmup} --micro-batch {args.micro_batch} "
             f"--global-batch-tokens {args.global_batch_tokens}`", "",
             f"Device: {gpu}; torch {torch.__version__}; python {platform.python_version()}. Synthetic tokens, "
             f"bf16-mixed, AdamW, clip 1.0; median over timed steps (first {args.warmup} dropped).", "",
             "| strategy | GPUs | micro-batch x accum | global batch (tokens) | tokens/s | tokens/s per GPU | "
             "scaling efficiency | MFU | peak memory (GiB) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.get("failed"):
            lines.append(f"| {r['strategy']} | {r['devices']} | failed (see scaling_{r['strategy']}{r['devices']}.log)"
                         " | | | | | | |")
            continue
        eff = f"{r['tokens_per_s_per_gpu'] / one['tokens_per_s_per_gpu']:.1%}" if one else "-"
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
        mem = f"{r['peak_mem_gib']:.1f}" if r.get("peak_mem_gib") is not None else "-"
        lines.append(f"| {r['strategy']} | {r['devices']} | {r['micro_batch']} x {r['accumulate']} | "
                     f"{r['global_batch_tokens']:,} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s_per_gpu']:,.0f} | "
                     f"{eff} | {mfu} | {mem} |")
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    (out / "scaling.md").write_text(text)
    (out / "scaling.json").write_text(json.dumps(results, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help="one run (internal)")
    p.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp"])
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--json", default="scaling_run.json")
    p.add_argument("--preset", default="deltanet_340m_15b")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--global-batch-tokens", type=int, default=2 * 8 * 2048)
    p.add_argument("--accelerator", default="gpu")
    p.add_argument("--run-dir", default="/tmp/bench_scaling")
    p.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--timeout", type=int, default=180, help="seconds per run (the first compiles the Triton kernels)")
    p.add_argument("--runs", default="ddp2,ddp1,fsdp2", help="which runs, in order (ddp2, ddp1, fsdp2)")
    args = p.parse_args()
    worker(args) if args.worker else driver(args)


if __name__ == "__main__":
    main()
