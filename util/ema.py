"""Exponential moving average of the student, updated with fused multi-tensor ops."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of `model` in eval mode: it is updated by `ema_update`, never by an optimizer."""
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, ratio: float) -> None:
    """theta_ema = ratio * theta_ema + (1 - ratio) * theta, for every parameter; buffers are copied."""
    ema_params: list[torch.Tensor] = list(ema.parameters())
    params = [p.detach() for p in model.parameters()]
    if len(ema_params) != len(params):
        raise ValueError("EMA and student have different parameter lists")
    # One fused kernel over all tensors instead of one small kernel per parameter.
    torch._foreach_lerp_(ema_params, params, 1.0 - ratio)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)
