"""Raw downloads: finding each dataset's image and label files under --raw, and converting its labels.

Raw files are found anywhere under --raw, following symbolic links to folders (each real folder once, so a
link loop ends), so nested archive layouts (2_Ortho_RGB/2_Ortho_RGB/...) and linked folders work.

Labels become class indices, 255 = ignore. LoveDA: raw 1..7 -> 0..6, no-data 0 -> 255. Potsdam: the six
ISPRS colours; any other colour goes to the nearest one and is counted. DeepGlobe: the seven colours, and a
pixel whose colour is not exactly one of them is impure (counted) and converted by a label rule: `threshold`
(ours, the dataset's own note) sets each channel on or off at 128 and matches again, what still matches no
class is ignored (255); `authors` (the published code) sends every impure pixel to class 0 (urban).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from dataset.images import open_labels, open_rgb
from util.catalog import DATASETS, IGNORE_INDEX
from util.errors import DataError

LABEL_RULES = ("threshold", "authors")
DEFAULT_LABEL_RULE = "threshold"


@dataclass(frozen=True)
class Job:
    """One raw image: its label file, the prefix of its crop names, its split group and output folder."""

    dataset: str
    image: Path
    mask: Path | None
    name: str
    group: str
    # Crops go to <out>/<folder>/{images,masks}/: LoveDA keeps its official train/val folders.
    folder: str = ""


# ---------------------------------------------------------------------------------------------------------
# Finding raw files


def _unique(paths: list[Path], key: Callable[[Path], str]) -> dict[str, Path]:
    """`paths` by `key`; a DataError naming both copies where two files share one."""
    found: dict[str, Path] = {}
    for path in sorted(paths):
        k = key(path)
        if k in found:
            raise DataError(f"raw file {path.name} appears twice: {found[k]} and {path}; keep one copy")
        found[k] = path
    return found


@dataclass
class RawTree:
    """Every file under --raw (symbolic links to folders followed), and the folders that could not be listed."""

    root: Path
    files: list[Path]
    unreadable: list[str] = field(default_factory=list)

    def matching(self, pattern: str) -> list[Path]:
        """The files whose name matches the glob `pattern`."""
        return [path for path in self.files if fnmatch.fnmatchcase(path.name, pattern)]

    def hint(self) -> str:
        """For a 'nothing found' error: the folders that could not be read, which may hold what is missing."""
        if not self.unreadable:
            return ""
        return f"; {len(self.unreadable)} folder(s) could not be read, first {self.unreadable[0]}"


def walk_raw(raw: Path, skip: tuple[Path, ...] = ()) -> RawTree:
    """The files under `raw`, symbolic links to folders followed, each real folder once, `skip` folders left out."""
    # Path.rglob does not follow links (Python 3.11): a download linked in from another disk would be missed.
    # A link back to an ancestor (a loop) or a second link to a folder already walked is not entered again.
    seen = {os.path.realpath(folder) for folder in skip}
    tree = RawTree(raw, [])

    def unreadable(error: OSError) -> None:
        tree.unreadable.append(f"{error.filename} ({error.strerror or error})")

    for top, dirs, names in os.walk(raw, followlinks=True, onerror=unreadable):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        tree.files += [Path(top, name) for name in names]
    tree.files.sort()
    return tree


def find_loveda(tree: RawTree) -> list[Job]:
    """{Train,Val}/{Urban,Rural}/images_png/<id>.png with masks_png/<id>.png beside (Test has no masks)."""
    jobs = []
    for image in tree.matching("*.png"):
        folder = image.parent
        domain, split = folder.parent.name.lower(), folder.parent.parent.name.lower()
        if folder.name != "images_png" or domain not in ("urban", "rural") or split not in ("train", "val"):
            continue
        name = f"{split}_{domain}_{image.stem}"
        group = f"train_{domain}" if split == "train" else "val"
        jobs.append(Job("loveda", image, folder.parent / "masks_png" / image.name, name, group, split))
    if not jobs:
        raise DataError(f"no LoveDA images under {tree.root} (expected {{Train,Val}}/{{Urban,Rural}}/images_png/*.png)"
                        f"{tree.hint()}")
    by_name = _unique([j.image for j in jobs], lambda p: f"{p.parent.parent.parent.name.lower()}_"
                      f"{p.parent.parent.name.lower()}_{p.stem}")
    return [j for j in jobs if by_name[j.name] == j.image]


def find_potsdam(tree: RawTree) -> list[Job]:
    """top_potsdam_<r>_<c>_RGB.tif (2_Ortho_RGB) and top_potsdam_<r>_<c>_label.tif (5_Labels_all)."""
    images = _unique(tree.matching("top_potsdam_*_RGB.tif"), lambda p: p.name.removesuffix("_RGB.tif"))
    labels = _unique(tree.matching("top_potsdam_*_label.tif"), lambda p: p.name.removesuffix("_label.tif"))
    if not images:
        raise DataError(f"no Potsdam tiles under {tree.root} (expected 2_Ortho_RGB/top_potsdam_<r>_<c>_RGB.tif)"
                        f"{tree.hint()}")
    return [Job("potsdam", path, labels.get(stem), stem, "all") for stem, path in images.items()]


def find_deepglobe(tree: RawTree) -> list[Job]:
    """<id>_sat.jpg with <id>_mask.png beside it; satellite images without a mask (valid/test) are left out."""
    images = _unique(tree.matching("*_sat.jpg"), lambda p: p.name.removesuffix("_sat.jpg"))
    jobs = [Job("deepglobe", path, path.with_name(f"{stem}_mask.png"), stem, "all")
            for stem, path in images.items() if path.with_name(f"{stem}_mask.png").is_file()]
    if not jobs:
        raise DataError(f"no DeepGlobe image/mask pairs under {tree.root} (expected <id>_sat.jpg and <id>_mask.png)"
                        f"{tree.hint()}")
    return jobs


FINDERS = {"loveda": find_loveda, "potsdam": find_potsdam, "deepglobe": find_deepglobe}


def source_stamp(job: Job) -> list[int | None]:
    """Size and modification time of the raw image and its label file: what tiles cut from them depend on."""
    stamp: list[int | None] = []
    for path in (job.image, job.mask):
        try:
            st = os.stat(path) if path is not None else None
        except OSError:
            st = None
        stamp += [st.st_size, st.st_mtime_ns] if st is not None else [None, None]
    return stamp


# ---------------------------------------------------------------------------------------------------------
# Label conversion


class Labels(NamedTuple):
    """Class indices of one crop, the pixels remapped or ignored by the conversion, and (DeepGlobe) impure ones."""

    labels: np.ndarray
    remapped: int
    impure: int = 0


def open_mask(job: Job) -> Image.Image:
    """The raw label image: single-channel for LoveDA, RGB colours for Potsdam and DeepGlobe."""
    if job.mask is None or not job.mask.is_file():
        raise ValueError(f"label file not found for {job.image}")
    if job.dataset != "loveda":
        return open_rgb(job.mask)
    return Image.fromarray(open_labels(job.mask))


def loveda_labels(raw: np.ndarray) -> Labels:
    """LoveDA raw 1..7 -> 0..6 and no-data 0 -> 255 (mmseg's reduce_zero_label)."""
    if raw.max(initial=0) > 7:
        raise ValueError(f"mask value {int(raw.max())} outside the LoveDA range 0..7")
    return Labels(np.where(raw == 0, IGNORE_INDEX, raw.astype(np.int16) - 1).astype(np.uint8), 0)


def palette_labels(rgb: np.ndarray, palette: tuple[tuple[int, int, int], ...],
                   nearest: bool) -> tuple[np.ndarray, int]:
    """Colour -> class index; off-palette pixels go to the nearest colour or to 255. Returns them counted."""
    key = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    labels = np.full(key.shape, IGNORE_INDEX, np.uint8)
    for index, (r, g, b) in enumerate(palette):
        labels[key == (r << 16 | g << 8 | b)] = index
    off = labels == IGNORE_INDEX
    count = int(off.sum())
    if count and nearest:
        distance = ((rgb[off][:, None, :].astype(np.int32) - np.array(palette)[None]) ** 2).sum(-1)
        labels[off] = distance.argmin(1)
    return labels, count


def deepglobe_labels(rgb: np.ndarray, rule: str) -> Labels:
    """DeepGlobe colours -> classes: exact matches, then the impure pixels by `rule` (see the module docstring)."""
    palette = DATASETS["deepglobe"].palette
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


def convert_labels(dataset: str, raw: np.ndarray, rule: str = DEFAULT_LABEL_RULE) -> Labels:
    """Raw label crop -> class indices, with the pixels remapped (Potsdam) or unmatched (DeepGlobe) counted."""
    if dataset == "loveda":
        return loveda_labels(raw)
    if dataset == "potsdam":
        return Labels(*palette_labels(raw, DATASETS["potsdam"].palette, nearest=True))
    return deepglobe_labels(raw, rule)
