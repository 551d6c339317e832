"""Does training scale? Tokens/s per GPU of a paper preset with DDP / FSDP on any number of GPUs, against 1 GPU.

    python benchmarks/bench_scaling.py --out benchmarks/results          # ddp2, ddp1, fsdp2; writes bench_scaling.md/.json/.png
    python benchmarks/bench_scaling.py --runs ddp1,ddp8,fsdp8 ...         # any <strategy><devices>: ddp4, fsdp8, ...
    python benchmarks/bench_scaling.py --worker --strategy ddp --devices 2 --json r.json   # one run (used by the above)

Each run is its own process (Lightning launches one more process per extra GPU) and trains the preset's model
(`--preset`, default the 340M DeltaNet; `--preset smoke` is the toy model for CPU tests) with the real recipe
(LightningModule, AdamW, clipping, bf16-mixed on GPU, fault check, token-based accumulation) for `--steps` optimizer
steps. The global batch is reduced to `--global-batch-tokens` so that a run is seconds, identical for every run (1 GPU
accumulates N times as many micro-batches as N GPUs). Tokens/s are the median over the timed steps (the first
`--warmup` dropped); scaling efficiency = (tokens/s per GPU on N) / (tokens/s on 1); peak memory is
torch.cuda.max_memory_allocated on rank 0. A 1-device run sees only GPU 0 (CUDA_VISIBLE_DEVICES=0).

Data (`--data`):
- `random` (default): synthetic random ids, different on every rank (the data pipeline is not what is measured; the
  batches differ between device counts, so losses are recorded but not compared).
- `embedded`: real text, the no-network embedded corpus (`data=embedded`: Python's documentation topics, Mistral
  tokenizer) through the configured `PackedLMDataModule`, at the preset's context and micro-batch. The datamodule
  permutes the windows of an epoch with a seed and deals them to ranks strided: rank r's micro-batch b holds windows
  order[r + W*(b*B + j)], j < B. With accumulation A = G / (W*B) (G sequences per global batch), optimizer step s
  therefore consumes exactly order[s*G:(s+1)*G] on any number of ranks W: the same sequences at every step; only
  their split into micro-batches differs (1 GPU: consecutive runs of B; N GPUs: strided), which changes nothing but
  the floating-point summation order of one mean. This holds within one epoch only: the epoch is trimmed to a
  multiple of W*B windows (a W-dependent tail) and Lightning steps early on an epoch's last micro-batch. The corpus
  holds ~56 windows of 2048 tokens, so when `steps * G` exceeds its windows, the train split's tokens are repeated
  R times back to back (`<data cache_dir>_x<R>`, ~2 bytes per token) so that the whole run stays in epoch 0; every
  run of the same steps/global batch gets the same R and the same permutation. The run records `corpus` (tokens,
  repeats, windows used) in its JSON and refuses to start if the run would leave epoch 0.
  The first run tokenizes the corpus into `data/tokenized/embedded` (seconds, no network).

Every run records its per-optimizer-step training loss on rank 0 (`losses`: the module's `train/loss`, the
token-weighted mean over all micro-batches and ranks of the step, synced by torchmetrics) and gradient norm
(`grad_norms`, before clipping). With `--data embedded`, the table compares each run with the 1-device run of the same
global batch: max and mean |loss - 1-GPU loss| over the steps, the final loss, and a verdict against `--loss-tol`;
`bench_scaling.png` plots the curves and the differences. Identical batches leave only numerical differences (fp32 on
CPU: ~1e-6 after a few steps; bf16 autocast on GPU: reduction order and FSDP's bf16 parameters, which the chaotic
dynamics amplify over steps, hence the default tolerance of 0.05 nats, a judgement, not a measurement).

The 8-GPU paper-configuration run, on one host with 8 GPUs:

    python benchmarks/bench_scaling.py --preset paper_340m_15b --override model=deltanet_hybrid_swa --data embedded \
        --steps 64 --warmup 5 --lr-warmup-steps 6 --micro-batch 8 --global-batch-tokens 131072 \
        --runs ddp1,ddp8,fsdp8 --timeout 330 --out OUT_DIR

Estimated wall time 6-8.5 minutes (benchmarks/README.md has the arithmetic): 64 steps x 131,072 tokens
(64 sequences of 2048: micro-batch 8 x accumulation 8 on 1 GPU, 8 x 1 on 8) = 8.4M tokens per run; 1 GPU at ~53K
tokens/s ~160 s, 8 GPUs at ~400K tokens/s ~21 s each, plus 40-120 s start-up per run (imports, model init, Triton and
FlexAttention compiles; the first run's are cold). The 1-GPU reference runs first: every comparison needs it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import IterableDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DELTANET_ROOT", str(ROOT))

STRATEGIES = ("ddp", "fsdp")
_RUN = re.compile(r"(ddp|fsdp)(\d+)")


def parse_runs(text: str) -> list[tuple[str, int]]:
    """'ddp1,ddp8,fsdp8' -> [('ddp', 1), ('ddp', 8), ('fsdp', 8)]: any <strategy><devices>, in the given order."""
    runs: list[tuple[str, int]] = []
    for item in (s.strip().lower() for s in text.split(",")):
        m = _RUN.fullmatch(item)
        if m is None or int(m.group(2)) < 1:
            raise ValueError(f"--runs item {item!r}: expected <strategy><devices> with strategy in {STRATEGIES} and "
                             "devices >= 1, e.g. ddp1,ddp8,fsdp8")
        run = (m.group(1), int(m.group(2)))
        if run in runs:
            raise ValueError(f"--runs lists {item} twice")
        runs.append(run)
    return runs


class RandomTokens(IterableDataset):
    """Endless micro-batches of random token ids, different on every rank."""

    def __init__(self, batch_size: int, seq_len: int, vocab_size: int, seed: int = 0):
        self.batch_size, self.seq_len, self.vocab_size, self.seed = batch_size, seq_len, vocab_size, seed

    def __iter__(self):
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        g = torch.Generator().manual_seed(self.seed + 1000 * rank)
        while True:
            yield {"input_ids": torch.randint(0, self.vocab_size, (self.batch_size, self.seq_len), generator=g)}


class LossRecorder(L.Callback):
    """Rank 0's `train/loss` and `train/grad_norm` of every optimizer step, as the module logged them in its
    on_before_optimizer_step (the loss synced over micro-batches and ranks), read after the step's last micro-batch."""

    def __init__(self):
        self.losses: list[float] = []
        self.grad_norms: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero or trainer.global_step == len(self.losses):  # rank_zero_only logs; mid-step
            return
        metrics = trainer.callback_metrics
        self.losses.append(float(metrics["train/loss"]))
        self.grad_norms.append(float(metrics["train/grad_norm"]))
        assert len(self.losses) == trainer.global_step, (len(self.losses), trainer.global_step)


