"""Raw downloads: what every dataset's finder and label rule work with (each dataset's own: dataset/spec.py).

Raw files are found anywhere under --raw, following symbolic links to folders (each real folder once, so a
link loop ends), so nested archive layouts (2_Ortho_RGB/2_Ortho_RGB/...) and linked folders work. Labels
become class indices, 255 = ignore; `palette_labels` converts label images that hold colours.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from util.catalog import IGNORE_INDEX
from util.errors import DataError


@dataclass(frozen=True)
class Job:
    """One raw image: its label file, the prefix of its crop names, its split group and output folder."""

    image: Path
    mask: Path | None
    name: str
    group: str
    # Crops go to <out>/<folder>/{images,masks}/ (LoveDA keeps its official train/val folders).
    folder: str = ""


# ---------------------------------------------------------------------------------------------------------
# Finding raw files


def unique_by(paths: list[Path], key: Callable[[Path], str]) -> dict[str, Path]:
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
    """Class indices of one crop, the pixels remapped or ignored by the conversion, and the impure ones (where
    the dataset has label rules for colours that are not exactly a class's)."""

    labels: np.ndarray
    remapped: int
    impure: int = 0


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
