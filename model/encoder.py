"""DINOv2 ViT encoder on timm's VisionTransformer, with DINOv2's own position-embedding resizing."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import partial
from typing import cast

import torch
import torch.nn.functional as F
from timm.layers import GluMlp
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from model.weights import is_torchscript, load_checked, load_tensors, require_file
from util.config import PATCH_SIZE
from util.errors import WeightsError

# Official checkpoints store position embeddings for 518 px: a 37 x 37 grid plus the class token.
POS_GRID = 37
# DINOv2 adds this to the target grid before computing the resize scale factor (its interpolate_offset).
INTERPOLATE_OFFSET = 0.1


@dataclass(frozen=True)
class EncoderSize:
    """One DINOv2 size: ViT widths and the DPT head that goes with it."""

    embed_dim: int
    depth: int
    heads: int
    layers: tuple[int, int, int, int]  # blocks whose outputs feed the DPT head
    features: int
    out_channels: tuple[int, int, int, int]
    swiglu: bool = False  # ViT-G's feed-forward (DINOv2's mlp.w12 / mlp.w3)


SIZES: dict[str, EncoderSize] = {
    "tiny": EncoderSize(64, 4, 2, (0, 1, 2, 3), 32, (16, 32, 64, 64)),
    "small": EncoderSize(384, 12, 6, (2, 5, 8, 11), 64, (48, 96, 192, 384)),
    "base": EncoderSize(768, 12, 12, (2, 5, 8, 11), 128, (96, 192, 384, 768)),
    "large": EncoderSize(1024, 24, 16, (4, 11, 17, 23), 256, (256, 512, 1024, 1024)),
    "giant": EncoderSize(1536, 40, 24, (9, 19, 29, 39), 384, (1536, 1536, 1536, 1536), swiglu=True),
}

# DINOv2's SwiGLU hidden width for ViT-G (mlp_ratio 4, two thirds, rounded up to a multiple of 8).
GIANT_SWIGLU_HIDDEN = 4096


def interpolate_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """DINOv2's interpolate_pos_encoding: bicubic by scale factor (g + 0.1) / 37, no antialias, cls kept."""
    stored = pos_embed.shape[1] - 1
    m = int(math.sqrt(stored))
    if (grid_h, grid_w) == (m, m):
        return pos_embed
    # At least fp32, as DINOv2 does: half-precision bicubic resizing loses visible accuracy.
    dtype = torch.promote_types(pos_embed.dtype, torch.float32)
    cls_pos, grid = pos_embed[:, :1].to(dtype), pos_embed[:, 1:].to(dtype)
    grid = grid.reshape(1, m, m, -1).permute(0, 3, 1, 2)
    # A scale factor rather than a target size: PyTorch then maps coordinates with 1/scale, which is
    # numerically different from a resize to (grid_h, grid_w), and DINOv2's weights were trained with it.
    scale = ((grid_h + INTERPOLATE_OFFSET) / m, (grid_w + INTERPOLATE_OFFSET) / m)
    grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
    if grid.shape[-2:] != (grid_h, grid_w):
        raise RuntimeError(f"position grid resized to {tuple(grid.shape[-2:])}, expected {(grid_h, grid_w)}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
    return torch.cat((cls_pos, grid), dim=1).to(pos_embed.dtype)


class DinoEncoder(VisionTransformer):
    """DINOv2 ViT/14 with LayerScale; parameter names are DINOv2's (mask_token aside)."""

    def __init__(self, size: str, fused_attn: bool = True) -> None:
        s = SIZES[size]
        mlp: dict = {"mlp_ratio": 4.0}
        if s.swiglu:
            # timm's packed GLU: fc1 holds [x1; x2] (DINOv2's w12), out = fc2(silu(x1) * x2) (w3).
            mlp = {"mlp_ratio": 2 * GIANT_SWIGLU_HIDDEN / s.embed_dim, "act_layer": nn.SiLU,
                   "mlp_layer": partial(GluMlp, gate_last=False)}
        super().__init__(img_size=PATCH_SIZE * POS_GRID, patch_size=PATCH_SIZE, embed_dim=s.embed_dim,
                         depth=s.depth, num_heads=s.heads, qkv_bias=True, init_values=1e-5, num_classes=0,
                         global_pool="", dynamic_img_size=True, **mlp)
        self.size = size
        self.layers = s.layers
        self.set_fused_attn(fused_attn)

    def set_fused_attn(self, enabled: bool) -> None:
        """Switch every block between SDPA and explicit softmax(QK^T)V attention."""
        for block in self.blocks:
            block.attn.fused_attn = enabled  # type: ignore[union-attr]  # timm's Attention, typed as Module

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        b, gh, gw, c = x.shape
        if self.cls_token is None or self.pos_embed is None:
            raise RuntimeError("the DINOv2 encoder is built with a class token and position embeddings")
        x = torch.cat((self.cls_token.expand(b, -1, -1).to(x.dtype), x.reshape(b, gh * gw, c)), dim=1)
        return self.pos_drop(x + interpolate_pos_embed(self.pos_embed, gh, gw).to(x.dtype))

    def tokens_at(self, x: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
        """Patch tokens (B, h*w, D) after blocks `indices`, each through the final LayerNorm."""
        tokens = self.forward_intermediates(x, indices=indices, norm=True, stop_early=True, output_fmt="NLC",
                                            intermediates_only=True)
        return cast(list[torch.Tensor], tokens)  # intermediates_only: a list, whatever timm's annotation says

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        """The four token maps (B, h*w, D) that feed the DPT head, final norm applied, class token dropped."""
        return self.tokens_at(x, list(self.layers))

    def last_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Normed patch tokens of the last of the four blocks (block 11 for ViT-S/B): (B, h*w, D)."""
        return self.tokens_at(x, [self.layers[-1]])[0]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        return self.forward_features(x)


def dinov2_key(key: str) -> str:
    """An official DINOv2 key -> ours: only ViT-G's SwiGLU names differ (w12 -> fc1, w3 -> fc2)."""
    return key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")


def dinov2_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official DINOv2 state dict -> ours; mask_token dropped (used only by DINOv2's masked pre-training)."""
    return {dinov2_key(k): v for k, v in state.items() if k != "mask_token"}


def load_dinov2_weights(module: DinoEncoder, path: str | os.PathLike, config_key: str) -> None:
    """Load an official DINOv2 checkpoint (dinov2_vit*14_pretrain.pth) into `module`, shapes checked."""
    path = require_file(path, config_key)
    if is_torchscript(path):
        raise WeightsError(f"{config_key}: {path} is a TorchScript archive (a CLIP file?), not an official DINOv2 "
                           "checkpoint (dinov2_vit*14_pretrain.pth)")
    state = load_tensors(path, config_key)
    load_checked(module, dinov2_to_timm(state), f"{config_key}: {path} (DINOv2 {module.size} expected)")
