"""Check `trainer.accelerator`, `trainer.devices` and `trainer.num_nodes` against the machine before anything starts.

Lightning, given `devices=8` without 8 GPUs and `accelerator=auto`, quietly starts 8 CPU processes with gloo DDP
(13 GB of RAM after 2 minutes at 0.05 it/s on a 2-core machine). :func:`check_devices` refuses that instead:

- more GPUs than are visible is an error that says how many there are;
- `accelerator=gpu` without a GPU is an error;
- more than one CPU process needs an explicit `trainer.accelerator=cpu` (CPU DDP is for tests), and at most one per core;
- `num_nodes > 1` needs a launcher (SLURM's srun or torchrun) that starts the processes on every node.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

__all__ = ["DeviceError", "check_devices"]


class DeviceError(ValueError):
    """The requested devices do not exist on this machine; the message says what does."""


def _requested(devices: Any) -> tuple[int | None, list[int] | None]:
    """(count, explicit GPU indices) of `trainer.devices`; count None = `auto` / -1 (every device)."""
    if isinstance(devices, bool):
        raise DeviceError(f"trainer.devices={devices!r} must be a number, a list of GPU indices, or auto")
    if isinstance(devices, str):
        s = devices.strip()
        if s in ("auto", "-1"):
            return None, None
        if s.lstrip("-").isdigit():
            return int(s), None
        try:
            idx = [int(d) for d in s.split(",") if d.strip()]
        except ValueError:
            raise DeviceError(f"trainer.devices={devices!r} is not a number, a list of GPU indices like '0,1', "
                              "or auto") from None
        return len(idx), idx
    if isinstance(devices, int):
        return (None, None) if devices == -1 else (devices, None)
    try:
        idx = [int(d) for d in devices]
    except (TypeError, ValueError):
        raise DeviceError(f"trainer.devices={devices!r} is not a number, a list of GPU indices, or auto") from None
    return len(idx), idx


def check_devices(trainer_cfg: Mapping[str, Any], cuda_devices: int | None = None, cpu_cores: int | None = None,
                  env: Mapping[str, str] | None = None) -> None:
    """Raise :class:`DeviceError` when `trainer_cfg` asks for devices this machine does not have.

    Args:
        trainer_cfg: the `trainer` config (`accelerator`, `devices`, `num_nodes`).
        cuda_devices: visible CUDA GPUs (default: `torch.cuda.device_count()`).
        cpu_cores: CPU cores (default: `os.cpu_count()`).
        env: the process environment (default: `os.environ`), for the launcher of a multi-node run.
    """
    if cuda_devices is None:
        import torch

        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cpu_cores = cpu_cores or os.cpu_count() or 1
    env = os.environ if env is None else env
    accelerator = str(trainer_cfg.get("accelerator", "auto")).lower()
    devices = trainer_cfg.get("devices", 1)
    count, indices = _requested(devices)
    if count is not None and count < 1:
        raise DeviceError(f"trainer.devices={devices!r} gives no device to train on: ask for at least 1")
    here = f"this machine has {cuda_devices} CUDA GPU{'s' if cuda_devices != 1 else ''} and {cpu_cores} CPU cores"

    if accelerator in ("gpu", "cuda"):
        if cuda_devices == 0:
            raise DeviceError(f"trainer.accelerator={accelerator} but {here}. Use trainer.accelerator=cpu "
                              "(trainer=ddp and trainer=fsdp ask for GPUs; on CPU train with trainer=default).")
    elif accelerator not in ("auto", "cpu"):
        raise DeviceError(f"trainer.accelerator={accelerator!r} is not one of auto, gpu, cpu")
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda_devices > 0)

    if on_gpu:
        if indices is not None and any(not 0 <= i < cuda_devices for i in indices):
            raise DeviceError(f"trainer.devices={devices!r} names GPU indices outside 0..{cuda_devices - 1}: {here}")
        if count is not None and count > cuda_devices:
            raise DeviceError(f"trainer.devices={count} but {here}. Use trainer.devices={cuda_devices} (or auto): "
                              "the token recipe keeps the global batch by raising the gradient accumulation.")
    elif count is not None and count > 1:
        if accelerator != "cpu":
            raise DeviceError(f"trainer.devices={count} but {here}, so this would start {count} CPU processes. "
                              "Use trainer.devices=1, or set trainer.accelerator=cpu explicitly to run several CPU "
                              "processes (gloo DDP, meant for tests: slow and memory-hungry).")
        if indices is not None:
            raise DeviceError(f"trainer.devices={devices!r} lists GPU indices, but the run is on the CPU ({here})")
        if count > cpu_cores:
            raise DeviceError(f"trainer.devices={count} CPU processes but {here}: use at most {cpu_cores}")

    nodes = trainer_cfg.get("num_nodes", 1)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise DeviceError(f"trainer.num_nodes={nodes!r} must be a whole number >= 1")
    if nodes > 1:
        launched = "WORLD_SIZE" in env or "SLURM_NTASKS" in env
        if not launched:
            raise DeviceError(f"trainer.num_nodes={nodes} needs a launcher that starts the processes on every node "
                              "(srun under SLURM, or torchrun); none is set up here (no SLURM_NTASKS or WORLD_SIZE "
                              "in the environment). See README 'Scale'.")
        if "WORLD_SIZE" in env and count is not None and int(env["WORLD_SIZE"]) != count * nodes:
            raise DeviceError(f"trainer.devices={count} x trainer.num_nodes={nodes} = {count * nodes} processes, but "
                              f"the launcher started WORLD_SIZE={env['WORLD_SIZE']}")
