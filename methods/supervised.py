"""Labelled images only: the lower bound every semi-supervised method must beat."""

from __future__ import annotations

from methods.common import Losses, StepContext, cross_entropy_x, weighted_total


def supervised_step(ctx: StepContext, batch: dict) -> Losses:
    """loss = CE(student(img_x), mask_x)."""
    logits_x = ctx.student(batch["img_x"]).logits
    loss_x = cross_entropy_x(logits_x, batch["mask_x"])
    return {"loss": weighted_total(ctx.settings.loss_weights, loss_x), "loss_x": loss_x.detach()}
