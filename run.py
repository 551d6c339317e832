"""Hydra entry point: compose the config, build data, model and Trainer, and run the task.

    python run.py                                  # train a small DeltaNet on the embedded corpus
    python run.py experiment=smoke                 # toy-size run of the whole pipeline (< 1 min on CPU)
    python run.py model=deltanet_hybrid_swa trainer.devices=8
    python run.py task=prepare data=slimpajama_local data.source.root=/path/to/SlimPajama
    python run.py task=generate ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt prompt="The delta rule"
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("DELTANET_ROOT", str(ROOT))

import hydra  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

log = logging.getLogger("run")


def resolve_precision(precision: str | int, accelerator: str) -> str | int:
    """`auto`: bf16 mixed precision on CUDA, full fp32 on CPU."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if on_gpu else "32-true"


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """`ckpt_path=last` means the run directory's checkpoints/last.ckpt (to resume a run, reuse its hydra.run.dir)."""
    if cfg.ckpt_path is None:
        return None
    path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt" if cfg.ckpt_path == "last" else Path(cfg.ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path!r}: no checkpoint file at {path}")
    return str(path)


def train(cfg: DictConfig) -> dict[str, float]:
    import lightning as L
    from hydra.utils import instantiate

    from lit_modules.recipe import apply_recipe, write_metrics

    plan = apply_recipe(cfg)  # token budget -> accumulation / steps / warm-up; fails here on configs that cannot work
    log.info(plan.describe())
    print(plan.describe())
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model_config = instantiate(cfg.model)
    lit_module = instantiate(cfg.lit_module, model_config=model_config)
    n_params = lit_module.model.num_parameters()
    log.info("model: %s, %.2fM parameters", type(lit_module.model).__name__, n_params / 1e6)
    print(f"Model parameters: {n_params / 1e6:.2f}M")

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["precision"] = resolve_precision(trainer_cfg.get("precision", "auto"), str(trainer_cfg.get("accelerator", "auto")))
    trainer = instantiate(trainer_cfg, callbacks=callbacks, logger=loggers)

    trainer.fit(lit_module, datamodule=datamodule, ckpt_path=resolve_ckpt_path(cfg))
    final_train_loss = float(trainer.callback_metrics.get("train/loss", float("nan")))  # validate() clears it
    metrics: dict[str, float] = {}
    if cfg.get("run_final_validation", True):
        results = trainer.validate(lit_module, datamodule=datamodule, verbose=False)
        metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        if "val/loss" in metrics:
            acc = f", accuracy {metrics['val/acc']:.4f}" if "val/acc" in metrics else ""  # MQAR: recall on the queries
            print(f"Final validation: loss {metrics['val/loss']:.4f}, perplexity {metrics['val/ppl']:.2f}{acc}")
    metrics["train/loss"] = final_train_loss
    if trainer.is_global_zero:
        summary = write_metrics(f"{cfg.paths.output_dir}/metrics.json", metrics, plan, lit_module, trainer)["summary"]
        print("Run summary: " + ", ".join(f"{k} {v:.4g}" for k, v in summary.items()))
    print(f"Run directory: {cfg.paths.output_dir}")
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
    from lit_modules.checkpoint import load_model

    if cfg.ckpt_path is None:
        raise ValueError("task=generate needs ckpt_path=<a .ckpt file or a save_pretrained directory>")
    torch.manual_seed(int(cfg.seed))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(cfg.ckpt_path).to(device).eval()
    tokenizer = load_tokenizer(cfg.data.get("tokenizer"))
    ids = torch.tensor([[tokenizer.bos_id] + tokenizer.encode(cfg.prompt)], device=device)
    out = model.generate(ids, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                         top_p=cfg.top_p, eos_token_id=tokenizer.eos_id)
    # Decode prompt and continuation together: SentencePiece drops the leading space of a piece decoded on its own.
    text = tokenizer.decode(out[0, 1:].tolist())
    print(text)
    return text


TASKS = {"train": train, "prepare": prepare, "generate": generate}


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    if cfg.task not in TASKS:
        raise ValueError(f"task={cfg.task!r} is not one of {sorted(TASKS)}")
    return TASKS[cfg.task](cfg)


if __name__ == "__main__":
    main()
