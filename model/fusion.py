"""Feature translators, projections and the fused 4th DPT input (docs/method.md §1); the loss: methods/rs_mtdf.py."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn


def make_translator(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """T: Linear(in, hidden) - ReLU - Linear(hidden, out), student tokens -> a teacher's feature space."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, C) -> (B, C, h, w)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def resize_tokens(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A square token grid (B, n*n, C) resized bilinearly (align_corners=True) to (B, h*w, C)."""
    n = int(round(tokens.shape[1] ** 0.5))
    if n * n != tokens.shape[1]:
        raise ValueError(f"cannot resize {tokens.shape[1]} tokens: not a square grid")
    if (n, n) == tuple(grid):
        return tokens
    resized = F.interpolate(tokens_to_map(tokens, (n, n)), size=grid, mode="bilinear", align_corners=True)
    return resized.flatten(2).transpose(1, 2)


def fuse_features(f: torch.Tensor, translated: Mapping[str, torch.Tensor], projections: nn.ModuleDict,
                  weights: Mapping[str, float], grid: tuple[int, int]) -> torch.Tensor:
    """f4' = w_s * f + w_d * P_d(T_d(f)) + w_c * P_c(up(T_c(f224))), for the teachers that have a projection."""
    fused = weights.get("student", 0.0) * f
    for name, project in projections.items():
        projected = project(translated[name])
        if name == "clip":
            # P is linear and the bilinear weights sum to one, so projecting the small CLIP-branch grid
            # before upsampling equals P(up(x)) and is cheaper than upsampling the teacher-wide features.
            projected = resize_tokens(projected, grid)
        fused = fused + weights[name] * projected
    return fused