def embedded_datamodule(cfg, steps: int, sequences_per_step: int):
    """The configured datamodule (data=embedded) over a corpus long enough that `steps` optimizer steps of
    `sequences_per_step` windows stay in epoch 0, where every device count sees the same global batches (module
    docstring). When the prepared train split is too short, its tokens are repeated R times into `<cache_dir>_x<R>`.
    Returns the datamodule and a summary of the corpus for the run's JSON."""
    from hydra.utils import instantiate

    from datamodules.prepare import load_meta

    base = instantiate(cfg.data)
    # Preparation writes files: only the launching process (rank 0) does it, before trainer.fit starts the other
    # ranks (Lightning re-runs this script for them with LOCAL_RANK set); they read what it wrote.
    launcher = int(os.environ.get("LOCAL_RANK", "0")) == 0
    if launcher:
        base.prepare_data()  # tokenizes once (no network); returns at once when the cache is there
    meta = load_meta(base.cache_dir)
    n_tokens, seq_len = int(meta["splits"]["train"]["n_tokens"]), int(cfg.data.seq_len)
    need = steps * sequences_per_step  # windows that the run consumes
    repeats = 1 if n_tokens // seq_len >= need else math.ceil(need * seq_len / n_tokens)
    info = {"source": "embedded", "train_tokens": n_tokens, "repeats": repeats, "seq_len": seq_len,
            "windows": repeats * n_tokens // seq_len, "windows_used": need}
    if info["windows"] < need:  # cannot happen with the repeats above; the comparison rests on it
        raise RuntimeError(f"{need} windows needed in epoch 0, the corpus has {info['windows']}: {info}")
    if repeats == 1:
        return base, info
    cache_dir = f"{base.cache_dir}_x{repeats}"
    if launcher and not _repeated_ready(cache_dir, meta, repeats):
        _write_repeated(base.cache_dir, cache_dir, meta, repeats)
    dm = instantiate(cfg.data, cache_dir=cache_dir)
    dm.prepare_data = lambda: None  # the repeated copy is not a preparation of the source: never re-tokenize into it
    return dm, info


def _repeated_ready(cache_dir: str, meta: dict, repeats: int) -> bool:
    """Is `cache_dir` already the train split of the corpus described by `meta`, repeated `repeats` times?"""
    from datamodules.prepare import load_meta

    have = load_meta(cache_dir)
    return (have is not None and have.get("fingerprint") == meta["fingerprint"]
            and have["splits"]["train"]["n_tokens"] == repeats * meta["splits"]["train"]["n_tokens"])


def _write_repeated(src: str, dst: str, meta: dict, repeats: int) -> None:
    """`dst`: the train split of `src` repeated `repeats` times (tokens, document offsets); meta.json written last."""
    src_dir, dst_dir = Path(src), Path(dst)
    dst_dir.mkdir(parents=True, exist_ok=True)
    (dst_dir / "meta.json").unlink(missing_ok=True)
    train = meta["splits"]["train"]
    n = int(train["n_tokens"])
    from datamodules.packed import TokenFile, write_token_split

    source = TokenFile(src_dir, "train", meta=meta)
    tokens, offsets = np.asarray(source.tokens), source.offsets
    starts = (offsets[:-1][None, :] + n * np.arange(repeats, dtype=np.int64)[:, None]).reshape(-1)
    split = write_token_split(dst_dir, "train", np.tile(tokens, repeats),
                              np.concatenate([starts, [repeats * n]]).astype(np.int64))
    out = {**meta, "splits": {"train": {**train, **split, "repeats": repeats}},
           "note": f"bench_scaling.py: the train split of {src} repeated {repeats} times"}
    tmp = dst_dir / f"meta.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, dst_dir / "meta.json")


def worker(args) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader

    from lit_modules.recipe import apply_recipe

    data_overrides = ["data=embedded", "data.max_tokens=null"] if args.data == "embedded" else []
    overrides = [f"experiment={args.preset}", *data_overrides, f"trainer={args.strategy}",
                 f"trainer.devices={args.devices}", f"trainer.accelerator={args.accelerator}",
                 f"data.batch_size={args.micro_batch}", f"recipe.global_batch_tokens={args.global_batch_tokens}",
                 f"recipe.train_tokens={args.global_batch_tokens * args.steps}",
                 f"recipe.warmup_tokens={args.global_batch_tokens * args.lr_warmup_steps}",
                 "recipe.val_every_steps=null", f"paths.output_dir={args.run_dir}", *args.override]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    if args.accelerator == "cpu":
        cfg.trainer.precision = "32-true"
    plan = apply_recipe(cfg)
    L.seed_everything(0)
    module = instantiate(cfg.lit_module, model_config=instantiate(cfg.model))
    n_params = module.model.num_parameters()
    recorder = LossRecorder()
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.update(logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                       val_check_interval=None, num_sanity_val_steps=0)
    trainer = instantiate(trainer_cfg, callbacks=[recorder])
    corpus = None
    if args.data == "embedded":
        datamodule, corpus = embedded_datamodule(cfg, plan.max_steps, plan.tokens_per_step // plan.seq_len)
        fit_data = {"datamodule": datamodule}
    else:
        data = RandomTokens(cfg.data.batch_size, cfg.data.seq_len, cfg.model.vocab_size)
        fit_data = {"train_dataloaders": DataLoader(data, batch_size=None)}
    t0 = time.perf_counter()
    trainer.fit(module, **fit_data)
    if not trainer.is_global_zero:
        return
    timed = module.throughput[args.warmup:]
    tps = statistics.median(timed)
    result = {"strategy": args.strategy, "devices": args.devices, "preset": args.preset, "params_M": n_params / 1e6,
              "data": args.data, "micro_batch": plan.micro_batch_size, "seq_len": plan.seq_len,
              "accumulate": plan.accumulate, "global_batch_tokens": plan.tokens_per_step, "steps": trainer.global_step,
              "timed_steps": len(timed), "tokens_per_s": tps, "tokens_per_s_per_gpu": tps / plan.world_size,
              "mfu": module.summary().get("mfu"), "skipped_steps": module.skipped_steps,
              "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
              "precision": str(cfg.trainer.precision), "lr_warmup_steps": plan.warmup_steps, "corpus": corpus,
              "wall_s": time.perf_counter() - t0, "losses": recorder.losses, "grad_norms": recorder.grad_norms}
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("losses", "grad_norms")}))


