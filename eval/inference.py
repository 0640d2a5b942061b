"""Whole-image inference: class probabilities for images of any size, in `original` or `sliding_window` mode.

`original` (SPEC §7, what the reference used on 512 tiles): each side resized to the nearest multiple of
the patch size 14, halves rounded up as the reference's int(side / 14 + 0.5) (511 -> 518), one forward,
logits resized back (bilinear, align_corners=True).
`sliding_window`: square windows of `window` pixels every `stride` pixels, the last window of a row or
column aligned to the image border; softmax summed over the windows covering a pixel and divided by their
number. An image smaller than the window is zero-padded (bottom/right) up to it and the padding cropped
off afterwards, so any size works. Windows are cut lazily, `batch_size` per forward, and summed into one
(B, C, H, W) accumulator on the image's device: a whole 6000x6000 tile needs C*36M floats there, no more.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from util.config import PATCH_SIZE, Config
from util.errors import ConfigError
from util.precision import autocast_dtype  # noqa: F401 - re-exported: it lived here

Model = Callable[[torch.Tensor], torch.Tensor]


def default_stride(window: int) -> int:
    """2/3 of the window (SPEC §7), truncated as the reference's int(window * 2 / 3): 518 -> 345, 512 -> 341,
    112 -> 74 (at least 1)."""
    return max(1, int(window * 2 / 3))


def resolve_window(cfg: Config) -> tuple[int, int]:
    """(window, stride) for sliding-window inference: eval.window/stride, or crop_size and 2/3 of it."""
    window = cfg.eval.window or cfg.dataset.crop_size
    stride = cfg.eval.stride or default_stride(window)
    if stride > window:
        raise ConfigError(f"eval.stride: {stride} is larger than the window {window}; pixels between "
                          f"windows would get no prediction")
    return window, stride


def nearest_patch_multiple(size: int) -> int:
    """The multiple of the patch size closest to `size`, a tie going up as the reference's
    int(size / 14 + 0.5) does (35 -> 42, 511 -> 518); at least one patch."""
    return max(PATCH_SIZE, int(size / PATCH_SIZE + 0.5) * PATCH_SIZE)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets along one side of `length` >= `window`: every `stride`, the last flush with the end."""
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


@torch.inference_mode()
def predict_logits(model: Model, img: torch.Tensor, mode: str = "original", window: int | None = None,
                   stride: int | None = None, batch_size: int = 16,
                   amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Class probabilities (B, C, H, W), float32, for normalised images `img` (B, 3, H, W)."""
    autocast = (torch.autocast(device_type=img.device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    with autocast:
        if mode == "original":
            return _predict_original(model, img)
        if mode == "sliding_window":
            if window is None:
                raise ValueError("sliding_window inference needs a window size")
            stride = stride or default_stride(window)
            if not 0 < stride <= window:
                raise ValueError(f"stride {stride} must be in (0, window {window}]")
            return _predict_sliding(model, img, window, stride, batch_size)
    raise ValueError(f"unknown inference mode '{mode}' (original | sliding_window)")


def _predict_original(model: Model, img: torch.Tensor) -> torch.Tensor:
    h, w = img.shape[-2:]
    size = (nearest_patch_multiple(h), nearest_patch_multiple(w))
    x = img if size == (h, w) else F.interpolate(img, size=size, mode="bilinear", align_corners=True)
    logits = model(x).float()
    if size != (h, w):
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=True)
    return logits.softmax(1)


def _windows(n_images: int, ys: list[int], xs: list[int], batch_size: int) -> Iterator[list[tuple[int, int, int]]]:
    """(image, top, left) of every window, `batch_size` at a time, without materialising them all."""
    chunk: list[tuple[int, int, int]] = []
    for b in range(n_images):
        for y in ys:
            for x in xs:
                chunk.append((b, y, x))
                if len(chunk) == batch_size:
                    yield chunk
                    chunk = []
    if chunk:
        yield chunk


def _predict_sliding(model: Model, img: torch.Tensor, window: int, stride: int, batch_size: int) -> torch.Tensor:
    n, _, h, w = img.shape
    pad_h, pad_w = max(0, window - h), max(0, window - w)
    if pad_h or pad_w:
        img = F.pad(img, (0, pad_w, 0, pad_h))  # zeros: the mean colour after normalisation
    hp, wp = img.shape[-2:]
    ys, xs = window_starts(hp, window, stride), window_starts(wp, window, stride)

    count = torch.zeros(1, 1, hp, wp, device=img.device)
    for y in ys:
        for x in xs:
            count[..., y:y + window, x:x + window] += 1
    probs: torch.Tensor | None = None
    for chunk in _windows(n, ys, xs, batch_size):
        crops = torch.stack([img[b, :, y:y + window, x:x + window] for b, y, x in chunk])
        out = model(crops).float().softmax(1)
        if probs is None:
            probs = torch.zeros(n, out.shape[1], hp, wp, device=img.device)
        for (b, y, x), p in zip(chunk, out):
            probs[b, :, y:y + window, x:x + window] += p
    assert probs is not None
    return (probs / count)[..., :h, :w]
