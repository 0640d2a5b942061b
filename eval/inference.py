"""Whole-image inference: class probabilities for images of any size, in `original` or `sliding_window` mode.

`original` (docs/method.md §5, what the reference used on 512 tiles): each side resized to the nearest multiple of
the patch size 14, halves rounded up as the reference's int(side / 14 + 0.5) (511 -> 518), one forward,
logits resized back (bilinear, align_corners=True).
`sliding_window`: square windows of `window` pixels every `stride` pixels, the last window of a row or
column aligned to the image border. An image smaller than the window is zero-padded (bottom/right) up to it
and the padding cropped off afterwards, so any size works. Windows are cut lazily, `batch_size` per forward.
How overlapping windows are blended (`blend`, eval.blend):
- `uniform` (the reference's scoring, eval.py's): softmax summed over the windows covering a pixel and
  divided by their number;
- `gaussian` (predict.py's default): as nnU-Net's sliding-window inference, each window's softmax is
  weighted by a Gaussian importance map (sigma = window / 8, largest in the window's centre, falling off
  towards its border, clipped at MIN_WEIGHT above 0), and the weighted sum divided by the summed weights.
  A window's border, where a model sees least context, then counts little wherever another window sees
  the pixel nearer its centre: no seams along window edges.

`predict_logits` holds a (B, C, H, W) accumulator for whole images already in memory (eval.py).
`predict_rows` streams one image of any size: it reads the rows its windows need, accumulates only the
band of rows that windows still cover, and hands back finished rows as soon as no later window touches
them (predict.py), so its memory depends on the image's width, never on its height. Both give the same
numbers bit for bit.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from util.config import PATCH_SIZE, Config
from util.errors import ConfigError

Model = Callable[[torch.Tensor], torch.Tensor]
BLENDS = ("uniform", "gaussian")
# Smallest weight of the Gaussian importance map (its maximum is 1): every pixel of a window still counts,
# so a pixel that only window borders cover (the image's own border) gets a prediction, never 0 / 0.
MIN_WEIGHT = 1e-6


def default_stride(window: int) -> int:
    """2/3 of the window (docs/method.md §5), truncated as the reference's int(window * 2 / 3): 518 -> 345, 512 -> 341,
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


def importance_map(window: int, blend: str = "uniform",
                   device: torch.device | str | None = None) -> torch.Tensor | None:
    """The (window, window) weight of each pixel of a window: None for `uniform` (every pixel counts 1);
    for `gaussian` nnU-Net's importance map: a Gaussian centred on the window, sigma = window / 8, scaled
    to a maximum of 1 and clipped at MIN_WEIGHT (about 3e-4 at the middle of an edge, 1e-6 at a corner)."""
    if blend == "uniform":
        return None
    if blend != "gaussian":
        raise ValueError(f"unknown blend '{blend}' ({' | '.join(BLENDS)})")
    sigma = window / 8
    offset = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-0.5 * (offset / sigma) ** 2)
    weight = torch.outer(g, g)
    weight = (weight / weight.max()).clamp_min(MIN_WEIGHT)
    return weight.to(device=device, dtype=torch.float32)


def _check_sliding(window: int | None, stride: int | None, blend: str) -> tuple[int, int]:
    """The window and stride to use (stride defaults to 2/3 of the window); errors name what is wrong."""
    if window is None:
        raise ValueError("sliding_window inference needs a window size")
    stride = stride or default_stride(window)
    if not 0 < stride <= window:
        raise ValueError(f"stride {stride} must be in (0, window {window}]")
    if blend not in BLENDS:
        raise ValueError(f"unknown blend '{blend}' ({' | '.join(BLENDS)})")
    return window, stride


