"""UniMatch V2: two strong views whose encoder features get complementary channel dropout."""

from __future__ import annotations

import torch

from methods.common import (
    Batch,
    Losses,
    Method,
    StepContext,
    cross_entropy_x,
    cutmix_partners,
    pseudo_label,
    unsupervised_loss,
    weighted_total,
)
from methods.fixmatch import cutmixed_targets
from util.config import Config


def complementary_channel_masks(batch_size: int, dim: int, channel_p: float, pair_fraction: float,
                                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks (B, D) for view 1 and view 2: kept channels of one are the dropped channels of the other.

    keep ~ Bernoulli(1 - p); view 1 gets keep / (1 - p) and view 2 (1 - keep) / p, so each view keeps the
    expected feature scale (x2 and its complement at p = 0.5). A random int(B * (1 - pair_fraction)) pairs
    are left whole (mask 1) and the other B - int(B * (1 - pair_fraction)) get the dropout, as UniMatch V2
    counts them (its DPT.forward keeps int(B * (1 - 0.5)) of the B pairs of a process): with the default
    0.5 an odd batch drops the larger half, e.g. 3 of 5 pairs and the single pair of a batch of 1.
    """
    keep = torch.bernoulli(torch.full((batch_size, dim), 1.0 - channel_p), generator=generator)
    mask1 = keep / max(1.0 - channel_p, 1e-6)
    mask2 = (1.0 - keep) / max(channel_p, 1e-6)
    n_whole = int(batch_size * (1.0 - pair_fraction))
    whole = torch.randperm(batch_size, generator=generator)[:n_whole]
    mask1[whole] = 1.0
    mask2[whole] = 1.0
    return mask1, mask2


def unimatch_v2_step(ctx: StepContext, batch: Batch) -> Losses:
    """(L_x + (L_u1 + L_u2) / 2) / 2 from one student forward on labelled + both strong views."""
    pseudo = pseudo_label(ctx.ema, batch["img_u_w"])
    views = [cutmixed_targets(batch, pseudo, view) for view in (0, 1)]
    img_x = batch["img_x"]
    b_x, b_u = len(img_x), len(views[0][0])
    drop = ctx.cfg.train.feature_drop
    mask1, mask2 = complementary_channel_masks(b_u, ctx.embed_dim, drop.channel_p, drop.pair_fraction, ctx.generator)
    feature_mask = torch.cat((torch.ones(b_x, mask1.shape[1]), mask1, mask2)).to(img_x.device, img_x.dtype)
    out = ctx.student(torch.cat((img_x, views[0][0], views[1][0])), feature_mask)
    logits_x, logits_u1, logits_u2 = out.logits.split([b_x, b_u, b_u])
    loss_x = cross_entropy_x(logits_x, batch["mask_x"])
    thresh = ctx.cfg.train.conf_thresh
    (_, mask_u1, conf_u1, ignore_u1), (_, mask_u2, conf_u2, ignore_u2) = views
    loss_u1, ratio1 = unsupervised_loss(logits_u1, mask_u1, conf_u1, ignore_u1, thresh)
    loss_u2, ratio2 = unsupervised_loss(logits_u2, mask_u2, conf_u2, ignore_u2, thresh)
    loss_u = (loss_u1 + loss_u2) / 2
    return {"loss": weighted_total(ctx.cfg.train.loss_weights, loss_x, loss_u), "loss_x": loss_x.detach(),
            "loss_u": loss_u.detach(), "mask_ratio": (ratio1 + ratio2) / 2}


def whole_pair_share(n: int, pair_fraction: float) -> float:
    """The share of a forward's n pairs left without channel dropout: int(n * (1 - pair_fraction)) of them."""
    return int(n * (1.0 - pair_fraction)) / n


def channel_dropout_pairs(n: int, cfg: Config) -> str | None:
    """Why a forward of `n` crops would compute otherwise than one of train.batch_size: CutMix partners, or another
    share of pairs left whole (3 of 5 pairs dropped where the configured 8 drop 4)."""
    fraction, configured = cfg.train.feature_drop.pair_fraction, cfg.train.batch_size
    if whole_pair_share(n, fraction) != whole_pair_share(configured, fraction):
        return (f"{n} crops a forward would leave {whole_pair_share(n, fraction):.0%} of the pairs without channel "
                f"dropout, {configured} leave {whole_pair_share(configured, fraction):.0%}")
    return cutmix_partners(n, cfg)


METHOD = Method("unimatch_v2", unimatch_v2_step, unlabeled=True, n_strong=2, forward_problem=channel_dropout_pairs)
