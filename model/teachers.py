"""Frozen feature teachers (docs/method.md §2): DINOv2 on the student's input, OpenAI CLIP ViT-L/14 on its resize."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import resize_pos_embed
from open_clip.transformer import LayerNorm, QuickGELU, VisionTransformer
from torch import nn

from model.encoder import PATCH_SIZE, SIZES, DinoEncoder, load_dinov2_weights
from model.weights import is_torchscript, load_checked, load_tensors, require_file
from util.catalog import IMAGENET_MEAN, IMAGENET_STD
from util.config import Config
from util.errors import WeightsError
from util.precision import gpu_paths


@dataclass(frozen=True)
class ClipArch:
    """Vision tower of an OpenAI-style CLIP (open_clip's VisionTransformer, OpenAI key names)."""

    width: int
    layers: int
    heads: int
    output_dim: int


CLIP_ARCHS: dict[str, ClipArch] = {
    "ViT-L-14": ClipArch(width=1024, layers=24, heads=16, output_dim=768),
    # Tests and the demo: the same layout, small, with a width unlike the tiny DINO's to catch mix-ups.
    "tiny": ClipArch(width=96, layers=2, heads=3, output_dim=32),
}


def feature_dim(cfg: Config, name: str) -> int:
    """Channels of teacher `name`'s tokens under this config: the output width of its translator."""
    if name == "dino":
        return SIZES[cfg.teachers.dino.arch].embed_dim
    if name == "clip":
        return CLIP_ARCHS[cfg.teachers.clip.arch].width
    raise ValueError(f"unknown teacher '{name}'")


class DinoTeacher(nn.Module):
    """DINOv2: patch tokens of the last block after the final LayerNorm, on the student's own input."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        self.encoder = DinoEncoder(arch)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.encoder.tokens_at(img, [len(self.encoder.blocks) - 1])[0]


def build_clip_tower(arch: str, input_size: int) -> VisionTransformer:
    """open_clip's VisionTransformer as OpenAI built it: QuickGELU, patch 14, positions for `input_size`."""
    a = CLIP_ARCHS[arch]
    return VisionTransformer(image_size=input_size, patch_size=PATCH_SIZE, width=a.width, layers=a.layers,
                             heads=a.heads, mlp_ratio=4.0, output_dim=a.output_dim, act_layer=QuickGELU,
                             norm_layer=LayerNorm)


class ClipTeacher(nn.Module):
    """CLIP: patch tokens of the last residual block, before ln_post and proj, on the input resized."""

    renorm_scale: torch.Tensor
    renorm_shift: torch.Tensor

    def __init__(self, arch: str, input_size: int, renormalize: bool) -> None:
        super().__init__()
        self.visual = build_clip_tower(arch, input_size)
        self.input_size = input_size
        self.renormalize = renormalize
        # Pixels arrive ImageNet-normalised; re-normalising to CLIP's statistics is one affine per channel.
        scale = torch.tensor(IMAGENET_STD) / torch.tensor(OPENAI_DATASET_STD)
        shift = (torch.tensor(IMAGENET_MEAN) - torch.tensor(OPENAI_DATASET_MEAN)) / torch.tensor(OPENAI_DATASET_STD)
        self.register_buffer("renorm_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("renorm_shift", shift.view(1, 3, 1, 1), persistent=False)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(img, size=(self.input_size, self.input_size), mode="bilinear", align_corners=True)
        if self.renormalize:
            x = x * self.renorm_scale + self.renorm_shift
        last = len(self.visual.transformer.resblocks) - 1
        out = self.visual.forward_intermediates(x, indices=[last], intermediates_only=True, output_fmt="NLC",
                                                normalize_intermediates=False)
        return out["image_intermediates"][0]


def read_clip_state(path: str | os.PathLike, config_key: str) -> dict[str, torch.Tensor]:
    """The visual.* tensors of an OpenAI CLIP file (TorchScript archive or plain state dict), 'visual.' removed."""
    path = require_file(path, config_key)
    if is_torchscript(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as e:  # noqa: BLE001 - a broken archive is the user's file problem
            raise WeightsError(f"{config_key}: cannot read TorchScript archive {path} ({type(e).__name__})") from None
    else:
        state = load_tensors(path, config_key)
        state = state.get("state_dict", state)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    visual = {k.removeprefix("visual."): v.float() for k, v in state.items()
              if k.startswith("visual.") and isinstance(v, torch.Tensor)}
    if not visual:
        raise WeightsError(f"{config_key}: {path} is not an OpenAI CLIP file (no visual.* keys)")
    return visual


def load_clip_weights(tower: VisionTransformer, path: str | os.PathLike, config_key: str, arch: str) -> None:
    """Load OpenAI CLIP weights into the vision tower; positions are resized if input_size is not 224."""
    visual = read_clip_state(path, config_key)
    pos = visual.get("positional_embedding")
    if pos is not None and pos.shape[-1] == tower.positional_embedding.shape[-1]:
        holder = {"visual.positional_embedding": pos}
        resize_pos_embed(holder, SimpleNamespace(visual=tower))
        visual["positional_embedding"] = holder["visual.positional_embedding"]
    load_checked(tower, visual, f"{config_key}: {path} (OpenAI CLIP {arch} expected)")


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients, for good."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class Teachers:
    """The frozen teachers: called on the student's batch, returns {'dino': (B, h*w, Dd), 'clip': (B, n, Dc)}."""

    def __init__(self, models: dict[str, nn.Module], device: torch.device, precision: Mapping[str, str],
                 cpu_autocast: bool = False) -> None:
        self.models = {name: freeze(m).to(device) for name, m in models.items()}
        # Reduced precision on the GPU's paths only: CPU autocast is slow and the tests want exact fp32.
        reduced = gpu_paths(device, cpu_autocast)
        dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}
        self.autocast_dtype = {name: dtypes[precision[name]] if reduced else None for name in models}

    def modules(self) -> list[nn.Module]:
        """The teacher networks (for switches such as attention kernels)."""
        return list(self.models.values())

    def _precision(self, name: str, device_type: str) -> torch.autocast:
        # Explicit either way: a teacher asked for fp32 must not inherit the training step's bf16 autocast.
        dtype = self.autocast_dtype[name]
        return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)

    def __call__(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        raw = {}
        with torch.inference_mode():
            for name, model in self.models.items():
                with self._precision(name, img.device.type):
                    raw[name] = model(img)
        # Copies made outside inference mode are ordinary tensors, so the loss may save them for backward.
        return {name: t.to(torch.float32, copy=True) for name, t in raw.items()}


def build_teachers(cfg: Config, device: torch.device | str) -> Teachers | None:
    """The teachers of cfg.distill_teachers with their weights, frozen on `device`; None if there are none."""
    models: dict[str, nn.Module] = {}
    t = cfg.teachers
    if "dino" in cfg.distill_teachers:
        dino = DinoTeacher(t.dino.arch)
        if t.dino.weights is not None:
            load_dinov2_weights(dino.encoder, t.dino.weights, "teachers.dino.weights")
        models["dino"] = dino
    if "clip" in cfg.distill_teachers:
        clip = ClipTeacher(t.clip.arch, t.clip.input_size, t.clip.renormalize)
        if t.clip.weights is not None:
            load_clip_weights(clip.visual, t.clip.weights, "teachers.clip.weights", t.clip.arch)
        models["clip"] = clip
    precision = {"dino": t.dino.precision, "clip": t.clip.precision}
    return Teachers(models, torch.device(device), precision, cfg.train.cpu_autocast) if models else None
