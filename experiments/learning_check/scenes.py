"""Synthetic LoveDA-layout scenes whose classes are told apart by texture, shape and context, not by colour.

    python -m experiments.learning_check.scenes --out /tmp/raw_shift --size 168 --count 50 --seed 0
    python -m dataset.prepare loveda --raw /tmp/raw_shift --out /tmp/shift --lists /tmp/shift_splits

The demo's scenes (dataset/synthetic.py) give every class its own mean colour, so colour alone labels a
pixel and a colour-jittered strong view teaches the wrong invariance. Here every scene is drawn from its
own *domain*, as images of real remote-sensing datasets come from different seasons, sensors and places:

- season: vegetation (forest, fields, grass) goes from green through yellow to brown;
- per-scene colour noise: each class's mean colour moves by N(0, 22) per channel;
- sensor: a hue rotation of up to +-50 degrees, saturation x[0.5, 1.25], gain x[0.75, 1.25], gamma [0.75, 1.35];
- haze (half of the scenes): a blend of up to 35 % towards bright grey;
- scale: the scene is drawn 0.8-1.35 times larger and resized, so parcels, roofs and roads shrink or grow;
- texture amplitude x[0.8, 1.4].

What stays constant across domains is each class's texture and shape: striped fields (per-parcel angle
and period), canopy of small dark-edged crowns (forest), smooth water, speckled barren land, mottled
background, rectangular roofs that cast a shadow on their lower-right side, straight roads of constant
width with a centre line. The layout (Voronoi parcels, river or lake, roads, buildings in built-up
blocks) is dataset/synthetic.py's, rural and urban recipes alike. `pool()` draws scenes in memory (for
pretraining stand-in teachers on scenes disjoint from the written ones).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: the repository root first
    sys.path[0] = str(Path(__file__).resolve().parents[2])

import argparse
from dataclasses import dataclass

import cv2
import numpy as np

from dataset.synthetic import (
    AGRICULTURE,
    BACKGROUND,
    BARREN,
    BUILDING,
    FOREST,
    RECIPES,
    ROAD,
    WATER,
    field_stripes,
    layout,
    smooth_noise,
    to_labels,
    write_loveda,
)
from util.cli import path_arg, run_main

# Colours of the "reference" domain (summer, neutral sensor); every scene moves them (see Domain).
GREEN_FOREST, GREEN_FIELD, GREEN_GRASS = (40, 88, 44), (120, 158, 78), (132, 150, 104)
AUTUMN = {FOREST: (150, 110, 50), AGRICULTURE: (196, 170, 92), BACKGROUND: (170, 150, 110)}
BASE = {BACKGROUND: GREEN_GRASS, ROAD: (112, 112, 116), WATER: (40, 70, 100), BARREN: (176, 150, 116),
        FOREST: GREEN_FOREST, AGRICULTURE: GREEN_FIELD}
ROOFS = np.array([(178, 82, 62), (205, 205, 210), (125, 122, 135), (160, 112, 90), (90, 110, 140)], np.float32)


@dataclass(frozen=True)
class Domain:
    """One scene's acquisition conditions."""

    season: float          # 0 summer green .. 1 autumn yellow/brown vegetation
    hue: float             # degrees of rotation about the grey axis
    saturation: float
    gain: float
    gamma: float
    haze: float            # blend weight towards bright grey
    scale: float           # the scene is drawn this many times larger, then resized to the output size
    texture: float         # texture amplitude factor
    class_shift: dict      # per-class RGB offset of the mean colour


def draw_domain(rng: np.random.Generator) -> Domain:
    return Domain(season=float(rng.uniform(0, 1)), hue=float(rng.uniform(-50, 50)),
                  saturation=float(rng.uniform(0.5, 1.25)), gain=float(rng.uniform(0.75, 1.25)),
                  gamma=float(rng.uniform(0.75, 1.35)), haze=float(rng.uniform(0, 0.35) * (rng.random() < 0.5)),
                  scale=float(rng.uniform(0.8, 1.35)), texture=float(rng.uniform(0.8, 1.4)),
                  class_shift={c: rng.normal(0, 22, 3).astype(np.float32) for c in BASE})


def class_colour(c: int, d: Domain) -> np.ndarray:
    base = np.array(BASE[c], np.float32)
    if c in AUTUMN:
        base = (1 - d.season) * base + d.season * np.array(AUTUMN[c], np.float32)
    return base + d.class_shift[c]


def hue_matrix(degrees: float) -> np.ndarray:
    """RGB rotation about the grey axis (keeps grey grey, rotates hue)."""
    a = np.deg2rad(degrees)
    c, s, k = np.cos(a), np.sin(a), 1 / 3
    r = np.sqrt(k)
    return np.array([[c + (1 - c) * k, k * (1 - c) - r * s, k * (1 - c) + r * s],
                     [k * (1 - c) + r * s, c + k * (1 - c), k * (1 - c) - r * s],
                     [k * (1 - c) - r * s, k * (1 - c) + r * s, c + k * (1 - c)]], np.float32)


