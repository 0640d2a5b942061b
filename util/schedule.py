"""Per-iteration schedules of docs/method.md §3: poly learning rate and the capped EMA ratio."""

from __future__ import annotations

import torch


def poly_lr(base_lr: float, iteration: int, total: int, power: float = 0.9) -> float:
    """lr_t = base_lr * (1 - t / T) ** power, for step t = 0 .. T-1 (no warm-up)."""
    return base_lr * (1 - iteration / total) ** power


def set_poly_lr(optimizer: torch.optim.Optimizer, iteration: int, total: int, power: float) -> None:
    """Give every parameter group its own base lr (`initial_lr`, set where the groups are made: the encoder at
    train.lr, the rest at train.lr x train.lr_multi) on the poly schedule at `iteration`."""
    for group in optimizer.param_groups:
        group["lr"] = poly_lr(group["initial_lr"], iteration, total, power)


def ema_ratio(iteration: int, cap: float) -> float:
    """r = min(1 - 1 / (t + 1), cap): the EMA starts as a copy of the student and averages ever longer."""
    return min(1 - 1 / (iteration + 1), cap)
