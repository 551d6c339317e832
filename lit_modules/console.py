"""What a run prints: each message once, no advertisement, and user errors as one paragraph without a traceback.

- Hydra's logging (conf/hydra/default.yaml) prints every log record once to the console with :class:`ConsoleFormatter`
  (the message, with a `WARNING:`/`ERROR:` prefix above INFO) and keeps the full, timed record in `<run dir>/run.log`.
- :func:`quiet_lightning` removes the console handler that `import lightning` adds to the `lightning` logger (its
  records reach Hydra's handlers anyway, so every Lightning line printed twice) and drops Lightning's litlogger tip.
- :func:`user_error` decides whether an exception is the user's to fix (a bad config value, data file or checkpoint
  path: `ValueError`, a missing file, an OmegaConf/Hydra config error, a full disk) and so prints as one paragraph;
  anything else is a bug and keeps its traceback. `DELTANET_DEBUG=1` (or `debug=true`) shows every traceback.
"""
from __future__ import annotations

import logging
import os
import warnings

__all__ = ["ConsoleFormatter", "quiet_lightning", "user_error", "debug_enabled", "format_user_error"]


class ConsoleFormatter(logging.Formatter):
    """`%(message)s` for INFO and below, `LEVEL: %(message)s` above."""

    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        return msg if record.levelno <= logging.INFO else f"{record.levelname}: {msg}"


class _DropAdvert(logging.Filter):
    """Lightning's litlogger advertisement, and its note that a run reached max_steps (the run's normal end)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return "litlogger" not in msg and not ("stopped: `max_steps=" in msg and "reached" in msg)


def quiet_lightning() -> None:
    """Call once after `import lightning` (idempotent)."""
    import lightning  # noqa: F401  (adds its handler on import)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                logger.removeHandler(h)
        logger.propagate = True
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdvert) for f in rank_zero.filters):
        rank_zero.addFilter(_DropAdvert())
    # torch >= 2.10 deprecates a pytree call that Lightning makes on every fit; nothing for a user to act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # val/* are torchmetrics values already reduced over the devices (CausalLMModule): sync_dist would reduce twice.
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('val/")


def debug_enabled(cfg=None) -> bool:
    env = os.environ.get("DELTANET_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    return env or bool(cfg is not None and cfg.get("debug", False))


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def user_error(e: BaseException) -> BaseException | None:
    """The exception in `e`'s chain that a user can act on, or None (a bug: keep the traceback)."""
    from lit_modules.callbacks import CheckpointWriteError, Preempted
    from lit_modules.causal_lm import NonFiniteTrainingError

    user_types: tuple[type, ...] = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                    PermissionError, CheckpointWriteError, NonFiniteTrainingError, Preempted)
    try:
        from omegaconf.errors import OmegaConfBaseException

        user_types += (OmegaConfBaseException,)
    except ImportError:
        pass
    for x in _chain(e):
        if isinstance(x, user_types):
            return x
        if isinstance(x, OSError) and x.errno is not None and x.errno in (28, 122):  # ENOSPC, EDQUOT
            return x
    return None


def format_user_error(e: BaseException) -> str:
    """One paragraph (not wrapped: paths stay whole), then the debug switch."""
    text = str(e).strip() or type(e).__name__
    if type(e).__module__.startswith("omegaconf"):  # drop its full_key / object_type lines
        text = text.splitlines()[0]
        if type(e).__name__ == "MissingMandatoryValue" and getattr(e, "full_key", None):
            text += f" (a required value: give it on the command line, {e.full_key}=...)"
    if isinstance(e, (FileNotFoundError, PermissionError)) and e.filename and str(e.filename) not in text:
        text = f"{text}: {e.filename}"
    if type(e).__name__ == "Preempted":  # not an error: the message says what was saved and how to resume
        return text
    return f"Error ({type(e).__name__}): {text}" + "\n(Set DELTANET_DEBUG=1 or debug=true for the traceback.)"
