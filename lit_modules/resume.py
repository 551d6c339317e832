"""Resume a run from its directory alone: ``python run.py ckpt_path=<run dir or its checkpoints/last.ckpt>``.

A run directory holds the run's composed config (``.hydra/config.yaml``, written by Hydra) and its checkpoints.
Resuming restores that config, applies the command line's other overrides on top (``trainer.max_steps=...``,
``~callbacks.fault``; printed at start), and continues writing into the same directory (TensorBoard, ``run.log``).

- :func:`resume_argv` runs before Hydra: it points ``hydra.run.dir`` at the run directory, keeps Hydra from
  overwriting the run's ``.hydra/config.yaml`` with the freshly composed defaults, and holds back the other
  overrides for the run's config.
- :func:`restore_config` (in the train task) rebuilds the run's config from that file; :func:`write_run_config`
  writes the effective config back once it fits the checkpoint, so a second resume (or a DDP process started for
  rank 1) sees the same one.
- :func:`check_model_matches` compares the checkpoint's model config with the config's before Lightning loads the
  state_dict, and names the differing keys.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

__all__ = ["ResumeError", "find_run", "resume_argv", "restore_config", "write_run_config", "check_model_matches"]

CONFIG = Path(".hydra") / "config.yaml"
CHOICES = Path(".hydra") / "hydra.yaml"
GROUPS = ("model", "data", "optim", "trainer", "callbacks", "logger", "paths", "hydra", "experiment")


class ResumeError(ValueError):
    """A resume that cannot work: no checkpoint, no run config, or a config that does not fit the checkpoint."""


def find_run(ckpt_path: str | Path) -> tuple[Path | None, Path]:
    """(run directory or None, checkpoint file) of `ckpt_path`: a run directory, or a .ckpt file (inside a run
    directory's checkpoints/ or anywhere). Raises :class:`ResumeError` when there is no checkpoint."""
    p = Path(ckpt_path).expanduser()
    if p.is_dir():
        if not (p / CONFIG).is_file():
            raise ResumeError(f"ckpt_path={ckpt_path}: {p} is a directory but not a run directory (no {CONFIG})")
        ckpt = p / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise ResumeError(f"ckpt_path={ckpt_path}: the run has no checkpoints/last.ckpt (it stopped before its "
                              "first checkpoint); start it again without ckpt_path")
        return p.resolve(), ckpt.resolve()
    if not p.is_file():
        raise ResumeError(f"ckpt_path={ckpt_path}: no checkpoint file or run directory at {p}")
    run = p.parent.parent if p.parent.name == "checkpoints" else p.parent
    return (run.resolve() if (run / CONFIG).is_file() else None), p.resolve()


def _arg_value(argv: Sequence[str], key: str) -> str | None:
    value = None
    for a in argv:
        for prefix in (f"{key}=", f"+{key}=", f"++{key}="):
            if a.startswith(prefix):
                value = a[len(prefix):]
    return value


def resume_argv(argv: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """Split a command line that resumes a train run from a run directory, before Hydra composes anything.

    Returns (the arguments for Hydra, the overrides for the run's config). Hydra gets `ckpt_path`, the `hydra.*`
    overrides, ``hydra.run.dir=<run dir>`` and ``hydra.output_subdir=null`` (so the run's `.hydra/` stays as it was);
    every other override is returned, to go on top of the run's saved config (it may name keys that only that
    config has, e.g. ``~callbacks.fault``). Anything else (no run directory, another task, a multirun) is returned
    unchanged with None; errors are left to the train task.
    """
    argv = list(argv)
    if any(a in ("-m", "--multirun") or a.startswith("-") for a in argv):
        return argv, None
    task = _arg_value(argv, "task")
    ckpt = _arg_value(argv, "ckpt_path")
    if (task not in (None, "train")) or ckpt in (None, "", "null", "last"):
        return argv, None
    try:
        run, _ = find_run(ckpt)
    except ResumeError:
        return argv, None
    if run is None:
        return argv, None
    is_hydra = [a.lstrip("+~").startswith("hydra.") or a.lstrip("+~").startswith("hydra/") for a in argv]
    is_ckpt = [a.lstrip("+").startswith("ckpt_path=") for a in argv]
    hydra_args = [a for a, h, c in zip(argv, is_hydra, is_ckpt) if h or c]
    overrides = [a for a, h, c in zip(argv, is_hydra, is_ckpt) if not (h or c)]
    if _arg_value(argv, "hydra.run.dir") is None:
        hydra_args.append(f"hydra.run.dir={run}")
    if _arg_value(argv, "hydra.output_subdir") is None:
        hydra_args.append("hydra.output_subdir=null")  # the run's own .hydra/ stays; restore_config updates config.yaml
    return hydra_args, overrides


def _saved_choices(run: Path) -> dict[str, Any]:
    try:
        return dict(OmegaConf.load(run / CHOICES).hydra.runtime.choices)
    except Exception:  # no hydra.yaml (copied directory): compare nothing
        return {}


def restore_config(cfg: DictConfig, overrides: Sequence[str]) -> tuple[DictConfig, str] | None:
    """The run's saved config with `overrides` on top, or None when `cfg.ckpt_path` is not inside a run directory.

    Args:
        cfg: the config Hydra composed for this command line (its `ckpt_path` names the run).
        overrides: the overrides to put on top of the run's config (from :func:`resume_argv`); `cfg.ckpt_path` is
            set as well.
    Returns:
        (config, a line saying what was restored) or None.
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if cfg.get("ckpt_path") in (None, "last"):
        return None
    run, ckpt = find_run(cfg.ckpt_path)
    if run is None:
        return None
    saved = OmegaConf.load(run / CONFIG)
    choices = _saved_choices(run)
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    values, refused = [], []
    for o in parsed:
        key = o.key_or_group
        if key.split("/")[0] in GROUPS and "." not in key and not o.is_delete():
            was = choices.get(key)
            if was is None or str(was) != str(o.value()):
                refused.append(f"{o.input_line} (the run used {key}={was})")
            continue  # the same group choice as the run's: already in its config
        values.append(o)
    if refused:
        raise ResumeError(f"ckpt_path={cfg.ckpt_path}: a resumed run keeps its config groups; {', '.join(refused)} "
                          "would change one. Override single values (e.g. trainer.max_steps=240) or start a new run.")
    with_overrides = [o.input_line for o in values]
    OmegaConf.set_struct(saved, True)  # a misspelt key is an error, as on a fresh run
    ConfigLoaderImpl._apply_overrides_to_config(values, saved)
    saved.ckpt_path = cfg.ckpt_path
    line = f"Resuming {run} from {ckpt.relative_to(run) if ckpt.is_relative_to(run) else ckpt} with the run's config " \
           f"({CONFIG})" + (f" and on top: {' '.join(with_overrides)}" if with_overrides else "")
    return saved, line


def write_run_config(config_yaml: str, output_dir: str | Path) -> None:
    """Write the effective config of a resumed run to `<output_dir>/.hydra/config.yaml` (atomically: DDP processes of
    rank > 0 read it while starting), once it is known to fit the checkpoint."""
    out = Path(output_dir) / CONFIG
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(config_yaml)
    os.replace(tmp, out)


def check_model_matches(ckpt_path: str | Path, model_config: Any) -> None:
    """Raise :class:`ResumeError` naming the keys where the checkpoint's model config differs from `model_config`."""
    import torch

    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=False)  # a local training file
    except Exception as e:
        raise ResumeError(f"ckpt_path={ckpt_path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    saved = (ckpt.get("hyper_parameters") or {}).get("model_config") if isinstance(ckpt, dict) else None
    if saved is None:
        return  # not ours: let Lightning load it
    want = dataclasses.asdict(model_config) if dataclasses.is_dataclass(model_config) else dict(model_config)
    diff = [f"model.{k}: checkpoint {saved.get(k)!r}, config {want.get(k)!r}"
            for k in sorted(set(saved) | set(want)) if saved.get(k) != want.get(k)]
    if diff:
        raise ResumeError(f"ckpt_path={ckpt_path} does not match the config ({'; '.join(diff)}). Resume with the "
                          "run's own config (ckpt_path=<its run directory>) or drop the overrides that change these.")
