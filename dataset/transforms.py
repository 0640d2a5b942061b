"""Weak and strong augmentations of docs/method.md §4, driven by an explicit torch.Generator.

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

from util.catalog import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from util.config import AugmentConfig


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g).item()


def _chance(g: torch.Generator, p: float) -> bool:
    return torch.rand((), generator=g).item() < p


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high] inclusive."""
    return int(torch.randint(low, high + 1, (), generator=g).item())


def rescaled_size(h: int, w: int, scale_range: tuple[float, float], g: torch.Generator) -> list[int]:
    """[height, width] after the random rescale, drawn as the reference's `resize`.

    The long side is a whole number drawn uniformly from [int(L * low), int(L * high)] (L the current long
    side); the short side keeps the aspect ratio, rounded half up as int(x + 0.5).
    """
    long_side = max(1, _randint(g, int(max(h, w) * scale_range[0]), int(max(h, w) * scale_range[1])))
    if h > w:
        return [long_side, max(1, int(w * long_side / h + 0.5))]
    return [max(1, int(h * long_side / w + 0.5)), long_side]


def weak_augment(img: torch.Tensor, mask: torch.Tensor, crop_size: int, aug: AugmentConfig,
                 g: torch.Generator, mask_pad: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale the long side, pad to the crop (image 0, mask `mask_pad`), random crop, horizontal flip."""
    image, target = tv_tensors.Image(img), tv_tensors.Mask(mask)
    h, w = image.shape[-2:]
    size = rescaled_size(h, w, aug.scale_range, g)
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


def colour_augment(img: torch.Tensor, aug: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """The strong view's colour changes: colour jitter, then grayscale, each with its probability."""
    if _chance(g, aug.color_jitter_p):
        img = _color_jitter(img, aug.color_jitter, g)
    if _chance(g, aug.grayscale_p):
        img = F.rgb_to_grayscale(img, num_output_channels=3)
    return img


def strong_augment(img: torch.Tensor, aug: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Colour jitter, grayscale and Gaussian blur of an image (never a mask), each with its probability."""
    img = colour_augment(img, aug, g)
    if _chance(g, aug.blur_p):
        sigma = _uniform(g, *aug.blur_sigma)
        # Kernel covering +-3 sigma, as PIL's GaussianBlur (the reference's) effectively does.
        kernel = 2 * math.ceil(3 * sigma) + 1
        img = F.gaussian_blur(img, [kernel, kernel], [sigma, sigma])
    return img


def _rand64(g: torch.Generator, n: int = 0) -> torch.Tensor:
    """Uniform [0, 1) float64 draws: `n` of them, or one scalar tensor when n == 0."""
    return torch.rand((n,) if n else (), dtype=torch.float64, generator=g)


def cutmix_box_params(size: int, aug: AugmentConfig,
                      generator: torch.Generator) -> tuple[int, int, int, int] | None:
    """(top, left, h, w) of a random CutMix box in a (size, size) crop, or None for no box.

    The reference's rule (obtain_cutmix_box of UniMatch, kept by RS-MTDF): no box when a uniform draw
    exceeds cutmix_p; otherwise the area a is drawn uniformly in cutmix_area (a fraction of the crop), then
    ratio r = h / w uniformly in cutmix_aspect together with a position x, y uniformly in 0 .. size - 1,
    w = int(sqrt(a size^2 / r)), h = int(sqrt(a size^2 r)) (floored), and ratio and position are drawn again,
    the area kept, until the box lies inside the crop. The rejection weights every ratio by the number of
    positions its box fits at, so elongated large boxes are rarer than a ratio drawn within the range that
    fits would make them. Attempts are drawn in growing chunks (the first that fits is taken: the same
    distribution as one at a time), all from `generator`, so a seed always gives the same box.
    """
    if _rand64(generator).item() > aug.cutmix_p:
        return None
    area_low, area_high = aug.cutmix_area
    area = (area_low + (area_high - area_low) * _rand64(generator).item()) * size * size  # in pixels
    low, high = aug.cutmix_aspect
    # int(sqrt(area * r)) <= size iff r < (size + 1)^2 / area, int(sqrt(area / r)) <= size iff
    # r > area / (size + 1)^2: without a ratio in between, the reference would loop for ever.
    edge = (size + 1) ** 2
    if area > 0 and not (low < edge / area and high > area / edge):
        raise ValueError(f"augment.cutmix_aspect {aug.cutmix_aspect}: no box of {area / size**2:.3f} of the "
                         f"crop with such an aspect fits in a {size}x{size} crop")
    chunk = 16
    while True:
        ratios = (low + (high - low) * _rand64(generator, chunk)).tolist()
        positions = torch.randint(0, size, (chunk, 2), generator=generator).tolist()
        for ratio, (left, top) in zip(ratios, positions):
            w, h = int(math.sqrt(area / ratio)), int(math.sqrt(area * ratio))
            if left + w <= size and top + h <= size:
                return top, left, h, w
        chunk = min(2 * chunk, 1 << 16)


def cutmix_box(size: int, aug: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """A (size, size) long mask, 1 inside the box of `cutmix_box_params` (all 0 when there is none)."""
    box = torch.zeros(size, size, dtype=torch.long)
    params = cutmix_box_params(size, aug, generator)
    if params is not None:
        top, left, h, w = params
        box[top:top + h, left:left + w] = 1
    return box


def normalize(img: torch.Tensor) -> torch.Tensor:
    """RGB in 0..255, (3, H, W) or (B, 3, H, W), uint8 or float, on any device -> float32 in ImageNet mean/std
    units. Element by element: a window of an image gets the numbers the whole image would."""
    return F.normalize(img.float() / 255, list(IMAGENET_MEAN), list(IMAGENET_STD))


def denormalize(img: torch.Tensor) -> torch.Tensor:
    """The inverse of `normalize`, rounded: float32 (3, H, W) or (B, 3, H, W) -> uint8 RGB, clipped to 0..255."""
    mean = torch.tensor(IMAGENET_MEAN, device=img.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=img.device).view(3, 1, 1)
    rgb = (img.float() * std + mean).clamp(0, 1) * 255
    return (rgb + 0.5).to(torch.uint8)
