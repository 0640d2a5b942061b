"""What the semi-supervised methods share: pseudo-labels from the EMA model, CutMix, and the loss terms.

Names follow UniMatch (V2), which users of this field know: img_x / mask_x labelled, img_u_w weak and
img_u_s strong unlabelled views, conf_u_w / mask_u_w the EMA model's confidence and pseudo-label.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from util.catalog import IGNORE_INDEX, UNLABELED_PAD
from util.config import Config, LossWeights

if TYPE_CHECKING:
    from model.segmenter import SegmenterOutput

Losses = dict[str, torch.Tensor]
# The EMA model's confidence and argmax on the weak view, (B, H, W) each.
PseudoLabels = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class StepSettings:
    """The numbers the methods compute with: read from the config once (`from_config`), the same every step."""

    # Pseudo-labels of the EMA model count where its confidence is at least this.
    conf_thresh: float
    loss_weights: LossWeights
    # L_dis = sum over the translated teachers of weight * MSE (a teacher missing here weighs 0).
    distill_weights: Mapping[str, float]
    # UniMatch V2's complementary channel dropout: the drop probability and the share of pairs that get it.
    channel_p: float
    pair_fraction: float

    @classmethod
    def from_config(cls, cfg: Config) -> StepSettings:
        t = cfg.train
        return cls(conf_thresh=t.conf_thresh, loss_weights=t.loss_weights,
                   distill_weights=MappingProxyType({name: w for name, w in cfg.distill.weights.items()}),
                   channel_p=t.feature_drop.channel_p, pair_fraction=t.feature_drop.pair_fraction)


@dataclass
class StepContext:
    """Everything a method needs for one training step besides the batch."""

    settings: StepSettings
    # The trainable segmenter called for training (DDP-wrapped when distributed).
    student: Callable[..., SegmenterOutput]
    ema: nn.Module
    teachers: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None
    # Random draws of this step (UniMatch V2's channel masks): seeded from (seed, iteration, rank).
    generator: torch.Generator
    # Channels of the encoder's token maps (the size of UniMatch V2's channel masks).
    embed_dim: int


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
