"""ISPRS Potsdam (2D Semantic Labeling Contest): 38 true orthophotos of 6000 px with RGB label images.

Raw files: top_potsdam_<r>_<c>_RGB.tif (from 2_Ortho_RGB) and top_potsdam_<r>_<c>_label.tif (from
5_Labels_all). Each is cut into a grid of --tile crops (512 px: 12 x 12), numbered from 1 row by row, the
bottom and right edges padded. Labels: the six ISPRS colours; any other colour goes to the nearest one and is
counted. Lists: one shuffle, 60/20/20 train/val/test; the shipped ones are the authors' published lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dataset.images import open_rgb
from dataset.raw import Job, Labels, RawTree, palette_labels, unique_by
from dataset.spec import DatasetSpec, grid
from dataset.splits import Splits, published_texts, ratio_splits
from util.catalog import POTSDAM
from util.errors import DataError


def find(tree: RawTree) -> list[Job]:
    """top_potsdam_<r>_<c>_RGB.tif (2_Ortho_RGB) and top_potsdam_<r>_<c>_label.tif (5_Labels_all)."""
    images = unique_by(tree.matching("top_potsdam_*_RGB.tif"), lambda p: p.name.removesuffix("_RGB.tif"))
    labels = unique_by(tree.matching("top_potsdam_*_label.tif"), lambda p: p.name.removesuffix("_label.tif"))
    if not images:
        raise DataError(f"no Potsdam tiles under {tree.root} (expected 2_Ortho_RGB/top_potsdam_<r>_<c>_RGB.tif)"
                        f"{tree.hint()}")
    return [Job(path, labels.get(stem), stem, "all") for stem, path in images.items()]


def potsdam_labels(rgb: np.ndarray, rule: str | None = None) -> Labels:
    """The six ISPRS colours -> classes; any other colour -> the nearest one, counted as remapped."""
    return Labels(*palette_labels(rgb, POTSDAM.palette, nearest=True))


def potsdam_splits(crops: Iterable[str], seed: int) -> Splits:
    """ISPRS Potsdam crops: 3,283 / 1,094 / 1,095 on the full data; labelled 32 / 164 / 328."""
    return ratio_splits(crops, seed)


def split_lists(crops: Mapping[str, list[str]], seed: int) -> Splits:
    """The lists of the crops of every raw image (one split group, 'all')."""
    return potsdam_splits(crops.get("all", []), seed)


def reference_name(image_path: str) -> str:
    """'image/top_potsdam_2_10_7_RGB.tif' of the published lists -> 'top_potsdam_2_10_7' (crops numbered alike)."""
    stem = Path(image_path).stem
    if stem.startswith("top_potsdam_") and stem.endswith("_RGB"):
        return stem.removesuffix("_RGB")
    raise ValueError(f"{image_path}: not a potsdam tile name of the published lists")


def shipped_lists(reference: Path) -> dict[str, str]:
    """splits/potsdam from the authors' published lists in <reference>/potsdam."""
    return published_texts(reference / "potsdam", reference_name)


def conversion_note(summary: Mapping[str, Any]) -> str | None:
    """The off-palette pixels mapped to the nearest colour, where there were any."""
    if not summary["remapped_pixels"]:
        return None
    return f"{summary['remapped_pixels']:,d} px had colours outside the palette (mapped to the nearest)"


SPEC = DatasetSpec(info=POTSDAM, find=find, read_labels=open_rgb, convert=potsdam_labels, crops=grid,
                   split_lists=split_lists, shipped_lists=shipped_lists, reference_name=reference_name,
                   conversion_note=conversion_note)
