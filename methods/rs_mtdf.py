"""RS-MTDF (docs/method.md §3): FixMatch plus distillation towards frozen DINOv2 and CLIP teachers.

The distillation loss is here; the translators and the fusion of their features into the 4th DPT input
are part of the student (model/fusion.py, model/segmenter.py), since inference fuses too.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from methods.common import Batch, Losses, Method, StepContext, cutmix_partners, weighted_total
from methods.fixmatch import consistency_forward


def distillation_loss(translated: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                      weights: Mapping[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_dis = sum over teachers of weight * MSE(translated, teacher tokens); plain element-mean MSE in fp32."""
    per_teacher: dict[str, torch.Tensor] = {}
    for name, student in translated.items():
        if name not in targets:
            raise ValueError(f"no teacher features for '{name}' (teachers gave {sorted(targets)})")
        target = targets[name]
        if student.shape != target.shape:
            raise ValueError(f"{name}: translated student features {tuple(student.shape)} and teacher features "
                             f"{tuple(target.shape)} differ in shape")
        per_teacher[name] = F.mse_loss(student.float(), target.float())
    if not per_teacher:
        raise ValueError("distillation_loss needs at least one translated teacher feature")
    weighted = [weights.get(name, 0.0) * loss for name, loss in per_teacher.items()]
    return functools.reduce(operator.add, weighted), per_teacher


def rs_mtdf_step(ctx: StepContext, batch: Batch) -> Losses:
    """(L_x + L_u + L_dis) / 3; the teachers see exactly the student's batch (labelled and CutMixed strong crops)."""
    out, student_in, losses, loss_x, loss_u = consistency_forward(ctx, batch)
    if ctx.teachers is None:
        raise ValueError("rs_mtdf needs the frozen teachers (its METHOD says teachers=True)")
    targets = ctx.teachers(student_in)
    weights = {str(name): w for name, w in ctx.cfg.distill.weights.items()}
    loss_dis, per_teacher = distillation_loss(out.translated, targets, weights)
    losses["loss_dis"] = loss_dis.detach()
    losses.update({f"loss_dis_{name}": v.detach() for name, v in per_teacher.items()})
    losses["loss"] = weighted_total(ctx.cfg.train.loss_weights, loss_x, loss_u, loss_dis)
    return losses


METHOD = Method("rs_mtdf", rs_mtdf_step, unlabeled=True, n_strong=1, teachers=True, forward_problem=cutmix_partners)
