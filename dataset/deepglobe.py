"""DeepGlobe Land Cover (Demir et al., CVPR Workshops 2018): 803 satellite images of 2448 px with RGB masks.

Raw files: <id>_sat.jpg with <id>_mask.png beside it; satellite images without a mask (the valid and test
parts) are left out. Each is cut into a grid of --tile crops (512 px: 5 x 5), numbered from 1 row by row, the
bottom and right edges padded. Labels: the seven colours, and a pixel whose colour is not exactly one of them
is impure (counted per crop) and converted by a label rule: `threshold` (ours, the dataset's own note) sets
each channel on or off at 128 and matches again, what still matches no class is ignored (255); `authors` (the
published code) sends every impure pixel to class 0 (urban). Lists: one shuffle, 60/20/20 train/val/test, and a
100 % share (no unlabelled tiles); the shipped ones are the authors' published lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dataset.images import open_rgb
from dataset.raw import Job, Labels, RawTree, palette_labels, unique_by
from dataset.spec import DatasetSpec, grid
from dataset.splits import PERCENTS, Splits, published_texts, ratio_splits
from util.catalog import DEEPGLOBE, IGNORE_INDEX
from util.errors import DataError

# The default first.
LABEL_RULES = ("threshold", "authors")


def find(tree: RawTree) -> list[Job]:
    """<id>_sat.jpg with <id>_mask.png beside it; satellite images without a mask (valid/test) are left out."""
    images = unique_by(tree.matching("*_sat.jpg"), lambda p: p.name.removesuffix("_sat.jpg"))
    jobs = [Job(path, path.with_name(f"{stem}_mask.png"), stem, "all")
            for stem, path in images.items() if path.with_name(f"{stem}_mask.png").is_file()]
    if not jobs:
        raise DataError(f"no DeepGlobe image/mask pairs under {tree.root} (expected <id>_sat.jpg and <id>_mask.png)"
                        f"{tree.hint()}")
    return jobs


def deepglobe_labels(rgb: np.ndarray, rule: str | None = LABEL_RULES[0]) -> Labels:
    """DeepGlobe colours -> classes: exact matches, then the impure pixels by `rule` (see the module docstring)."""
    palette = DEEPGLOBE.palette
    labels, impure = palette_labels(rgb, palette, nearest=False)
    if not impure:
        return Labels(labels, 0, 0)
    off = labels == IGNORE_INDEX
    if rule == "authors":
        labels[off] = 0
        return Labels(labels, impure, impure)
    # Thresholding leaves the exact palette colours (channels 0 or 255) as they are: only impure pixels change.
    snapped = np.where(rgb[off] >= 128, 255, 0).astype(np.uint8)[None]
    matched, unmatched = palette_labels(snapped, palette, nearest=False)
    labels[off] = matched[0]
    return Labels(labels, unmatched, impure)


def deepglobe_splits(crops: Iterable[str], seed: int) -> Splits:
    """DeepGlobe crops: 12,045 / 4,015 / 4,015; labelled 120 / 602 / 1,204 and 100 % (no unlabelled)."""
    return ratio_splits(crops, seed, PERCENTS + ("100",))


def split_lists(crops: Mapping[str, list[str]], seed: int) -> Splits:
    """The lists of the crops of every raw image (one split group, 'all')."""
    return deepglobe_splits(crops.get("all", []), seed)


def reference_name(image_path: str) -> str:
    """'data_cropped/100694_sat_3.jpg' of the published lists -> '100694_3' (crops numbered alike)."""
    stem = Path(image_path).stem
    if "_sat_" in stem:
        image_id, _, k = stem.rpartition("_sat_")
        return f"{image_id}_{k}"
    raise ValueError(f"{image_path}: not a deepglobe tile name of the published lists")


def shipped_lists(reference: Path) -> dict[str, str]:
    """splits/deepglobe from the authors' published lists in <reference>/deepglobe."""
    return published_texts(reference / "deepglobe", reference_name)


def conversion_note(summary: Mapping[str, Any]) -> str | None:
    """The impure pixels, and what the run's label rule made of them, where there were any."""
    if not summary["impure_pixels"]:
        return None
    rule = summary["label_rule"]
    what = "sent to class 0 (urban)" if rule == "authors" else "matched no colour after thresholding at 128"
    return (f"{summary['impure_pixels']:,d} px in {len(summary['impure_pixels_per_tile']):,d} tiles had colours "
            f"not exactly one of the seven (--label-rule {rule}: {summary['remapped_pixels']:,d} px "
            f"{what}{'' if rule == 'authors' else ', set to ignore'})")


SPEC = DatasetSpec(info=DEEPGLOBE, find=find, read_labels=open_rgb, convert=deepglobe_labels, crops=grid,
                   split_lists=split_lists, shipped_lists=shipped_lists, reference_name=reference_name,
                   label_rules=LABEL_RULES,
                   label_rule_help="colours not exactly one of the seven are thresholded at 128 per channel, "
                                   "ignored if still unmatched (threshold, the default), or set to urban (authors)",
                   conversion_note=conversion_note)
