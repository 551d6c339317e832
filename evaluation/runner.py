"""``python run.py task=eval ckpt_path=<.ckpt or save_pretrained dir>``: the paper's table and the perplexities.

One command, settings in ``conf/eval/default.yaml``:

1. lm-eval tasks (default: the paper's list, :data:`evaluation.report.DEFAULT_TASKS`) through
   :class:`evaluation.lm_eval_adapter.DeltaNetLM`, zero-shot;
2. token-level perplexity on the training corpus's validation split (the run's data config when the checkpoint lies
   in a run directory, else the command's ``data=``), in the training windows;
3. perplexity against position up to ``eval.long_max_len`` (32K) tokens on ``eval.long_file``, as a table and a PNG;
4. the table in the paper's column order as ``<stem>.md`` and ``<stem>.json`` beside the checkpoint, and, when the
   checkpoint came from a run, the numbers as TensorBoard scalars ``eval/<column>`` in that run's log directory.

Datasets are read from the Hugging Face cache (or local files named by task YAMLs under ``eval.include_path``) with the
Hub offline, unless ``eval.allow_download=true``; a task whose dataset is missing stops the run before any model work,
with a message that says what to download and where it goes.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

__all__ = ["evaluate_checkpoint", "find_run_dir", "MissingDatasetError", "check_task_datasets"]


class MissingDatasetError(FileNotFoundError):
    """A task's dataset is neither in the Hugging Face cache nor in local files."""


def set_offline(offline: bool) -> None:
    """Hub access off (or on) for ``datasets`` / ``huggingface_hub``, also when they were imported already."""
    value = "1" if offline else "0"
    os.environ["HF_HUB_OFFLINE"] = value
    os.environ["HF_DATASETS_OFFLINE"] = value
    import sys
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants as hc
        hc.HF_HUB_OFFLINE = offline
    if "datasets" in sys.modules:
        import datasets.config as dc
        dc.HF_HUB_OFFLINE = offline
        dc.HF_DATASETS_OFFLINE = offline


def find_run_dir(ckpt_path: str | os.PathLike) -> Path | None:
    """The run directory of ``<run>/checkpoints/<name>.ckpt`` (it holds ``.hydra/config.yaml``), else None."""
    p = Path(ckpt_path).resolve()
    if p.is_file() and p.parent.name == "checkpoints" and (p.parent.parent / ".hydra" / "config.yaml").is_file():
        return p.parent.parent
    return None


def _dataset_of(task_manager, name: str) -> tuple[str | None, str | None]:
    entry = task_manager.task_index.get(name)
    cfg = dict(getattr(entry, "cfg", None) or {})
    path, config = cfg.get("dataset_path"), cfg.get("dataset_name")
    if path is None and "class" in cfg:  # a Python task: its class names the dataset
        cls = cfg["class"]
        path, config = getattr(cls, "DATASET_PATH", None), getattr(cls, "DATASET_NAME", None)
    return path, config


