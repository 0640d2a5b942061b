"""What the QGIS plugin Deepness does with an exported model (deploy/export.py), in a scene's pixels: the overlap
it derives from a percent, where its tiles fall, and which tile gives each pixel its class. deploy/predict.py's
`--tiling deepness` draws a map this way, so that the map QGIS shows can be compared with predict.py's.

The rule, read from Deepness 0.6.5's source (unchanged since 0.6.0), for a layer processed whole ("Entire
layer") at the model's resolution:
- the overlap is `int(tile * percent / 100 * 2) // 2` pixels (common/processing_overlap.py), the stride
  tile - overlap;
- the processed area is the layer grown to one tile plus whole strides (a side shorter than a tile grows to one
  tile) by pixels added at its right and at its top, the extent's xMaximum and yMaximum
  (processing/extent_utils.py, calculate_extended_processing_extent): tile columns start at the scene's left
  edge and run past its right one; tile rows end at its bottom edge and start above its top one. What lies
  outside the layer is read as the layer's nodata value, zeros without one;
- tiles start every stride from the grown area's top left corner (processing/tile_params.py) and run row by row,
  left to right;
- each tile's classes (the argmax of its probabilities) are copied but for half the overlap, (tile - stride) // 2
  pixels, along its sides that face another tile (TileParams.get_slice_on_full_image_for_copying); a later tile
  overwrites an earlier one where their kept parts meet. Along each side a pixel thus takes its class from the
  last tile whose kept part reaches it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch

Model = Callable[[torch.Tensor], torch.Tensor]


def overlap_px(tile: int, percent: int) -> int:
    """The overlap in pixels Deepness derives from an overlap in percent."""
    return int(tile * percent / 100 * 2) // 2


def overlap_percent(tile: int, stride: int) -> int:
    """The whole percent (what Deepness' tiles_overlap holds) whose overlap in Deepness is closest to
    tile - stride, predict.py's overlap; of two as close, the one nearer the overlap's own percentage."""
    want = tile - stride
    return min(range(100), key=lambda p: (abs(overlap_px(tile, p) - want), abs(p - 100 * want / tile)))


def grown_by(length: int, tile: int, stride: int) -> int:
    """The pixels Deepness adds to a side of `length` pixels: up to one tile plus whole strides."""
    if length <= tile:
        return tile - length
    return (stride - (length - tile) % stride) % stride


def tile_starts(length: int, tile: int, stride: int, grown_before: bool) -> list[int]:
    """Where Deepness' tiles start along a side of `length` pixels, in the scene's pixels: from 0 along a row (the
    area grows at the right), from minus the pixels added down a column (it grows at the top, `grown_before`)."""
    added = grown_by(length, tile, stride)
    count = (length + added - tile) // stride + 1
    first = -added if grown_before else 0
    return [first + k * stride for k in range(count)]


def kept_from(starts: list[int], tile: int, stride: int, length: int) -> list[int]:
    """The first scene pixel of each tile's kept part along a side, clipped to the scene: tile k gives its class
    to pixels [kept[k], kept[k + 1]), the last one to the end of the side."""
    half = max((tile - stride) // 2, 0)
    return [min(max(start if k == 0 else start + half, 0), length) for k, start in enumerate(starts)]


def count_tiles(height: int, width: int, tile: int, stride: int) -> int:
    """How many tiles Deepness runs over a height x width scene."""
    return len(tile_starts(height, tile, stride, True)) * len(tile_starts(width, tile, stride, False))


@torch.inference_mode()
def deepness_rows(model: Model, read: Callable[[int, int], torch.Tensor], height: int, width: int, tile: int,
                  stride: int, batch_size: int, transform: Callable[[torch.Tensor], torch.Tensor],
                  device: torch.device, amp_dtype: torch.dtype | None = None,
                  progress: Callable[[int], object] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """The class map Deepness draws of one height x width scene, by bands of rows: yields (top, classes), classes
    (rows, width) uint8 for rows [top, top + rows), one band per row of tiles, in order.

    `read(top, bottom)` gives rows of the scene as (3, rows, width) uint8; outside the scene is zeros, as Deepness
    reads a layer without a nodata value. `transform` makes the model's input of a (n, 3, tile, tile) batch; the
    forward runs under autocast to `amp_dtype` where given. Memory: one row of tiles.
    """
    ys, xs = tile_starts(height, tile, stride, True), tile_starts(width, tile, stride, False)
    row_kept, col_kept = kept_from(ys, tile, stride, height), kept_from(xs, tile, stride, width)
    padded_width = xs[-1] + tile
    for i, y in enumerate(ys):
        top, bottom = row_kept[i], row_kept[i + 1] if i + 1 < len(ys) else height
        strip = torch.zeros(3, tile, padded_width, dtype=torch.uint8)
        strip[:, max(-y, 0):, :width] = read(max(y, 0), y + tile)
        classes = np.empty((bottom - top, width), np.uint8)
        for first in range(0, len(xs), batch_size):
            chunk = list(range(first, min(first + batch_size, len(xs))))
            batch = transform(torch.stack([strip[:, :, xs[j]:xs[j] + tile] for j in chunk]).to(device))
            with (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                  else contextlib.nullcontext()):
                out = model(batch)
            # Deepness takes the argmax of the file's probabilities (the softmax), in float32.
            labels = out.float().softmax(1).argmax(1).to(torch.uint8).cpu().numpy()
            for j, lab in zip(chunk, labels):
                left, right = col_kept[j], col_kept[j + 1] if j + 1 < len(xs) else width
                classes[:, left:right] = lab[top - y:bottom - y, left - xs[j]:right - xs[j]]
            if progress is not None:
                progress(len(chunk))
        if bottom > top:
            yield top, classes
