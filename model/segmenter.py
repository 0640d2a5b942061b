"""The student segmenter: DINOv2 encoder + DPT head, with RS-MTDF's translators and fusion when distilling."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from model.dpt import DPTHead
from model.encoder import SIZES, DinoEncoder, load_dinov2_weights
from model.fusion import fuse_features, make_translator, tokens_to_map
from model.teachers import feature_dim
from util.config import PATCH_SIZE, Config


class SegmenterOutput(NamedTuple):
    """Training forward: logits at input size and the translated student features per distilled teacher."""

    logits: torch.Tensor
    translated: dict[str, torch.Tensor]


class Segmenter(nn.Module):
    """Student encoder, DPT head, translators T_t and projections P_t (docs/method.md §1)."""

    def __init__(self, backbone: str, nclass: int, teacher_dims: Mapping[str, int] | None = None,
                 translator_hidden: int = 1024, fusion_weights: Mapping[str, float] | None = None,
                 clip_size: int = 224, lock_backbone: bool = False, grad_checkpointing: bool = False) -> None:
        super().__init__()
        size = SIZES[backbone]
        self.backbone, self.nclass, self.embed_dim = backbone, nclass, size.embed_dim
        self.encoder = DinoEncoder(backbone)
        self.head = DPTHead(size.embed_dim, size.features, size.out_channels, nclass)
        teacher_dims = dict(teacher_dims or {})
        self.translators = nn.ModuleDict({name: make_translator(size.embed_dim, translator_hidden, dim)
                                          for name, dim in teacher_dims.items()})
        # Fusion needs translated features, so it exists only with teachers; `fusion_weights` None fuses nothing
        # (the config decides: DistillConfig.fuses). A zero weight needs no projection (and an unused parameter
        # would stall DDP).
        self.fusion_weights = dict(fusion_weights) if fusion_weights is not None and teacher_dims else None
        self.projections = nn.ModuleDict({
            name: nn.Linear(dim, size.embed_dim) for name, dim in teacher_dims.items()
            if self.fusion_weights is not None and self.fusion_weights.get(name, 0.0) != 0.0})
        self.clip_size = clip_size
        if lock_backbone:
            self.encoder.requires_grad_(False)
        if grad_checkpointing:
            self.encoder.set_grad_checkpointing(True)

    def _translate(self, img: torch.Tensor, f: torch.Tensor, names: Iterable[str]) -> dict[str, torch.Tensor]:
        translated = {}
        for name in names:
            if name == "clip":
                # The CLIP branch sees the student's features of the image at CLIP's resolution (second pass);
                # at that resolution already, the resize is the identity and the first pass serves.
                f224 = f
                if tuple(img.shape[-2:]) != (self.clip_size, self.clip_size):
                    small = F.interpolate(img, size=(self.clip_size, self.clip_size), mode="bilinear",
                                          align_corners=True)
                    f224 = self.encoder.last_tokens(small)
                translated[name] = self.translators[name](f224)
            else:
                translated[name] = self.translators[name](f)
        return translated

    def _run(self, img: torch.Tensor, feature_mask: torch.Tensor | None,
             with_translations: bool) -> SegmenterOutput:
        grid = (img.shape[-2] // PATCH_SIZE, img.shape[-1] // PATCH_SIZE)
        feats = self.encoder.forward_features(img)
        # Inference needs only the branches that feed the fusion; training also the distilled ones.
        names = self.translators.keys() if with_translations else self.projections.keys()
        translated = self._translate(img, feats[-1], list(names))
        if self.fusion_weights is not None:
            feats[-1] = fuse_features(feats[-1], translated, self.projections, self.fusion_weights, grid)
        if feature_mask is not None:
            feats = [f * feature_mask[:, None, :].to(f.dtype) for f in feats]
        logits = self.head([tokens_to_map(f, grid) for f in feats])
        logits = F.interpolate(logits, size=img.shape[-2:], mode="bilinear", align_corners=True)
        return SegmenterOutput(logits, translated if with_translations else {})

    def forward(self, img: torch.Tensor, feature_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, nclass, H, W) for images (B, 3, H, W) whose sides are multiples of 14."""
        return self._run(img, feature_mask, with_translations=False).logits

    def forward_train(self, img: torch.Tensor, feature_mask: torch.Tensor | None = None) -> SegmenterOutput:
        """Logits and {'dino': T_d(f), 'clip': T_c(f224)} for the distilled teachers; feature_mask (B, D)."""
        return self._run(img, feature_mask, with_translations=True)

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Trainable encoder parameters (none with lock_backbone): trained at lr."""
        return (p for p in self.encoder.parameters() if p.requires_grad)

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Trainable parameters outside the encoder (DPT head, translators, projections): lr * lr_multi."""
        encoder = {id(p) for p in self.encoder.parameters()}
        return (p for p in self.parameters() if p.requires_grad and id(p) not in encoder)


def build_segmenter(cfg: Config) -> Segmenter:
    """The student of `cfg`, with translators for cfg.distill_teachers and the encoder's pretrained weights."""
    dims = {name: feature_dim(cfg, name) for name in cfg.distill_teachers}
    fusion = {str(k): w for k, w in cfg.distill.fusion_weights.items()} if cfg.distill.fuses else None
    model = Segmenter(cfg.model.backbone, cfg.dataset.nclass, dims, cfg.distill.translator_hidden, fusion,
                      cfg.teachers.clip.input_size, cfg.model.lock_backbone, cfg.model.grad_checkpointing)
    if cfg.model.pretrained is not None:
        load_dinov2_weights(model.encoder, cfg.model.pretrained, "model.pretrained")
    return model
