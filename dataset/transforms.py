"""Weak and strong augmentations of SPEC §6, driven by an explicit torch.Generator.

Every random choice is drawn from the generator passed in (one per sample, seeded by the sampler), and the
operations themselves are deterministic torchvision v2 functionals on tv_tensors. A sample therefore
augments the same way whatever the worker count, worker order or global RNG state.
Images stay uint8 (3, H, W) until `normalize`; masks are uint8 (H, W).
"""

from __future__ import annotations

import math

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from dataset.info import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from util.config import AugmentConfig


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g).item()


def _chance(g: torch.Generator, p: float) -> bool:
    return torch.rand((), generator=g).item() < p


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high] inclusive."""
    return int(torch.randint(low, high + 1, (), generator=g).item())


def weak_augment(img: torch.Tensor, mask: torch.Tensor, crop_size: int, aug: AugmentConfig,
                 g: torch.Generator, mask_pad: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale the long side, pad to the crop (image 0, mask `mask_pad`), random crop, horizontal flip."""
    image, target = tv_tensors.Image(img), tv_tensors.Mask(mask)
    h, w = image.shape[-2:]
    factor = _uniform(g, *aug.scale_range)
    long_side = max(1, round(max(h, w) * factor))
    size = [max(1, round(h * long_side / max(h, w))), max(1, round(w * long_side / max(h, w)))]
    image = F.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    # nearest-exact samples pixel centres, as the bilinear image does, so labels stay on their pixels.
    target = F.resize(target, size, interpolation=InterpolationMode.NEAREST_EXACT)

    pad_h, pad_w = max(0, crop_size - size[0]), max(0, crop_size - size[1])
    if pad_h or pad_w:
        image = F.pad(image, [0, 0, pad_w, pad_h], fill=0)
        target = F.pad(target, [0, 0, pad_w, pad_h], fill=mask_pad)

    h, w = image.shape[-2:]
    top, left = _randint(g, 0, h - crop_size), _randint(g, 0, w - crop_size)
    image = F.crop(image, top, left, crop_size, crop_size)
    target = F.crop(target, top, left, crop_size, crop_size)

    if _chance(g, aug.hflip_p):
        image, target = F.horizontal_flip(image), F.horizontal_flip(target)
    return image.as_subclass(torch.Tensor), target.as_subclass(torch.Tensor)


def _color_jitter(img: torch.Tensor, strength: tuple[float, float, float, float],
                  g: torch.Generator) -> torch.Tensor:
    """torchvision's ColorJitter: the four adjustments in a random order, each with a random factor."""
    brightness, contrast, saturation, hue = strength
    ops = [
        (F.adjust_brightness, max(0.0, 1 - brightness), 1 + brightness),
        (F.adjust_contrast, max(0.0, 1 - contrast), 1 + contrast),
        (F.adjust_saturation, max(0.0, 1 - saturation), 1 + saturation),
        (F.adjust_hue, -hue, hue),
    ]
    for i in torch.randperm(4, generator=g).tolist():
        op, low, high = ops[i]
        if high > low:
            img = op(img, _uniform(g, low, high))
    return img


def strong_augment(img: torch.Tensor, aug: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Colour jitter, grayscale and Gaussian blur of an image (never a mask), each with its probability."""
    if _chance(g, aug.color_jitter_p):
        img = _color_jitter(img, aug.color_jitter, g)
    if _chance(g, aug.grayscale_p):
        img = F.rgb_to_grayscale(img, num_output_channels=3)
    if _chance(g, aug.blur_p):
        sigma = _uniform(g, *aug.blur_sigma)
        # Kernel covering +-3 sigma, as PIL's GaussianBlur (the reference's) effectively does.
        kernel = 2 * math.ceil(3 * sigma) + 1
        img = F.gaussian_blur(img, [kernel, kernel], [sigma, sigma])
    return img


def cutmix_box(size: int, aug: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """A (size, size) long mask, 1 inside a random box (prob. cutmix_p) of the configured area and aspect."""
    box = torch.zeros(size, size, dtype=torch.long)
    if not _chance(generator, aug.cutmix_p):
        return box
    area = _uniform(generator, *aug.cutmix_area)
    # Aspect = height / width. A box must fit in the crop: h <= size needs aspect <= 1/area and
    # w <= size needs aspect >= area; sampling within that interval equals rejecting unfit aspects.
    low, high = max(aug.cutmix_aspect[0], area), min(aug.cutmix_aspect[1], 1 / max(area, 1e-12))
    aspect = _uniform(generator, low, high) if low <= high else min(max(1.0, low), high)
    box_h = min(size, max(1, round(size * math.sqrt(area * aspect))))
    box_w = min(size, max(1, round(size * math.sqrt(area / aspect))))
    top, left = _randint(generator, 0, size - box_h), _randint(generator, 0, size - box_w)
    box[top:top + box_h, left:left + box_w] = 1
    return box


def normalize(img: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) -> float32 in ImageNet mean/std units."""
    return F.normalize(img.float().div_(255), list(IMAGENET_MEAN), list(IMAGENET_STD))
