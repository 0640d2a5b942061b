"""FixMatch with an EMA teacher and CutMix (docs/method.md §3, steps 1-5 without the feature teachers)."""

from __future__ import annotations

import torch

from methods.common import (
    Batch,
    Losses,
    Method,
    PseudoLabels,
    StepContext,
    StudentOutput,
    cross_entropy_x,
    cutmix_partners,
    mix,
    pseudo_label,
    unsupervised_loss,
    weighted_total,
)

# A CutMixed strong view: the images, and the pseudo-labels, confidences and ignore mask mixed alike.
MixedView = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def cutmixed_targets(batch: Batch, pseudo: PseudoLabels, view: int = 0) -> MixedView:
    """Strong view `view` CutMixed within the batch, with pseudo-labels, confidences and ignore mixed alike."""
    conf_u_w, mask_u_w = pseudo
    box = batch["cutmix_box"][:, view]
    img_u_s = mix(batch["img_u_s"][:, view], box)
    return img_u_s, mix(mask_u_w, box), mix(conf_u_w, box), mix(batch["ignore_mask"], box)


def consistency_forward(ctx: StepContext, batch: Batch) -> tuple[StudentOutput, torch.Tensor, Losses,
                                                                  torch.Tensor, torch.Tensor]:
    """Steps 1-4 shared by FixMatch and RS-MTDF: pseudo-labels, CutMix, one student forward, L_x and L_u.

    Returns the student's output, its input (labelled + strong crops), the logged terms, L_x and L_u.
    """
    pseudo = pseudo_label(ctx.ema, batch["img_u_w"])
    img_u_s, mask_u, conf_u, ignore_u = cutmixed_targets(batch, pseudo)
    img_x = batch["img_x"]
    student_in = torch.cat((img_x, img_u_s))
    out = ctx.student(student_in)
    logits_x, logits_u = out.logits.split([len(img_x), len(img_u_s)])
    loss_x = cross_entropy_x(logits_x, batch["mask_x"])
    loss_u, mask_ratio = unsupervised_loss(logits_u, mask_u, conf_u, ignore_u, ctx.cfg.train.conf_thresh)
    logged = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "mask_ratio": mask_ratio}
    return out, student_in, logged, loss_x, loss_u


def fixmatch_step(ctx: StepContext, batch: Batch) -> Losses:
    """(L_x + L_u) / 2 from one student forward on the labelled and CutMixed strong crops."""
    _, _, losses, loss_x, loss_u = consistency_forward(ctx, batch)
    losses["loss"] = weighted_total(ctx.cfg.train.loss_weights, loss_x, loss_u)
    return losses


METHOD = Method("fixmatch", fixmatch_step, unlabeled=True, n_strong=1, forward_problem=cutmix_partners)
