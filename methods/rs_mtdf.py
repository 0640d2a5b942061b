"""RS-MTDF (SPEC §4): FixMatch plus distillation towards frozen DINOv2 and CLIP teachers.

The distillation loss and the fusion of translated features live with the model: model/fusion.py
(`distillation_loss`, `fuse_features`); the translators are part of the student (model/segmenter.py).
"""

from __future__ import annotations

from methods.common import Losses, StepContext, weighted_total
from methods.fixmatch import consistency_forward
from model.fusion import distillation_loss


def rs_mtdf_step(ctx: StepContext, batch: dict) -> Losses:
    """(L_x + L_u + L_dis) / 3; the teachers see exactly the student's batch (labelled and CutMixed strong crops)."""
    out, student_in, losses, loss_x, loss_u = consistency_forward(ctx, batch)
    if ctx.teachers is None:
        raise ValueError("rs_mtdf needs the frozen teachers (Method.teachers)")
    targets = ctx.teachers(student_in)
    loss_dis, per_teacher = distillation_loss(out.translated, targets, ctx.settings.distill_weights)
    losses["loss_dis"] = loss_dis.detach()
    losses.update({f"loss_dis_{name}": v.detach() for name, v in per_teacher.items()})
    losses["loss"] = weighted_total(ctx.settings.loss_weights, loss_x, loss_u, loss_dis)
    return losses
