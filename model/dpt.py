"""DPT decoder (docs/method.md §1): four token maps -> reassemble at 4 scales -> top-down fusion -> class logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualConvUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x)))), 3x3 convs with bias, no normalisation."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """out = rcu2(x + rcu1(skip)), resized bilinearly (align_corners=True), then a 1x1 conv."""

    def __init__(self, features: int, with_skip: bool = True) -> None:
        super().__init__()
        # The deepest block has no skip input; the reference still builds (and never uses) its rcu1.
        self.rcu1 = ResidualConvUnit(features) if with_skip else None
        self.rcu2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None,
                size: tuple[int, int] | None = None) -> torch.Tensor:
        if skip is not None:
            if self.rcu1 is None:
                raise ValueError("the deepest DPT fusion block takes no skip input")
            x = x + self.rcu1(skip)
        x = self.rcu2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """DPT head: levels 1-4 at 4x, 2x, 1x and 1/2x the patch grid, fused top-down into class logits."""

    def __init__(self, in_dim: int, features: int, out_channels: tuple[int, ...] | list[int], nclass: int) -> None:
        super().__init__()
        oc = list(out_channels)
        self.projects = nn.ModuleList(nn.Conv2d(in_dim, c, 1) for c in oc)
        self.resize = nn.ModuleList([
            nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
        ])
        self.layer_rn = nn.ModuleList(nn.Conv2d(c, features, 3, padding=1, bias=False) for c in oc)
        # fusion[i] is level i+1 (F1..F4); F4 takes no skip input.
        self.fusion = nn.ModuleList(FusionBlock(features, with_skip=i < 3) for i in range(4))
        self.output = nn.Sequential(nn.Conv2d(features, features, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(features, nclass, 1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Four token maps (B, D, h, w) -> logits (B, nclass, 8h, 8w); the caller resizes to the input."""
        r = [rn(resize(proj(f))) for f, proj, resize, rn in zip(feats, self.projects, self.resize, self.layer_rn)]
        p = self.fusion[3](r[3], size=r[2].shape[-2:])
        p = self.fusion[2](p, r[2], size=r[1].shape[-2:])
        p = self.fusion[1](p, r[1], size=r[0].shape[-2:])
        p = self.fusion[0](p, r[0])
        return self.output(p)