def driver(args) -> None:
    out, work = Path(args.out), Path(args.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for strategy, devices in parse_runs(args.runs):
        name = f"{strategy}{devices}"
        path = work / f"{name}.json"
        path.unlink(missing_ok=True)  # a stale result must not pass for this run's
        cmd = [sys.executable, __file__, "--worker", "--strategy", strategy, "--devices", str(devices),
               "--json", str(path), "--preset", args.preset, "--data", args.data, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--lr-warmup-steps", str(args.lr_warmup_steps),
               "--micro-batch", str(args.micro_batch), "--global-batch-tokens", str(args.global_batch_tokens),
               "--accelerator", args.accelerator, "--run-dir", str(work / f"run_{name}"),
               *sum((["--override", o] for o in args.override), [])]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if devices == 1:
            env["CUDA_VISIBLE_DEVICES"] = "0"
        print(f"--- {strategy} on {devices} device(s): {' '.join(cmd)}", flush=True)
        try:
            proc = subprocess.run(cmd, env=env, timeout=args.timeout, capture_output=True, text=True)
            (work / f"{name}.log").write_text(proc.stdout[-20000:] + proc.stderr[-20000:])
            ok = proc.returncode == 0 and path.exists()
            if not ok:
                print(proc.stderr[-3000:], flush=True)
        except subprocess.TimeoutExpired as e:
            ok = False
            tail = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
            (work / f"{name}.log").write_text(tail[-40000:] + f"\ntimed out after {args.timeout}s\n")
            print(f"timed out after {args.timeout}s", flush=True)
        results.append(json.loads(path.read_text()) if ok else {"strategy": strategy, "devices": devices,
                                                                 "failed": True})
        write_table(results, out, args)  # after every run: a run cut short by a time limit still leaves a table


def compare_losses(results: list[dict]) -> None:
    """Adds `loss_ref`, `loss_max_abs_diff`, `loss_mean_abs_diff` to every embedded-data run that has a 1-device
    reference with the same global batch and step count (the same batches at every step: module docstring)."""
    for r in results:
        if r.get("failed") or r.get("data") != "embedded" or not r.get("losses"):
            continue
        ref = next((o for o in results if not o.get("failed") and o.get("devices") == 1 and o.get("data") == "embedded"
                    and o["global_batch_tokens"] == r["global_batch_tokens"] and o["steps"] == r["steps"]
                    and len(o.get("losses") or []) == len(r["losses"])), None)
        if ref is None:
            continue
        diffs = [abs(a - b) for a, b in zip(r["losses"], ref["losses"])]
        r.update(loss_ref=f"{ref['strategy']}{ref['devices']}", loss_max_abs_diff=max(diffs),
                 loss_mean_abs_diff=sum(diffs) / len(diffs), loss_max_abs_diff_step=diffs.index(max(diffs)))


def write_table(results: list[dict], out: Path, args) -> None:
    compare_losses(results)
    one = next((r for r in results if r.get("devices") == 1 and not r.get("failed")), None)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    names = ", ".join(f"{r['strategy']}{r['devices']}" for r in results)
    precision = "fp32 (CPU)" if args.accelerator == "cpu" else "bf16-mixed"
    data = ("Embedded corpus (real text, data=embedded; the same global batches at every step for every device count, "
            "see the bench_scaling.py docstring)" if args.data == "embedded" else "Synthetic tokens")
    lines = [f"# Scaling: tokens/s per GPU, {args.preset}, runs {names}", "",
             f"Command: `{shlex.join(['python', 'benchmarks/bench_scaling.py', *sys.argv[1:]])}`", "",
             f"Device: {gpu}; torch {torch.__version__}; python {platform.python_version()}. {data}, "
             f"{precision}, AdamW, clip 1.0; median over timed steps (first {args.warmup} dropped).", "",
             "| strategy | GPUs | micro-batch x accum | global batch (tokens) | tokens/s | tokens/s per GPU | "
             "scaling efficiency | MFU | peak memory (GiB) | final loss | max abs(loss - 1-GPU loss) over steps |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.get("failed"):
            lines.append(f"| {r['strategy']} | {r['devices']} | failed (see {r['strategy']}{r['devices']}.log in the --run-dir)"
                         " | | | | | | | | |")
            continue
        eff = f"{r['tokens_per_s_per_gpu'] / one['tokens_per_s_per_gpu']:.1%}" if one else "-"
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
        mem = f"{r['peak_mem_gib']:.1f}" if r.get("peak_mem_gib") is not None else "-"
        final = f"{r['losses'][-1]:.4f}" if r.get("losses") else "-"
        if "loss_max_abs_diff" not in r:
            match = "-"
        elif r["loss_ref"] == f"{r['strategy']}{r['devices']}":
            match = "(reference)"
        else:
            verdict = "match" if r["loss_max_abs_diff"] <= args.loss_tol else "DIFFERS"
            match = (f"{r['loss_max_abs_diff']:.2g} at step {r['loss_max_abs_diff_step']} "
                     f"(mean {r['loss_mean_abs_diff']:.2g}); {verdict} (tol {args.loss_tol:g})")
        lines.append(f"| {r['strategy']} | {r['devices']} | {r['micro_batch']} x {r['accumulate']} | "
                     f"{r['global_batch_tokens']:,} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s_per_gpu']:,.0f} | "
                     f"{eff} | {mfu} | {mem} | {final} | {match} |")
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    (out / "bench_scaling.md").write_text(text)
    (out / "bench_scaling.json").write_text(json.dumps(results, indent=2))
    if args.data == "embedded":
        plot_losses(results, out / "bench_scaling.png", args)


def plot_losses(results: list[dict], path: Path, args) -> None:
    """Loss per optimizer step of every run, and |loss - 1-GPU loss| below it."""
    runs = [r for r in results if not r.get("failed") and r.get("losses")]
    if not runs:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no loss plot", flush=True)
        return
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for r in runs:
        top.plot(range(len(r["losses"])), r["losses"], label=f"{r['strategy']}{r['devices']}", lw=1.2)
    top.set_ylabel("train loss (global batch)")
    top.set_title(f"{args.preset}, {runs[0]['global_batch_tokens']:,} tokens per step, embedded corpus")
    top.legend()
    by_name = {f"{r['strategy']}{r['devices']}": r for r in runs}
    for r in runs:
        ref = by_name.get(r.get("loss_ref"))
        if ref is None or ref is r:
            continue
        diff = [max(abs(a - b), 1e-12) for a, b in zip(r["losses"], ref["losses"])]
        bottom.semilogy(range(len(diff)), diff, label=f"{r['strategy']}{r['devices']} - {r['loss_ref']}", lw=1)
    bottom.axhline(args.loss_tol, color="k", ls=":", lw=0.8)
    bottom.set_ylabel("abs(loss - 1-GPU loss)")
    bottom.set_xlabel("optimizer step")
    if bottom.lines[:-1]:
        bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help="one run (internal)")
    p.add_argument("--strategy", default="ddp", choices=list(STRATEGIES))
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--json", default="scaling_run.json")
    p.add_argument("--preset", default="paper_340m_15b",
                   help="conf/experiment/ name (smoke: toy model, CPU tests); the family: --override model=<family>")
    p.add_argument("--data", default="random", choices=["random", "embedded"],
                   help="random ids (throughput only) or the embedded corpus (real text, comparable loss curves)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="timed steps dropped from the throughput median")
    p.add_argument("--lr-warmup-steps", type=int, default=0, help="linear lr warm-up (optimizer steps)")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--global-batch-tokens", type=int, default=2 * 8 * 2048)
    p.add_argument("--accelerator", default="gpu")
    p.add_argument("--run-dir", default=str(Path(tempfile.gettempdir()) / "bench_scaling"),
                   help="per-run results, logs and Hydra run directories (the table, JSON and plot go to --out)")
    p.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--timeout", type=int, default=180, help="seconds per run (the first compiles the Triton kernels)")
    p.add_argument("--runs", default="ddp2,ddp1,fsdp2",
                   help="which runs, in order: <strategy><devices>, strategy ddp or fsdp (e.g. ddp1,ddp8,fsdp8)")
    p.add_argument("--loss-tol", type=float, default=0.05,
                   help="max abs(loss - 1-GPU loss) over the steps called a match (--data embedded)")
    args = p.parse_args()
    if not args.worker:
        try:
            parse_runs(args.runs)
        except ValueError as e:
            p.error(str(e))
    worker(args) if args.worker else driver(args)


if __name__ == "__main__":
    main()
