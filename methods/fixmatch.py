"""FixMatch with an EMA teacher and CutMix (SPEC §4 steps 1-5 without the feature teachers)."""

from __future__ import annotations

import torch

from methods.common import (Losses, StepContext, cross_entropy_x, mix, pseudo_label, unsupervised_loss,
                            weighted_total)


def cutmixed_targets(batch: dict, view: int = 0) -> tuple[torch.Tensor, ...]:
    """Strong view `view` CutMixed within the batch, with pseudo-labels, confidences and ignore mixed alike."""
    conf_u_w, mask_u_w = batch["_pseudo"]
    box = batch["cutmix_box"][:, view]
    img_u_s = mix(batch["img_u_s"][:, view], box)
    return img_u_s, mix(mask_u_w, box), mix(conf_u_w, box), mix(batch["ignore_mask"], box)


def add_pseudo_labels(ctx: StepContext, batch: dict) -> None:
    """Step 1: the EMA model labels the weak view (kept in the batch for the CutMix of every view)."""
    batch["_pseudo"] = pseudo_label(ctx.ema, batch["img_u_w"])


def fixmatch_step(ctx: StepContext, batch: dict, distill: bool = False) -> Losses:
    """(L_x + L_u) / 2, or with `distill` (RS-MTDF) (L_x + L_u + L_dis) / 3, from one student forward."""
    add_pseudo_labels(ctx, batch)
    img_u_s, mask_u, conf_u, ignore_u = cutmixed_targets(batch)
    img_x = batch["img_x"]
    student_in = torch.cat((img_x, img_u_s))
    out = ctx.student(student_in)
    logits_x, logits_u = out.logits.split([len(img_x), len(img_u_s)])
    loss_x = cross_entropy_x(logits_x, batch["mask_x"])
    loss_u, mask_ratio = unsupervised_loss(logits_u, mask_u, conf_u, ignore_u, ctx.cfg.train.conf_thresh)
    losses = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "mask_ratio": mask_ratio}
    loss_dis = None
    if distill:
        from model.fusion import distillation_loss

        # The teachers see exactly the student's batch: labelled crops and CutMixed strong crops.
        targets = ctx.teachers(student_in)
        loss_dis, per_teacher = distillation_loss(out.translated, targets, ctx.cfg.distill.weights)
        losses["loss_dis"] = loss_dis.detach()
        losses.update({f"loss_dis_{name}": v.detach() for name, v in per_teacher.items()})
    losses["loss"] = weighted_total(ctx.cfg, loss_x, loss_u, loss_dis)
    return losses


def rs_mtdf_step(ctx: StepContext, batch: dict) -> Losses:
    """RS-MTDF (SPEC §4): FixMatch plus distillation towards the frozen DINOv2 and CLIP teachers."""
    return fixmatch_step(ctx, batch, distill=True)