def check_task_datasets(task_names: list[str], task_manager) -> None:
    """Loads every task once (so every dataset is read); raises :class:`MissingDatasetError` naming all missing ones."""
    from datasets import config as dc

    unknown = [t for t in task_names if t not in task_manager.task_index]
    if unknown:
        raise ValueError(f"unknown lm-eval task(s) {unknown}; add task YAMLs with eval.include_path=<dir> "
                         "(`lm-eval ls tasks` lists the known ones)")
    missing = []
    for name in task_names:
        try:
            task_manager.load([name])
        except Exception as e:  # datasets raises ConnectionError/FileNotFoundError/DatasetNotFoundError/ValueError
            path, config = _dataset_of(task_manager, name)
            missing.append((name, path, config, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
    if missing:
        lines = [f"{len(missing)} lm-eval task(s) cannot read their dataset offline:"]
        for name, path, config, err in missing:
            args = f"{path!r}" + (f", {config!r}" if config else "")
            lines.append(f"  - {name}: dataset {path} (config {config}): {err}\n"
                         f"      download: python -c \"import datasets; datasets.load_dataset({args})\"")
        lines.append(f"Run the downloads on a machine with network access; they go to the Hugging Face datasets cache "
                     f"({dc.HF_DATASETS_CACHE}; set HF_HOME or HF_DATASETS_CACHE to move it, and copy that folder "
                     f"here). Or rerun with eval.allow_download=true, or pick tasks with eval.tasks=[...].")
        raise MissingDatasetError("\n".join(lines))


def _read_long_file(path: Path, tokenizer) -> np.ndarray:
    """A .txt file is one document; a .jsonl file's ``text`` records are packed as in training ([BOS] doc [EOS])."""
    if not path.is_file():
        raise FileNotFoundError(f"eval.long_file={str(path)!r}: no such file")
    if path.suffix == ".jsonl":
        docs = [json.loads(line)["text"] for line in path.open() if line.strip()]
        ids = [t for ids in tokenizer.encode_batch(docs, bos=True, eos=True) for t in ids]
    else:
        ids = tokenizer.encode(path.read_text(), bos=True)
    return np.asarray(ids, dtype=np.int64)


def _validation_tokens(data_cfg: DictConfig | None) -> tuple[np.ndarray | None, int, str]:
    """The validation split of a prepared corpus: (tokens, training seq_len, description) or (None, 0, reason)."""
    from datamodules.packed import TokenFile
    from datamodules.prepare import load_meta

    if data_cfg is None or "cache_dir" not in data_cfg:
        return None, 0, "no corpus data config"
    cache_dir = str(data_cfg.cache_dir)
    meta = load_meta(cache_dir)
    if meta is None:
        return None, 0, f"no prepared corpus in {cache_dir} (python run.py task=prepare data=...)"
    if "validation" not in meta["splits"]:
        return None, 0, f"{cache_dir} has no validation split"
    return TokenFile(cache_dir, "validation", meta["dtype"]).tokens, int(data_cfg.seq_len), cache_dir


def _log_tensorboard(run_dir: Path, table: dict[str, float], step: int) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    log_dir = run_dir / "tensorboard"  # conf/logger/tensorboard.yaml: save_dir=<run>, name=tensorboard, version=""
    writer = SummaryWriter(str(log_dir))
    for column, value in table.items():
        writer.add_scalar(f"eval/{column}", value, step)
    writer.close()
    return log_dir


def evaluate_checkpoint(ckpt_path: str, eval_cfg: DictConfig | dict, data_cfg: DictConfig | None = None,
                        tokenizer_path: str | None = None) -> dict[str, Any]:
    """Runs the evaluation described in the module docstring; returns ``{"table", "paths", ...}``."""
    cfg = OmegaConf.create(eval_cfg) if isinstance(eval_cfg, dict) else eval_cfg
    set_offline(not cfg.allow_download)
    from datamodules.tokenizer import load_tokenizer
    from lit_modules.checkpoint import load_model
    from evaluation.perplexity import (perplexity_by_position, plot_perplexity_by_position,
                                       position_table_markdown, validation_perplexity)
    from evaluation.report import build_table, write_report
    from evaluation.scoring import resolve_device, resolve_dtype

    ckpt = Path(ckpt_path)
    if not ckpt.exists():
        raise FileNotFoundError(f"ckpt_path={ckpt_path!r}: no checkpoint file or save_pretrained directory there")
    run_dir = find_run_dir(ckpt)
    if run_dir is not None:
        run_cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        data_cfg = run_cfg.get("data", data_cfg)  # the corpus the model was trained on
        log.info("checkpoint from run %s: validation data %s", run_dir, data_cfg.get("cache_dir"))
    if tokenizer_path is None and data_cfg is not None:
        tokenizer_path = data_cfg.get("tokenizer")
    tasks = list(cfg.tasks or [])
    task_manager = None
    if tasks:  # before loading the model: a missing dataset stops the run at once
        from lm_eval.tasks import TaskManager
        inc = cfg.include_path
        include = None if not inc else [str(p) for p in (inc if OmegaConf.is_list(inc) else [inc])]
        task_manager = TaskManager(include_path=include, include_defaults=bool(cfg.include_defaults))
        check_task_datasets(tasks, task_manager)

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    model = load_model(str(ckpt)).to(device).eval()
    tokenizer = load_tokenizer(tokenizer_path)
    step = 0
    if ckpt.is_file():
        step = int(torch.load(ckpt, map_location="cpu", weights_only=False).get("global_step", 0))
    settings = {"checkpoint": str(ckpt), "context_length": int(cfg.context_length), "limit": cfg.limit,
                "dtype": str(dtype).replace("torch.", ""), "device": str(device), "tasks": tasks,
                "num_fewshot": int(cfg.num_fewshot), "batch_size": int(cfg.batch_size),
                "max_batch_tokens": int(cfg.max_batch_tokens), "global_step": step,
                "model": {"family": model.config.family, "parameters": model.num_parameters()}}
    details: dict[str, Any] = {}
    extra: dict[str, float] = {}
    extra_md = ""

    lm_results: dict[str, dict] = {}
    if tasks:
        import lm_eval
        from lm_eval import simple_evaluate
        from evaluation.lm_eval_adapter import DeltaNetLM

        lm = DeltaNetLM(model=model, tokenizer=tokenizer, device=str(device), dtype=dtype,
                        batch_size=int(cfg.batch_size), max_batch_tokens=int(cfg.max_batch_tokens),
                        max_length=int(cfg.context_length), progress=bool(cfg.progress))
        out = simple_evaluate(model=lm, tasks=tasks, num_fewshot=int(cfg.num_fewshot), limit=cfg.limit,
                              task_manager=task_manager, log_samples=False,
                              bootstrap_iters=int(cfg.bootstrap_iters), random_seed=0, numpy_random_seed=0,
                              torch_random_seed=0, fewshot_random_seed=0)
        lm_results = {t: {k: v for k, v in m.items()} for t, m in out["results"].items()}
        details["lm_eval"] = {"version": lm_eval.__version__, "results": lm_results,
                              "n_samples": out.get("n-samples"), "versions": out.get("versions")}

    if cfg.val_ppl:
        tokens, seq_len, where = _validation_tokens(data_cfg)
        if tokens is None:
            log.warning("validation perplexity skipped: %s", where)
            details["validation"] = {"skipped": where}
        else:
            v = validation_perplexity(model, tokens, seq_len, batch_size=int(cfg.val_batch_size),
                                      max_windows=cfg.val_max_windows, dtype=dtype, progress=bool(cfg.progress))
            extra["val/loss"], extra["val/ppl"] = v["loss"], v["ppl"]
            details["validation"] = {"corpus": where, "seq_len": seq_len, **v}

    out_dir = Path(cfg.output_dir) if cfg.output_dir else (ckpt if ckpt.is_dir() else ckpt.parent)
    stem = "eval" if ckpt.is_dir() else f"{ckpt.stem}_eval"
    paths: dict[str, str] = {}
    if cfg.long_file:
        long_tokens = _read_long_file(Path(cfg.long_file), tokenizer)
        curve = perplexity_by_position(model, long_tokens, max_len=int(cfg.long_max_len),
                                       bin_size=int(cfg.long_bin_size), num_sequences=cfg.long_num_sequences,
                                       dtype=dtype, progress=bool(cfg.progress))
        out_dir.mkdir(parents=True, exist_ok=True)
        png = plot_perplexity_by_position(curve, out_dir / f"{stem}_ppl_by_position.png")
        details["ppl_by_position"] = {"file": str(cfg.long_file), **curve}
        extra[f"long/ppl@{curve['max_len']}"] = curve["bins"][-1]["ppl"]
        extra_md = position_table_markdown(curve) + f"\n![perplexity by position]({png.name})\n"
        paths["png"] = str(png)

    table = build_table(lm_results, extra)
    md_path, json_path = write_report(out_dir, stem, table, settings, details, extra_md)
    paths.update(markdown=str(md_path), json=str(json_path))
    if run_dir is not None and cfg.tensorboard:
        paths["tensorboard"] = str(_log_tensorboard(run_dir, table, step))
    print(md_path.read_text())
    print("Evaluation written to " + ", ".join(paths.values()))
    return {"table": table, "paths": paths, "settings": settings}
