"""One optimizer step of any method, the one every tool calls (train.py, scripts/benchmark.py, costs, gpu_smoke).

    losses = train_step(state, cfg, micro_batches)

The micro-batches are the forwards this process accumulates into the step (methods/plan.py); each forward is
what one process of `len(micro_batches)` times as many would compute (its own random draws, its loss a mean over
its own pixels), so one process accumulating k forwards makes the update k processes make.
"""

from __future__ import annotations

import contextlib

import torch

from methods import METHODS
from methods.common import Batch, Losses, StepContext
from util.config import Config
from util.ema import ema_update
from util.run import TrainState
from util.schedule import ema_ratio, set_poly_lr


def draws(cfg: Config, iteration: int, virtual_rank: int) -> torch.Generator:
    """The random draws of one forward: a function of (seed, iteration, virtual rank) only, so that resuming needs
    no generator state, and forward j of process r draws what process r * k + j would draw without accumulating."""
    return torch.Generator().manual_seed((cfg.train.seed * 1_000_003 + iteration) * 1_009 + virtual_rank)


def train_step(state: TrainState, cfg: Config, micro_batches: list[Batch], rank: int = 0) -> Losses:
    """Optimizer step `state.iteration`: lr; forward, losses and backward of each micro-batch; AdamW; EMA; then the
    iteration count moves on. Returns the step's losses (detached; each the mean over the forwards), or zeros where
    train.skip_nonfinite skipped a non-finite step."""
    method, k = METHODS[cfg.train.method], len(micro_batches)
    set_poly_lr(state.optimizer, state.iteration, state.total_iters, cfg.train.poly_power)
    state.optimizer.zero_grad(set_to_none=True)
    autocast = (torch.autocast(next(state.model.parameters()).device.type, dtype=state.amp_dtype)
                if state.amp_dtype else contextlib.nullcontext())
    embed_dim = getattr(state.model, "embed_dim", 0)
    per_forward: list[Losses] = []
    for j, batch in enumerate(micro_batches):
        ctx = StepContext(cfg, state.forward, state.ema, state.teachers, draws(cfg, state.iteration, rank * k + j),
                          embed_dim)
        # DDP averages gradients over processes at the last forward's backward only.
        sync = contextlib.nullcontext() if state.ddp is None or j == k - 1 else state.ddp.no_sync()
        with sync:
            with autocast:
                losses = method.step(ctx, batch)
            # Each forward's loss is a mean over its own pixels, as on a process of its own: the step's gradient
            # is the mean over forwards, as DDP's is the mean over processes.
            state.scaler.scale(losses["loss"] / k if k > 1 else losses["loss"]).backward()
        per_forward.append(losses)
    losses = {key: torch.stack([f[key].detach() for f in per_forward]).mean(0) if k > 1
              else per_forward[0][key].detach() for key in per_forward[0]}
    if cfg.train.skip_nonfinite and not torch.isfinite(losses["loss"]).item():
        # Opt-in: one host sync per step buys skipping the poisoned update instead of stopping.
        state.optimizer.zero_grad(set_to_none=True)
        state.skipped_steps += 1
        state.iteration += 1
        return {key: torch.zeros_like(v) for key, v in losses.items() if key != "loss"}
    state.scaler.step(state.optimizer)
    state.scaler.update()
    ema_update(state.ema, state.model, ema_ratio(state.iteration, cfg.train.ema_cap))
    state.iteration += 1
    return losses
