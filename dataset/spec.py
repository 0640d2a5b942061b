"""A dataset as one spec: its catalogue entry and the rules that turn its raw download into tiles and lists.

Each dataset is one module beside this one (dataset/loveda.py, potsdam.py, deepglobe.py) that defines one frozen
`DatasetSpec`, listed by one line of dataset/registry.py. What a dataset is lives in that module alone: how its
raw files are found and named, how its label images become class indices, where a raw image's crops lie, and
how its crops are split into labelled, unlabelled, val and test lists. Nothing else branches on a dataset's name.

The spec's catalogue entry (`info`: classes, palette, classes not scored, resolution) is pure data and stays in
util/catalog.py, where the spec takes it from: the layers below dataset/ read it too (util/config.py validates
class indices against it, the model sizes its head by it, eval/ names and colours the classes) and may not
import dataset/ (tests/test_layers.py). A catalogue entry without a spec is a dataset of your own tiles and
lists: training, evaluation and prediction need only the entry; a spec is what `dataset.prepare` needs to cut
a raw download. Adding a dataset: its entry in util/catalog.py, its module here, its line in the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dataset.raw import Job, Labels, RawTree
from dataset.splits import Splits
from util.catalog import DatasetInfo

# A crop: (top, left, height, width) in the raw image; parts beyond the raster are padded.
Box = tuple[int, int, int, int]


def grid(height: int, width: int, tile: int) -> list[Box]:
    """A row-major grid of `tile` x `tile` crops covering the raster (the last row and column padded)."""
    return [(top, left, tile, tile) for top in range(0, height, tile) for left in range(0, width, tile)]


def no_note(summary: Mapping[str, Any]) -> str | None:
    """The `conversion_note` of a dataset whose labels convert one to one: nothing to say."""
    return None


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset's catalogue entry and rules (see the module docstring); every rule is a plain function."""

    info: DatasetInfo
    # The raw images under --raw (an error naming what was expected where there are none): each with its
    # label file, the name its crops are numbered after, its split group (what `split_lists` receives crops by) and
    # the folder under --out its crops go to.
    find: Callable[[RawTree], list[Job]]
    # The raw label image as PIL reads it (single-channel class values, or RGB colours), and a crop of it as
    # an array -> class indices (255 = ignore) with the pixels converted otherwise than one to one counted;
    # the second argument is the label rule (None where the dataset has no choice of rule).
    read_labels: Callable[[Path], Image.Image]
    convert: Callable[[np.ndarray, str | None], Labels]
    # (height, width, tile) of a raw image -> its crops, numbered from 1 in this order.
    crops: Callable[[int, int, int], list[Box]]
    # {split group: crop names}, seed -> the split lists (dataset/splits.py's procedure; docs/method.md §4).
    split_lists: Callable[[Mapping[str, list[str]], int], Splits]
    # The texts of the lists shipped in splits/<name>, keyed by path there ('val.txt', '1/labeled.txt'), made
    # again from the authors' published lists under <reference>/<name> (or, without those, from the rule
    # alone); None: no lists are shipped (prepare then needs --resplit --lists DIR).
    shipped_lists: Callable[[Path], dict[str, str]] | None = None
    # The folders under --out that `find` sends crops to (Job.folder): '' is --out itself.
    folders: tuple[str, ...] = ("",)
    # A tile name of the authors' published lists -> the crop name prepare gives it; None: none were published.
    reference_name: Callable[[str], str] | None = None
    # True: `crops` is a grid of --tile crops. False: it takes no --tile, and every raw image gives as many crops
    # whatever its size (a run plans their names without reading the images); `cutting` says how, in words.
    tiled: bool = True
    cutting: str = "a grid of --tile crops"
    # The choices of --label-rule, the default first, for labels whose impure colours a rule converts (their
    # pixels are then counted per crop: Labels.impure); empty: no choice. `label_rule_help` explains them.
    label_rules: tuple[str, ...] = ()
    label_rule_help: str = ""
    # A line for the printed summary about the pixels converted otherwise than one to one (None: nothing).
    conversion_note: Callable[[Mapping[str, Any]], str | None] = no_note

    @property
    def name(self) -> str:
        return self.info.name

    def label_rule(self, asked: str | None) -> str | None:
        """The rule a run converts labels by: `asked`, or the default where None; None where there is no choice."""
        if not self.label_rules:
            return None
        return asked or self.label_rules[0]

    def open_mask(self, job: Job) -> Image.Image:
        """`job`'s raw label image (`read_labels`); ValueError where it has none."""
        if job.mask is None or not job.mask.is_file():
            raise ValueError(f"label file not found for {job.image}")
        return self.read_labels(job.mask)

    def crop_count(self, tile: int) -> int | None:
        """How many crops every raw image gives, where that does not depend on its size (not `tiled`)."""
        return None if self.tiled else len(self.crops(0, 0, tile))
