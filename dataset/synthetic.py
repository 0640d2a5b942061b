"""Aerial-like synthetic scenes in the raw layout of LoveDA, Potsdam or DeepGlobe, for demos and tests.

    python -m dataset.synthetic --out /tmp/raw_loveda --dataset loveda --size 1024 --count 4
    python -m dataset.prepare loveda --raw /tmp/raw_loveda --out data/loveda --lists splits/loveda

A scene is a Voronoi patchwork of land parcels (fields, forest, barren land, grass, built-up blocks) with a
river or lake, straight roads, buildings in built-up blocks, and for Potsdam cars and clutter. Each class has
its own colour and texture (striped fields, blotchy forest canopy, smooth water, uniform roofs), so a model
can learn every class from pixels.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: the repository root, not dataset/, first
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image

from util.catalog import DATASETS
from util.cli import path_arg, run_main

# Generic land covers; each dataset maps them onto its own classes below.
NODATA, BACKGROUND, BUILDING, ROAD, WATER, BARREN, FOREST, AGRICULTURE, LOWVEG, RANGELAND, CAR, CLUTTER = range(12)
# Built-up parcels are background (or pavement) with buildings placed on them.
BLOCK = 100

# (mean RGB, blotch amplitude, grain amplitude) per generic class.
LOOK = {
    BACKGROUND: ((150, 142, 125), 12, 8), BUILDING: ((0, 0, 0), 0, 4), ROAD: ((105, 105, 112), 3, 4),
    WATER: ((30, 62, 105), 6, 2), BARREN: ((192, 165, 122), 18, 14), FOREST: ((38, 82, 42), 30, 12),
    AGRICULTURE: ((135, 160, 80), 6, 5), LOWVEG: ((112, 172, 92), 10, 6), RANGELAND: ((172, 168, 105), 16, 9),
    CAR: ((0, 0, 0), 0, 3), CLUTTER: ((175, 70, 160), 20, 20), NODATA: ((0, 0, 0), 0, 0),
}
ROOFS = np.array([(178, 82, 62), (205, 205, 210), (125, 122, 135), (160, 112, 90)], np.float32)
CAR_COLOURS = np.array([(230, 230, 235), (200, 30, 30), (20, 20, 25), (40, 70, 190)], np.float32)

# Parcel classes and weights, and which features a scene has.
RECIPES = {
    "rural": {"parcels": {AGRICULTURE: 4, FOREST: 2, BARREN: 1, BACKGROUND: 2, BLOCK: 1}, "roads": 2, "water": 0.8},
    "urban": {"parcels": {BLOCK: 5, BACKGROUND: 2, FOREST: 1, BARREN: 1, AGRICULTURE: 1}, "roads": 4, "water": 0.5},
    "potsdam": {"parcels": {BLOCK: 4, LOWVEG: 3, FOREST: 2, BACKGROUND: 2}, "roads": 4, "water": 0.0,
                "cars": True, "clutter": True},
    "deepglobe": {"parcels": {AGRICULTURE: 4, RANGELAND: 2, FOREST: 2, BARREN: 1, BLOCK: 1}, "roads": 1,
                  "water": 0.7},
}

# Generic class -> dataset class index (LoveDA raw masks store index + 1, with 0 = no-data).
CLASS_MAP = {
    "loveda": {BACKGROUND: 0, BUILDING: 1, ROAD: 2, WATER: 3, BARREN: 4, FOREST: 5, AGRICULTURE: 6},
    "potsdam": {BACKGROUND: 0, ROAD: 0, BUILDING: 1, LOWVEG: 2, FOREST: 3, CAR: 4, CLUTTER: 5},
    "deepglobe": {BACKGROUND: 0, ROAD: 0, BUILDING: 0, AGRICULTURE: 1, RANGELAND: 2, FOREST: 3, WATER: 4,
                  BARREN: 5, NODATA: 6},
}


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-scale noise with blobs about size/cells pixels across."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def parcels(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """A Voronoi partition of the image into `count` parcels (ids), computed on a coarse grid."""
    grid = min(size, 256)
    seeds = rng.uniform(0, grid, (count, 2)).astype(np.float32)
    yy, xx = np.mgrid[0:grid, 0:grid].astype(np.float32)
    best = np.full((grid, grid), np.inf, np.float32)
    ids = np.zeros((grid, grid), np.int32)
    for k, (sy, sx) in enumerate(seeds):
        d = (yy - sy) ** 2 + (xx - sx) ** 2
        closer = d < best
        best[closer], ids[closer] = d[closer], k
    index = np.arange(size) * grid // size
    return ids[np.ix_(index, index)]


def layout(rng: np.random.Generator, size: int, recipe: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generic class map, parcel ids and an instance colour map (roofs, cars) of one scene."""
    ids = parcels(rng, size, int(rng.integers(8, 20)))
    kinds, weights = zip(*recipe["parcels"].items())
    parcel_class = rng.choice(kinds, size=ids.max() + 1, p=np.array(weights) / sum(weights))
    cls = parcel_class[ids].astype(np.int16)
    yy, xx = np.ogrid[0:size, 0:size]

    if rng.random() < recipe["water"]:
        if rng.random() < 0.5:  # a meandering river
            centre = size * rng.uniform(0.2, 0.8) + size * 0.08 * np.sin(xx / size * rng.uniform(3, 9))
            cls[np.abs(yy - centre) < size * rng.uniform(0.03, 0.07)] = WATER
        else:  # a lake
            (cy, cx), r = size * rng.uniform(0.2, 0.8, 2), size * rng.uniform(0.1, 0.2)
            cls[((yy - cy) / r) ** 2 + ((xx - cx) / (r * rng.uniform(0.6, 1.6))) ** 2 < 1] = WATER

    instance = np.zeros((size, size, 3), np.float32)
    blocks = cls == BLOCK
    cls[blocks] = BACKGROUND
    for _ in range(int(rng.integers(150, 250) * (size / 512) ** 2) if blocks.any() else 0):
        h, w = (size * rng.uniform(0.03, 0.07, 2)).astype(int) + 2
        top, left = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
        if blocks[top + h // 2, left + w // 2]:
            region = (slice(top, top + h), slice(left, left + w))
            cls[region] = np.where(blocks[region], BUILDING, cls[region])
            instance[region] = ROOFS[rng.integers(len(ROOFS))]

    width = max(2, size // 60)
    for _ in range(int(rng.integers(1, recipe["roads"] + 1))):
        offset = int(rng.integers(width, size - width))
        road = (np.abs(yy - offset) < width) if rng.random() < 0.5 else (np.abs(xx - offset) < width)
        cls[np.broadcast_to(road, cls.shape) & (cls != WATER)] = ROAD

    if recipe.get("cars"):
        road_pixels = np.argwhere(cls == ROAD)
        for y, x in road_pixels[rng.integers(0, len(road_pixels), min(len(road_pixels), size // 20))]:
            h, w = max(2, size // 120), max(2, size // 60)
            if rng.random() < 0.5:  # parked along either road direction
                h, w = w, h
            region = (slice(y, y + h), slice(x, x + w))
            cls[region], instance[region] = CAR, CAR_COLOURS[rng.integers(len(CAR_COLOURS))]
    if recipe.get("clutter"):
        for _ in range(int(rng.integers(2, 6))):
            cy, cx, r = *rng.integers(0, size, 2), size * rng.uniform(0.01, 0.03)
            cls[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = CLUTTER
    return cls, ids, instance


def field_stripes(rng: np.random.Generator, ids: np.ndarray, period: tuple[float, float]) -> np.ndarray:
    """A sine of stripes in [-1, 1] whose angle and period (pixels, drawn in `period`) change per parcel."""
    size = ids.shape[0]
    angle = rng.uniform(0, np.pi, ids.max() + 1)[ids]
    wavelength = rng.uniform(*period, ids.max() + 1)[ids]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / wavelength)


def render(rng: np.random.Generator, cls: np.ndarray, ids: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """RGB pixels of a class map: per-class colour, blotches and grain; fields striped per parcel."""
    size = cls.shape[0]
    blotch = smooth_noise(rng, size, max(4, size // 24))[..., None]
    grain = rng.standard_normal((size, size, 1)).astype(np.float32)
    img = np.zeros((size, size, 3), np.float32)
    for c, (mean, blotch_amp, grain_amp) in LOOK.items():
        m = cls == c
        if m.any():
            img[m] = (np.array(mean, np.float32) + blotch_amp * blotch[m] + grain_amp * grain[m])
    fields = cls == AGRICULTURE
    if fields.any():
        stripes = field_stripes(rng, ids, (size / 90, size / 30))
        img[fields] += stripes[fields][:, None] * np.array([-22, 12, -10], np.float32)
    things = (cls == BUILDING) | (cls == CAR)
    img[things] += instance[things]
    return np.clip(img, 0, 255).astype(np.uint8)


def scene(rng: np.random.Generator, size: int, recipe: str, nodata_p: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One (RGB image, generic class map) pair; optionally a black no-data band along one edge."""
    cls, ids, instance = layout(rng, size, RECIPES[recipe])
    if rng.random() < nodata_p:
        band = int(size * rng.uniform(0.05, 0.15))
        cls[:, :band] = NODATA
    return render(rng, cls, ids, instance), cls


def to_labels(dataset: str, cls: np.ndarray) -> np.ndarray:
    """Generic classes -> the dataset's class indices (255 where the dataset has no such class)."""
    lut = np.full(256, 255, np.uint8)
    for generic, index in CLASS_MAP[dataset].items():
        lut[generic] = index
    return lut[cls]


def demo_scene(rng: np.random.Generator, size: int, domain: str) -> tuple[np.ndarray, np.ndarray]:
    """The demo's LoveDA scene of a domain ('rural' | 'urban'), with a no-data band in 30 % of them."""
    return scene(rng, size, domain, nodata_p=0.3)


def write_loveda(out: Path, rng: np.random.Generator, size: int, count: int,
                 draw: Callable[[np.random.Generator, int, str], tuple[np.ndarray, np.ndarray]] = demo_scene,
                 val_count: int | None = None) -> int:
    """{Train,Val}/{Urban,Rural}/{images_png,masks_png}/<id>.png; masks hold class + 1, 0 = no-data.

    `count` images per domain in Train and `val_count` (default: half as many) in Val; `draw(rng, size,
    domain)` gives one (RGB image, generic class map).
    """
    next_id = 0
    for split, n in (("Train", count), ("Val", val_count or max(1, (count + 1) // 2))):
        for domain in ("Rural", "Urban"):
            (out / split / domain / "images_png").mkdir(parents=True, exist_ok=True)
            (out / split / domain / "masks_png").mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                img, cls = draw(rng, size, domain.lower())
                labels = to_labels("loveda", cls)
                raw = np.where(labels == 255, 0, labels + 1).astype(np.uint8)
                Image.fromarray(img).save(out / split / domain / "images_png" / f"{next_id}.png")
                Image.fromarray(raw).save(out / split / domain / "masks_png" / f"{next_id}.png")
                next_id += 1
    return next_id


def colour_mask(dataset: str, labels: np.ndarray) -> np.ndarray:
    """Class indices -> the dataset's palette colours (black for 255)."""
    palette = np.array(DATASETS[dataset].palette + ((0, 0, 0),) * (256 - DATASETS[dataset].nclass), np.uint8)
    return palette[labels]


def write_potsdam(out: Path, rng: np.random.Generator, size: int, count: int) -> int:
    """2_Ortho_RGB/top_potsdam_<r>_<c>_RGB.tif and 5_Labels_all/top_potsdam_<r>_<c>_label.tif (RGB colours)."""
    (out / "2_Ortho_RGB").mkdir(parents=True, exist_ok=True)
    (out / "5_Labels_all").mkdir(parents=True, exist_ok=True)
    for k in range(count):
        name = f"top_potsdam_{2 + k // 5}_{10 + k % 5}"
        img, cls = scene(rng, size, "potsdam")
        colours = colour_mask("potsdam", to_labels("potsdam", cls))
        # Like the real labels, a few pixels are slightly off the palette.
        off = rng.random(cls.shape) < 0.001
        colours[off] = np.clip(colours[off].astype(int) + rng.integers(-20, 21, (int(off.sum()), 3)), 0, 255)
        Image.fromarray(img).save(out / "2_Ortho_RGB" / f"{name}_RGB.tif")
        Image.fromarray(colours).save(out / "5_Labels_all" / f"{name}_label.tif")
    return count


def write_deepglobe(out: Path, rng: np.random.Generator, size: int, count: int) -> int:
    """train/<id>_sat.jpg and train/<id>_mask.png, the mask colours blurred as JPEG-era masks are."""
    (out / "train").mkdir(parents=True, exist_ok=True)
    for k in range(count):
        img, cls = scene(rng, size, "deepglobe", nodata_p=0.2)
        colours = colour_mask("deepglobe", to_labels("deepglobe", cls)).astype(np.int16)
        colours += rng.integers(-60, 61, colours.shape, dtype=np.int16)
        Image.fromarray(img).save(out / "train" / f"{100000 + k}_sat.jpg", quality=92)
        Image.fromarray(np.clip(colours, 0, 255).astype(np.uint8)).save(out / "train" / f"{100000 + k}_mask.png")
    return count


WRITERS = {"loveda": write_loveda, "potsdam": write_potsdam, "deepglobe": write_deepglobe}
REAL_SIZE = {"loveda": 1024, "potsdam": 6000, "deepglobe": 2448}


def main(argv: list[str] | None = None) -> int:
    """Command line: write a synthetic raw tree."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=path_arg, required=True, help="folder to write the raw tree into")
    parser.add_argument("--dataset", choices=sorted(WRITERS), default="loveda")
    parser.add_argument("--size", type=int, help="image side in pixels (default: the real dataset's)")
    parser.add_argument("--count", type=int, default=4,
                        help="images per domain of Train (LoveDA; Val gets half), or tiles (Potsdam, DeepGlobe)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    size = args.size or REAL_SIZE[args.dataset]
    if size < 16 or args.count < 1:
        parser.error("--size must be at least 16 and --count at least 1")
    n = WRITERS[args.dataset](args.out, np.random.default_rng(args.seed), size, args.count)
    print(f"wrote {n} synthetic {args.dataset} images of {size}x{size} under {args.out}")
    return 0


if __name__ == "__main__":
    run_main(main)
