"""Per-iteration schedules of docs/method.md §3: poly learning rate and the capped EMA ratio."""

from __future__ import annotations

import torch


def poly_lr(base_lr: float, iteration: int, total: int, power: float = 0.9) -> float:
    """lr_t = base_lr * (1 - t / T) ** power, for step t = 0 .. T-1 (no warm-up)."""
    return base_lr * (1 - iteration / total) ** power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group `lr` times its `lr_scale` (1 for the encoder, lr_multi for the rest)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def ema_ratio(iteration: int, cap: float) -> float:
    """r = min(1 - 1 / (t + 1), cap): the EMA starts as a copy of the student and averages ever longer."""
    return min(1 - 1 / (iteration + 1), cap)