def render_textured(rng: np.random.Generator, cls: np.ndarray, ids: np.ndarray, d: Domain) -> np.ndarray:
    """RGB (float, 0..255 before the sensor model) with a texture per class and shadows beside roofs."""
    size = cls.shape[0]
    t = d.texture
    img = np.zeros((size, size, 3), np.float32)
    grain = rng.standard_normal((size, size)).astype(np.float32)
    blotch = smooth_noise(rng, size, max(4, size // 24))
    fine = smooth_noise(rng, size, max(6, size // 4))  # tree crowns a few pixels across
    lum = np.zeros((size, size), np.float32)
    for c in BASE:
        m = cls == c
        if m.any():
            img[m] = class_colour(c, d)
    lum += np.where(cls == BACKGROUND, 16 * blotch + 4 * grain, 0)
    lum += np.where(cls == BARREN, 10 * blotch + 28 * grain, 0)
    lum += np.where(cls == WATER, 3 * blotch + 1 * grain, 0)
    lum += np.where(cls == ROAD, 3 * grain, 0)
    crowns = np.tanh(2.0 * fine)
    lum += np.where(cls == FOREST, 38 * crowns + 6 * blotch + 4 * grain, 0)
    fields = cls == AGRICULTURE
    if fields.any():
        stripes = field_stripes(rng, ids, (size / 45, size / 18))
        lum += np.where(fields, 36 * stripes + 3 * grain, 0)
    img += (t * lum)[..., None]

    # Roofs: one colour per building, bright top-left edge, a shadow cast to the lower right.
    buildings = cls == BUILDING
    if buildings.any():
        count, comp = cv2.connectedComponents(buildings.astype(np.uint8), connectivity=4)
        roof = ROOFS[rng.integers(len(ROOFS), size=count)] + rng.normal(0, 18, (count, 3)).astype(np.float32)
        img[buildings] = roof[comp[buildings]] + 3 * grain[buildings, None]
        shift = max(2, size // 70)
        shadow = np.zeros_like(buildings)
        shadow[shift:, shift:] = buildings[:-shift, :-shift]
        shadow &= ~buildings
        img[shadow] *= 0.45
        edge = buildings & ~np.pad(buildings, ((1, 0), (1, 0)))[:-1, :-1]
        img[edge] += 30
    # Roads: a thin bright centre line along the road's long axis.
    roads = cls == ROAD
    if roads.any():
        dist = cv2.distanceTransform(roads.astype(np.uint8), cv2.DIST_L1, 3)
        width = dist.max()
        if width >= 2:
            img[roads & (dist >= width)] += 45 * t
    return img


def sensor(img: np.ndarray, d: Domain) -> np.ndarray:
    """Hue rotation, saturation, gain, gamma and haze: the per-scene appearance change."""
    x = img @ hue_matrix(d.hue).T
    grey = x.mean(axis=-1, keepdims=True)
    x = grey + d.saturation * (x - grey)
    x = np.clip(x * d.gain / 255.0, 0, 1) ** d.gamma
    x = (1 - d.haze) * x + d.haze * np.array([0.82, 0.83, 0.86], np.float32)
    return np.clip(x * 255, 0, 255).astype(np.uint8)


def shift_scene(rng: np.random.Generator, size: int, recipe: str,
                domain: Domain | None = None) -> tuple[np.ndarray, np.ndarray, Domain]:
    """One (RGB uint8 image, generic class map, domain) of side `size`."""
    d = domain or draw_domain(rng)
    big = max(16, int(round(size * d.scale)))
    cls, ids, _ = layout(rng, big, RECIPES[recipe])
    img = sensor(render_textured(rng, cls, ids, d), d)
    if big != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if big > size else cv2.INTER_LINEAR)
        cls = cv2.resize(cls.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST).astype(np.int16)
    return img, cls, d


def pool(seed: int, size: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` scenes (half rural, half urban) in memory: images (N, size, size, 3) uint8, labels
    (N, size, size) in LoveDA's raw encoding.
    """
    rng = np.random.default_rng(seed)
    images = np.zeros((count, size, size, 3), np.uint8)
    labels = np.zeros((count, size, size), np.uint8)
    for k in range(count):
        img, cls, _ = shift_scene(rng, size, "rural" if k % 2 == 0 else "urban")
        images[k], labels[k] = img, to_labels("loveda", cls)
    return images, labels


def write_loveda_shift(out: Path, rng: np.random.Generator, size: int, count: int,
                       val_count: int | None = None) -> int:
    """LoveDA's raw tree ({Train,Val}/{Rural,Urban}/{images_png,masks_png}) of domain-shifted scenes."""
    return write_loveda(out, rng, size, count, draw=lambda g, side, domain: shift_scene(g, side, domain)[:2],
                        val_count=val_count)


def main(argv: list[str] | None = None) -> int:
    """Command line: write a raw LoveDA-layout tree of domain-shifted scenes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=path_arg, required=True, help="folder to write the raw tree into")
    parser.add_argument("--size", type=int, default=168, help="image side in pixels (LoveDA tiles are its quadrants)")
    parser.add_argument("--count", type=int, default=50,
                        help="images per domain (Rural, Urban) of Train; Val gets half unless --val-count")
    parser.add_argument("--val-count", type=int, help="images per domain of Val")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.size < 32 or args.count < 1 or (args.val_count is not None and args.val_count < 1):
        parser.error("--size must be at least 32, --count and --val-count at least 1")
    n = write_loveda_shift(args.out, np.random.default_rng(args.seed), args.size, args.count, args.val_count)
    print(f"wrote {n} domain-shifted synthetic LoveDA images of {args.size}x{args.size} under {args.out}")
    return 0


if __name__ == "__main__":
    run_main(main)
