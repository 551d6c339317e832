"""Hydra entry point: compose the config, build data, model and Trainer, and run the task.

    python run.py                                  # train a small DeltaNet on the embedded corpus
    python run.py experiment=smoke                 # toy-size run of the whole pipeline (< 1 min on CPU)
    python run.py model=deltanet_hybrid_swa trainer.devices=8
    python run.py task=train_fast experiment=mqar     # MQAR in the fast loop (lit_modules/fast_loop.py)
    python run.py task=prepare data=slimpajama_local data.source.root=/path/to/SlimPajama
    python run.py task=generate ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt prompt="The delta rule"
    python run.py task=generate ckpt_path=... generation.stream=true      # print tokens as they come
    python run.py task=generate ckpt_path=... generation.prefill_chunk_size=16384  # prefill pieces of 16K tokens
    python run.py ckpt_path=logs/train/runs/<run>                     # resume a run from its directory alone

A user error (bad config value, data file or checkpoint path) prints one paragraph and exits with status 1;
`DELTANET_DEBUG=1` (or `debug=true`) shows the traceback. A run stopped by SIGTERM exits with status 143 once saved.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("DELTANET_ROOT", str(ROOT))

import hydra  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402

log = logging.getLogger("run")


def info(msg: str) -> None:
    """Log once per run, not once per DDP process (rank from the launcher's environment, as Lightning reads it)."""
    if all(int(os.environ.get(k, 0) or 0) == 0 for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID")):
        log.info(msg)


def resolve_precision(precision: str | int, accelerator: str) -> str | int:
    """`auto`: bf16 mixed precision on CUDA, full fp32 on CPU."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if on_gpu else "32-true"


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """The checkpoint file to resume from: `ckpt_path` is a run directory (its checkpoints/last.ckpt), a .ckpt file,
    or `last` (this run directory's checkpoints/last.ckpt, with hydra.run.dir=<run dir>)."""
    from lit_modules.resume import ResumeError, find_run

    if cfg.ckpt_path is None:
        return None
    if cfg.ckpt_path == "last":
        path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise ResumeError(f"ckpt_path=last: no checkpoint file at {path}")
        return str(path)
    return str(find_run(cfg.ckpt_path)[1])


RESUME_OVERRIDES: list[str] | None = None  # set by __main__ from the command line (lit_modules.resume.resume_argv)


def restore_run_config(cfg: DictConfig) -> DictConfig:
    """On `ckpt_path=<run dir or its last.ckpt>`: the run's own config with this command line's overrides on top."""
    from lit_modules.resume import restore_config

    if cfg.get("ckpt_path") is None or RESUME_OVERRIDES is None:
        return cfg  # a DDP process started for rank > 0 reads the config rank 0 wrote (its argv has no overrides)
    restored = restore_config(cfg, RESUME_OVERRIDES)
    if restored is None:
        return cfg
    cfg, line = restored
    info(line)
    with open_dict(cfg):
        cfg.resumed_config = OmegaConf.to_yaml(cfg)  # written back to the run directory once it fits the checkpoint
    return cfg


def train(cfg: DictConfig) -> dict[str, float]:
    from lit_modules.console import quiet_lightning
    from lit_modules.devices import check_devices

    check_devices(cfg.trainer)  # before anything is built or started
    quiet_lightning()
    import lightning as L
    from hydra.utils import instantiate

    from lit_modules.recipe import apply_recipe, write_metrics
    from lit_modules.resume import check_model_matches, write_run_config

    plan = apply_recipe(cfg)  # token budget -> accumulation / steps / warm-up; fails here on configs that cannot work
    info(plan.describe())
    ckpt_path = resolve_ckpt_path(cfg)
    model_config = instantiate(cfg.model)
    if ckpt_path is not None:
        check_model_matches(ckpt_path, model_config)  # a short list of differing keys, not a state_dict dump
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")  # it is ours
        if cfg.get("resumed_config"):
            write_run_config(cfg.resumed_config, cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    lit_module = instantiate(cfg.lit_module, model_config=model_config)
    n_params = lit_module.model.num_parameters()
    info(f"Model parameters: {n_params / 1e6:.2f}M ({type(lit_module.model).__name__}, {model_config.family})")

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["precision"] = resolve_precision(trainer_cfg.get("precision", "auto"), str(trainer_cfg.get("accelerator", "auto")))
    trainer = instantiate(trainer_cfg, callbacks=callbacks, logger=loggers)

    trainer.fit(lit_module, datamodule=datamodule, ckpt_path=ckpt_path)  # Preempted (SIGTERM) after saving
    final_train_loss = float(trainer.callback_metrics.get("train/loss", float("nan")))  # validate() clears it
    metrics: dict[str, float] = {}
    if cfg.get("run_final_validation", True):
        results = trainer.validate(lit_module, datamodule=datamodule, verbose=False)
        metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        if "val/loss" in metrics:
            acc = f", accuracy {metrics['val/acc']:.4f}" if "val/acc" in metrics else ""  # MQAR: recall on the queries
            info(f"Final validation: loss {metrics['val/loss']:.4f}, perplexity {metrics['val/ppl']:.2f}{acc}")
    metrics["train/loss"] = final_train_loss
    if trainer.is_global_zero:
        summary = write_metrics(f"{cfg.paths.output_dir}/metrics.json", metrics, plan, lit_module, trainer)["summary"]
        log.info("Run summary: " + ", ".join(f"{k} {v:.4g}" for k, v in summary.items()))
        log.info(f"Run directory: {cfg.paths.output_dir}")
    return metrics


def prepare(cfg: DictConfig) -> None:
    """Tokenize the configured corpus into its sharded token files (resumable: finished shards are kept).

    Split over nodes or jobs: `+shard_index=I +shard_count=N` takes every N-th input file from the I-th; without them
    the job's RANK/WORLD_SIZE (torchrun) or SLURM_PROCID/SLURM_NTASKS are used, else the whole corpus. Each share
    writes only its own shards; the share that completes the corpus writes its manifest (meta.json).
    """
    from hydra.utils import instantiate

    env = os.environ
    index, count = cfg.get("shard_index"), cfg.get("shard_count")
    if index is None and count is None:
        for rank_var, world_var in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
            if rank_var in env and world_var in env:
                index, count = env[rank_var], env[world_var]
                break
    if (index is None) != (count is None):
        raise ValueError(f"task=prepare needs both shard_index and shard_count, got {index} and {count}")
    index, count = int(index or 0), int(count or 1)
    datamodule = instantiate(cfg.data)
    meta = datamodule.prepare_shards(shard_index=index, shard_count=count)
    if meta is None:
        print(f"prepared share {index} of {count} into {datamodule.cache_dir}; other shares still missing")
    else:
        print(f"corpus complete in {datamodule.cache_dir}: " + ", ".join(
            f"{s} {v['n_tokens']:,} tokens" for s, v in meta["splits"].items()))


def generate(cfg: DictConfig) -> str:
    """Load a checkpoint (Lightning .ckpt or a save_pretrained directory) and continue `prompt`."""
    from datamodules.tokenizer import load_tokenizer
    from deltanet.generation import PREFILL_CHUNK_SIZE
    from lit_modules.checkpoint import load_model

    if cfg.ckpt_path is None:
        raise ValueError("task=generate needs ckpt_path=<a .ckpt file or a save_pretrained directory>")
    torch.manual_seed(int(cfg.seed))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(cfg.ckpt_path).to(device).eval()
    tokenizer = load_tokenizer(cfg.data.get("tokenizer"))
    ids = torch.tensor([[tokenizer.bos_id] + tokenizer.encode(cfg.prompt)], device=device)
    gen = cfg.get("generation") or {}
    streamer, shown = None, [tokenizer.decode(ids[0, 1:].tolist())]
    if gen.get("stream", False):  # print the continuation as it comes (decoding the whole text: spaces stay right)
        print(shown[0], end="", flush=True)
        new_ids: list[int] = []

        def streamer(col: torch.Tensor) -> None:
            new_ids.append(int(col[0]))
            text = tokenizer.decode(ids[0, 1:].tolist() + new_ids)
            print(text[len(shown[0]):], end="", flush=True)
            shown[0] = text
    out, stats = model.generate(ids, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                                top_p=cfg.top_p, eos_token_id=tokenizer.eos_id, fast=gen.get("fast", True),
                                cuda_graph=gen.get("cuda_graph", None), streamer=streamer, return_stats=True,
                                prefill_chunk_size=gen.get("prefill_chunk_size", PREFILL_CHUNK_SIZE))
    # Decode prompt and continuation together: SentencePiece drops the leading space of a piece decoded on its own.
    text = tokenizer.decode(out[0, 1:].tolist())
    print() if streamer is not None else print(text)
    print(f"prefill {stats.prefill_ms:.1f} ms ({stats.prompt_tokens} tokens), decode {stats.decode_tokens_per_s:.1f} "
          f"tokens/s ({stats.new_tokens} new tokens, {'CUDA graph' if stats.cuda_graph else 'eager'}, "
          f"{'static state' if stats.fast else 'reference loop'})")
    return text


def train_fast(cfg: DictConfig) -> dict[str, float]:
    """MQAR in the fast loop (lit_modules/fast_loop.py): the objects of `train`, without Lightning around each step."""
    from lit_modules.fast_loop import train_fast as fast

    return fast(cfg)["metrics"]


def evaluate(cfg: DictConfig) -> dict:
    """The paper's table (lm-eval tasks) and perplexities of a checkpoint, written beside it (evaluation/runner.py)."""
    from evaluation.runner import evaluate_checkpoint

    if cfg.ckpt_path is None:
        raise ValueError("task=eval needs ckpt_path=<a .ckpt file or a save_pretrained directory>")
    return evaluate_checkpoint(str(cfg.ckpt_path), cfg.eval, data_cfg=cfg.get("data"))


TASKS = {"train": train, "train_fast": train_fast, "prepare": prepare, "generate": generate, "eval": evaluate}


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from lit_modules.console import debug_enabled, format_user_error, user_error

    try:
        if cfg.task not in TASKS:
            raise ValueError(f"task={cfg.task!r} is not one of {sorted(TASKS)}")
        if cfg.task == "train":
            cfg = restore_run_config(cfg)
        return TASKS[cfg.task](cfg)
    except Exception as e:  # a user error: one paragraph, no traceback (unless debugging); a bug: the traceback
        err = user_error(e)
        if err is None or debug_enabled(cfg):
            raise
        from lit_modules.callbacks import PREEMPTED_EXIT_CODE, Preempted

        print(format_user_error(err), file=sys.stderr, flush=True)
        sys.exit(PREEMPTED_EXIT_CODE if isinstance(err, Preempted) else 1)


if __name__ == "__main__":
    from lit_modules.resume import resume_argv

    sys.argv[1:], RESUME_OVERRIDES = resume_argv(sys.argv[1:])  # ckpt_path=<run dir>: the run's config, its directory
    main()