def _autocast(device_type: str, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return (torch.autocast(device_type=device_type, dtype=amp_dtype) if amp_dtype is not None
            else contextlib.nullcontext())


@torch.inference_mode()
def predict_logits(model: Model, img: torch.Tensor, mode: str = "original", window: int | None = None,
                   stride: int | None = None, batch_size: int = 16,
                   amp_dtype: torch.dtype | None = None, blend: str = "uniform") -> torch.Tensor:
    """Class probabilities (B, C, H, W), float32, for normalised images `img` (B, 3, H, W)."""
    with _autocast(img.device.type, amp_dtype):
        if mode == "original":
            return _predict_original(model, img)
        if mode == "sliding_window":
            window, stride = _check_sliding(window, stride, blend)
            return _predict_sliding(model, img, window, stride, batch_size, blend)
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


def _predict_sliding(model: Model, img: torch.Tensor, window: int, stride: int, batch_size: int,
                     blend: str = "uniform") -> torch.Tensor:
    n, _, h, w = img.shape
    pad_h, pad_w = max(0, window - h), max(0, window - w)
    if pad_h or pad_w:
        img = F.pad(img, (0, pad_w, 0, pad_h))  # zeros: the mean colour after normalisation
    hp, wp = img.shape[-2:]
    ys, xs = window_starts(hp, window, stride), window_starts(wp, window, stride)
    # `uniform` adds 1 and the plain softmax, exactly as the reference's scoring (no multiplication at all).
    weight = importance_map(window, blend, img.device)

    count = torch.zeros(1, 1, hp, wp, device=img.device)
    for y in ys:
        for x in xs:
            count[..., y:y + window, x:x + window] += 1 if weight is None else weight
    probs: torch.Tensor | None = None
    for chunk in _windows(n, ys, xs, batch_size):
        crops = torch.stack([img[b, :, y:y + window, x:x + window] for b, y, x in chunk])
        out = model(crops).float().softmax(1)
        if probs is None:
            probs = torch.zeros(n, out.shape[1], hp, wp, device=img.device)
        for (b, y, x), p in zip(chunk, out):
            probs[b, :, y:y + window, x:x + window] += p if weight is None else p * weight
    assert probs is not None
    return (probs / count)[..., :h, :w]


def count_windows(height: int, width: int, window: int, stride: int) -> int:
    """How many windows `predict_rows` (and `predict_logits`, per image) runs over a height x width image."""
    return (len(window_starts(max(height, window), window, stride))
            * len(window_starts(max(width, window), window, stride)))


@torch.inference_mode()
def predict_rows(model: Model, read: Callable[[int, int], torch.Tensor], height: int, width: int, window: int,
                 stride: int | None = None, batch_size: int = 16, blend: str = "uniform",
                 amp_dtype: torch.dtype | None = None, device: torch.device | str = "cpu",
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 progress: Callable[[int], object] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Sliding-window probabilities of one height x width image, streamed by bands of rows.

    `read(top, bottom)` returns rows [top, bottom) of the image as a (3, bottom - top, width) tensor (any
    dtype, e.g. uint8 straight from the file); `transform` turns a (n, 3, h, w) batch of its windows into
    the model's normalised float input, element by element (identity when None); `progress(n)` is called
    after each forward of n windows.
    Yields (top, probs): probs (C, rows, width) float32 for rows [top, top + rows), consecutive bands in
    order that together cover the image. Numbers are those of `predict_logits` on the whole image, bit for
    bit (same windows, same order of sums).

    Memory: the rows of the window row(s) in flight are read (with `read`), and probabilities are kept
    only for the band of rows that windows still cover: rows [y_k, y_k+1) between consecutive window starts
    are finished, handed back and dropped as soon as the next window to run starts at or below y_k+1. At
    most about window + stride * (1 + batch_size / windows per row) rows are alive, whatever the height.
    """
    window, stride = _check_sliding(window, stride, blend)
    device = torch.device(device)
    hp, wp = max(height, window), max(width, window)
    ys, xs = window_starts(hp, window, stride), window_starts(wp, window, stride)
    # Band k holds rows [ys[k], ends[k]): the rows between two window starts, finished together.
    ends = ys[1:] + [hp]
    weight = importance_map(window, blend, device)
    bands: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}    # k -> (weighted sum, summed weights)
    strips: dict[int, torch.Tensor] = {}                        # window row i -> its rows of the image
    emitted = 0                                                 # bands before this one are handed back
    windows = ((i, x) for i in range(len(ys)) for x in xs)
    while chunk := list(itertools.islice(windows, batch_size)):
        for i, _ in chunk:
            if i not in strips:
                strips[i] = read(ys[i], min(ys[i] + window, height))
        crops = [strips[i][:, :, x:x + window] for i, x in chunk]
        if hp == height and wp == width:
            batch = torch.stack(crops).to(device)
            batch = transform(batch) if transform is not None else batch
        else:  # an image smaller than the window: each crop transformed, then zero-padded up to the window
            batch = torch.cat([F.pad(transform(c[None].to(device)) if transform is not None else c[None].to(device),
                                     (0, window - c.shape[-1], 0, window - c.shape[-2])) for c in crops])
        # Autocast only around the forward: the caller's code between two bands must not run under it.
        with _autocast(device.type, amp_dtype):
            out = model(batch).float().softmax(1)
        for (i, x), p in zip(chunk, out):
            # Bands above this window's row are finished once its first window comes: hand them back
            # before this row's windows open the next band (two bands alive, not three).
            while emitted < i:
                yield ys[emitted], _finish(bands.pop(emitted), min(ends[emitted], height) - ys[emitted], width)
                emitted += 1
            y = ys[i]
            k = i
            while k < len(ys) and ys[k] < y + window:  # the bands this window covers
                if k not in bands:
                    rows = ends[k] - ys[k]
                    bands[k] = (torch.zeros(out.shape[1], rows, wp, device=device),
                                torch.zeros(1, rows, wp, device=device))
                acc, total = bands[k]
                top, bottom = ys[k], min(ends[k], y + window)
                part = p[:, top - y:bottom - y]
                dst = (slice(None), slice(top - ys[k], bottom - ys[k]), slice(x, x + window))
                if weight is None:
                    acc[dst] += part
                    total[dst] += 1
                else:
                    w = weight[top - y:bottom - y]
                    acc[dst] += part * w
                    total[dst] += w
                k += 1
        if progress is not None:
            progress(len(chunk))
        # Windows run in order of their top row: bands above the next window's top row are finished.
        following = chunk[-1][0] + (chunk[-1][1] == xs[-1])
        for i in [i for i in strips if i < following]:
            del strips[i]
        while emitted < following:
            yield ys[emitted], _finish(bands.pop(emitted), min(ends[emitted], height) - ys[emitted], width)
            emitted += 1


def _finish(band: tuple[torch.Tensor, torch.Tensor], rows: int, width: int) -> torch.Tensor:
    """A finished band's probabilities: the weighted sum divided by the summed weights, in place (the same
    numbers as `acc / total`, without a second band-sized tensor), padding cropped off."""
    acc, total = band
    return acc.div_(total)[:, :rows, :width]
