"""LoveDA (Wang et al., NeurIPS 2021 Datasets and Benchmarks): 1024-px images of rural and urban scenes.

Raw files: {Train,Val}/{Urban,Rural}/images_png/<id>.png with masks_png/<id>.png beside (Test has no masks and
is not used). Each image is cut into its four 512-px quadrants, numbered 1-4: top left, top right, bottom
left, bottom right; crops keep the official folder (<out>/train, <out>/val). Labels: raw 1..7 -> classes
0..6, no-data 0 -> 255 (mmseg's reduce_zero_label). Splits: the labelled share is drawn per domain (rural,
urban) and merged; the official Val is shuffled and halved into val and test. No lists were published: the
shipped ones are this procedure (seed 0) over the official file names alone.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from dataset.images import open_labels
from dataset.raw import Job, Labels, RawTree, unique_by
from dataset.spec import Box, DatasetSpec
from dataset.splits import PERCENTS, Splits, assemble, crop_line, list_texts, shuffled
from util.catalog import IGNORE_INDEX, LOVEDA
from util.errors import DataError


def find(tree: RawTree) -> list[Job]:
    """{Train,Val}/{Urban,Rural}/images_png/<id>.png with masks_png/<id>.png beside (Test has no masks)."""
    jobs = []
    for image in tree.matching("*.png"):
        folder = image.parent
        domain, part = folder.parent.name.lower(), folder.parent.parent.name.lower()
        if folder.name != "images_png" or domain not in ("urban", "rural") or part not in ("train", "val"):
            continue
        name = f"{part}_{domain}_{image.stem}"
        group = f"train_{domain}" if part == "train" else "val"
        jobs.append(Job(image, folder.parent / "masks_png" / image.name, name, group, part))
    if not jobs:
        raise DataError(f"no LoveDA images under {tree.root} (expected {{Train,Val}}/{{Urban,Rural}}/images_png/*.png)"
                        f"{tree.hint()}")
    by_name = unique_by([j.image for j in jobs], lambda p: f"{p.parent.parent.parent.name.lower()}_"
                        f"{p.parent.parent.name.lower()}_{p.stem}")
    return [j for j in jobs if by_name[j.name] == j.image]


def read_labels(path: Path) -> Image.Image:
    """A raw LoveDA mask: single-channel values 0..7."""
    return Image.fromarray(open_labels(path))


def loveda_labels(raw: np.ndarray, rule: str | None = None) -> Labels:
    """LoveDA raw 1..7 -> 0..6 and no-data 0 -> 255 (mmseg's reduce_zero_label)."""
    if raw.max(initial=0) > 7:
        raise ValueError(f"mask value {int(raw.max())} outside the LoveDA range 0..7")
    return Labels(np.where(raw == 0, IGNORE_INDEX, raw.astype(np.int16) - 1).astype(np.uint8), 0)


def quadrants(height: int, width: int, tile: int) -> list[Box]:
    """The four quadrants TL, TR, BL, BR, whatever `tile`."""
    h, w = height // 2, width // 2
    return [(0, 0, h, w), (0, w, h, w), (h, 0, h, w), (h, w, h, w)]


def loveda_splits(train_rural: Iterable[str], train_urban: Iterable[str], val_quadrants: Iterable[str],
                  seed: int) -> Splits:
    """LoveDA: labelled per domain then merged; the official Val quadrants shuffled and halved into val/test."""
    rng = random.Random(seed)
    groups = {"rural": shuffled(train_rural, rng), "urban": shuffled(train_urban, rng)}
    official_val = shuffled(val_quadrants, rng)
    half = len(official_val) // 2
    return assemble(groups, official_val[:half], official_val[half:], PERCENTS)


def split_lists(crops: Mapping[str, list[str]], seed: int) -> Splits:
    """The lists of the crops by split group ('train_rural', 'train_urban', 'val', as `find` groups them)."""
    return loveda_splits(crops.get("train_rural", []), crops.get("train_urban", []), crops.get("val", []), seed)


# LoveDA's image ids are contiguous integers per folder. Train: Rural 0-1365, Urban 1366-2521 (the dataset's
# own counts, 1,366 + 1,156). Val: Rural 2522-3513, Urban 3514-4190 (992 + 677 images; rural before urban as
# in Train, consistent with every Val path seen in public code). If a download disagrees, prepare reports the
# first missing tile and `--resplit` makes lists from the files present.
LOVEDA_IDS = {("train", "rural"): range(0, 1366), ("train", "urban"): range(1366, 2522),
              ("val", "rural"): range(2522, 3514), ("val", "urban"): range(3514, 4191)}


def loveda_crop_names(ids: Mapping[tuple[str, str], range] = LOVEDA_IDS) -> dict[str, list[str]]:
    """LoveDA's quadrant names per split group ('train_rural', 'train_urban', 'val'), as dataset.prepare names them."""
    groups: dict[str, list[str]] = {"train_rural": [], "train_urban": [], "val": []}
    for (part, domain), id_range in ids.items():
        group = f"train_{domain}" if part == "train" else "val"
        groups[group] += [f"{part}_{domain}_{i}_{q}" for i in id_range for q in range(1, 5)]
    return groups


def loveda_published_splits(seed: int = 0) -> Splits:
    """The LoveDA lists shipped in splits/loveda: the seeded procedure over the official file names alone."""
    return split_lists(loveda_crop_names(), seed)


def shipped_lists(reference: Path) -> dict[str, str]:
    """splits/loveda from the official file names (no lists were published: `reference` is not read)."""
    # A crop's folder under --out is its official split, the first part of its name.
    return list_texts(loveda_published_splits(), lambda crop: crop_line(crop.split("_")[0], crop))


SPEC = DatasetSpec(info=LOVEDA, find=find, read_labels=read_labels, convert=loveda_labels, crops=quadrants,
                   split_lists=split_lists, shipped_lists=shipped_lists, folders=("train", "val"), tiled=False,
                   cutting="each image is cut into its four quadrants")
