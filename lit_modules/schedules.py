"""Learning-rate schedules as `LambdaLR` factories (built from config with `_partial_: true`)."""
from __future__ import annotations

import math

import torch


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 to each group's peak lr over `warmup_steps`, then cosine decay to `min_lr` at `total_steps`.

    After `total_steps` the lr stays at `min_lr`. `min_lr` is absolute (the paper: peak 3e-4, min 3e-5).
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    peaks = [group["lr"] for group in optimizer.param_groups]
    for peak in peaks:
        if not 0 <= min_lr <= peak:
            raise ValueError(f"min_lr={min_lr} must lie in [0, peak lr={peak}]")

    def make_lambda(peak: float):
        floor = min_lr / peak if peak > 0 else 0.0

        def factor(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / (warmup_steps + 1)
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

        return factor

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [make_lambda(p) for p in peaks])
