"""What the methods share: how a method declares itself, the step's context, pseudo-labels from the EMA model,
CutMix, and the loss terms.

Names follow UniMatch (V2), which users of this field know: img_x / mask_x labelled, img_u_w weak and
img_u_s strong unlabelled views, conf_u_w / mask_u_w the EMA model's confidence and pseudo-label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from util.catalog import IGNORE_INDEX, UNLABELED_PAD
from util.config import Config, LossWeights

Batch = dict[str, torch.Tensor]
Losses = dict[str, torch.Tensor]
# The EMA model's confidence and argmax on the weak view, (B, H, W) each.
PseudoLabels = tuple[torch.Tensor, torch.Tensor]


class StudentOutput(Protocol):
    """What the student's training forward returns (model/segmenter.py's SegmenterOutput)."""

    logits: torch.Tensor
    translated: dict[str, torch.Tensor]


@dataclass
class StepContext:
    """Everything a method needs for one forward besides the batch."""

    # The run's typed config: every number a method computes with is read from it, where it is used.
    cfg: Config
    # The trainable segmenter called for training (DDP-wrapped when distributed).
    student: Callable[..., StudentOutput]
    ema: nn.Module
    teachers: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None
    # Random draws of this forward (UniMatch V2's channel masks): seeded from (seed, iteration, virtual rank).
    generator: torch.Generator
    # Channels of the encoder's token maps (the size of UniMatch V2's channel masks).
    embed_dim: int


# ----------------------------------------------------------------------------------------------------------
# How a method declares itself (its file defines METHOD; methods/__init__.py lists them)


def configured_batch(cfg: Config) -> tuple[int | None, int]:
    """Crops an optimizer step should take over all processes (None: train.batch_size per process, however many
    processes there are) and at most a forward: train.global_batch and train.batch_size."""
    return cfg.train.global_batch, cfg.train.batch_size


def one_pass_over_the_unlabeled_list(cfg: Config, n_labeled: int, n_unlabeled: int) -> int:
    """The published epoch: one pass over the unlabelled list (the labelled list repeated to its length)."""
    return n_unlabeled


def any_forward(n: int, cfg: Config) -> str | None:
    """No sample of a forward interacts with another: any number of crops computes the same."""
    return None


def cutmix_partners(n: int, cfg: Config) -> str | None:
    """Why a forward of `n` crops would CutMix otherwise than one of train.batch_size (None: it would not).

    Sample i takes the box of sample n-1-i of its own forward: an odd forward leaves its middle crop mixed with
    itself (no CutMix), so it computes otherwise unless the configured forward is that very size.
    """
    if cfg.augment.cutmix_p > 0 and n % 2 and n != cfg.train.batch_size:
        return f"{n} crops a forward would leave the middle crop without a CutMix partner"
    return None


@dataclass(frozen=True)
class Method:
    """A training method, declared in its own file: its step and what the trainer must give it."""

    name: str
    # One forward: a micro-batch in, its losses out ('loss' is what is minimised; the rest is logged).
    step: Callable[[StepContext, Batch], Losses]
    # Whether it reads the unlabelled list, and how many strong views each unlabelled item carries.
    unlabeled: bool
    n_strong: int = 0
    # Whether it distils towards the frozen teachers: they are built, and the student carries translators (and,
    # with fusion, projections) for each enabled teacher.
    teachers: bool = False
    # Its batch rule: crops an optimizer step should take over all processes and at most a forward ...
    batch: Callable[[Config], tuple[int | None, int]] = configured_batch
    # ... the draws of an epoch from each list (before train.epoch_samples, which overrides every method) ...
    epoch_length: Callable[[Config, int, int], int] = one_pass_over_the_unlabeled_list
    # ... and why a forward of n crops would make it compute otherwise than one of train.batch_size.
    forward_problem: Callable[[int, Config], str | None] = any_forward


# ----------------------------------------------------------------------------------------------------------
# The shared pieces of the semi-supervised steps


@torch.no_grad()
def pseudo_label(ema: nn.Module, img_u_w: torch.Tensor) -> PseudoLabels:
    """Confidence and argmax of the EMA model's softmax on the weak view: (B, H, W) each."""
    probs = ema(img_u_w).float().softmax(dim=1)
    conf_u_w, mask_u_w = probs.max(dim=1)
    return conf_u_w, mask_u_w


def mix(x: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """CutMix within the batch: inside sample i's box, take sample B-1-i's values (the batch flipped)."""
    inside = box.bool().view(box.shape[0], *([1] * (x.dim() - box.dim())), *box.shape[1:])
    return torch.where(inside, x.flip(0), x)


def cross_entropy_x(logits_x: torch.Tensor, mask_x: torch.Tensor) -> torch.Tensor:
    """Supervised CE averaged over labelled pixels, padding and unlabelled pixels (255) ignored.

    The mean of a batch without one labelled pixel (a crop of padding or no-data only) is 0/0; such a batch
    contributes a zero loss here, where the reference's mean-reduced CE would give NaN and stop the run.
    """
    total = F.cross_entropy(logits_x.float(), mask_x, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (mask_x != IGNORE_INDEX).sum().clamp_min(1)


def unsupervised_loss(logits_u: torch.Tensor, mask_u: torch.Tensor, conf_u: torch.Tensor,
                      ignore_mask: torch.Tensor, conf_thresh: float) -> tuple[torch.Tensor, torch.Tensor]:
    """docs/method.md §3: sum(CE * [conf >= t] * [not padding]) / count(not padding), and the kept-pixel ratio.

    The division is by all non-padded pixels, not by the confident ones, so a batch with few confident
    pixels contributes a small loss rather than a loud one.
    """
    # The unlabelled crop's padding is marked UNLABELED_PAD (254) by the dataset; the reference maps it to
    # 255 before this test, so both values mean "not an image pixel" here.
    valid = ((ignore_mask != IGNORE_INDEX) & (ignore_mask != UNLABELED_PAD)).float()
    confident = (conf_u >= conf_thresh).float() * valid
    loss = F.cross_entropy(logits_u.float(), mask_u, reduction="none")
    denom = valid.sum().clamp_min(1.0)
    return (loss * confident).sum() / denom, confident.sum() / denom


def weighted_total(w: LossWeights, loss_x: torch.Tensor, loss_u: torch.Tensor | None = None,
                   loss_dis: torch.Tensor | None = None) -> torch.Tensor:
    """(x * L_x + u * L_u + dis * L_dis) / (sum of the weights of the terms present): the default 1:1:1 over 3."""
    terms = [(w.x, loss_x), (w.u, loss_u), (w.dis, loss_dis)]
    present = [(weight, term) for weight, term in terms if term is not None]
    total_weight = sum(weight for weight, _ in present)
    return cast(torch.Tensor, sum(weight * term for weight, term in present)) / max(total_weight, 1e-12)
