"""Labelled images only: the lower bound every semi-supervised method must beat."""

from __future__ import annotations

from methods.common import Batch, Losses, Method, StepContext, cross_entropy_x, weighted_total
from util.config import Config


def supervised_step(ctx: StepContext, batch: Batch) -> Losses:
    """loss = CE(student(img_x), mask_x)."""
    logits_x = ctx.student(batch["img_x"]).logits
    loss_x = cross_entropy_x(logits_x, batch["mask_x"])
    return {"loss": weighted_total(ctx.cfg.train.loss_weights, loss_x), "loss_x": loss_x.detach()}


def reference_protocol(cfg: Config) -> bool:
    """Whether to train as the authors' supervised.py does (train.supervised_protocol: reference)."""
    return cfg.train.supervised_protocol == "reference"


def supervised_batch(cfg: Config) -> tuple[int | None, int]:
    """The authors' supervised.py doubles the batch: 2 x train.global_batch labelled crops a step, at most
    2 x train.batch_size a forward (same_iterations: the semi-supervised methods' labelled batch)."""
    double = 2 if reference_protocol(cfg) else 1
    wanted = cfg.train.global_batch
    return (None if wanted is None else wanted * double), cfg.train.batch_size * double


def supervised_epoch(cfg: Config, n_labeled: int, n_unlabeled: int) -> int:
    """The authors' epoch is max(labelled tiles, train.supervised_epoch_samples) draws from the labelled list,
    repeated where shorter; same_iterations: one pass over the unlabelled list, as the other methods (the labelled
    list where every image is labelled)."""
    if reference_protocol(cfg):
        return max(n_labeled, cfg.train.supervised_epoch_samples)
    return n_unlabeled or n_labeled


METHOD = Method("supervised", supervised_step, unlabeled=False, batch=supervised_batch,
                epoch_length=supervised_epoch)
