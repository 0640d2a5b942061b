"""The dataset of every split: labelled and unlabelled training crops, and full validation/test tiles.

A split file lists one sample per line, `<image> <mask>` relative to cfg.dataset.root (unlabelled lines
may hold only the image). It is UTF-8 text (a byte-order mark and CRLF line ends are fine); an image may be
listed once per file, and in one of the labelled / unlabelled / val / test lists only (`check_disjoint`); an
image is the file its path resolves to, so `a.png`, `./a.png`, `/abs/root/a.png` and a symbolic link to it are
one image.
Problems with a list are found when the dataset is built; problems inside an image or mask when it is read.
Both raise DataError naming the file (and the split line).

Images of any mode PIL opens become 8-bit RGB exactly (palette applied, alpha dropped, CMYK and the like
converted, 16-bit data only where 8 bits hold it exactly) or are refused naming the file and the mode; masks
are single-channel class indices (mode L or P, or 16-bit with every value below 256). See dataset.images's
`rgb_array` and `open_labels`, which read the raw downloads the same way.

Items, by mode (images ImageNet-normalised float32 (3, H, W), masks int64 (H, W), 255 = ignore):
- val, test: {img, mask, name} - the whole tile, name its file stem;
- train_l: {img, mask} - a weakly augmented crop;
- train_u: {img_w, img_s, ignore_mask, cutmix_box} - the weak crop, `n_strong` strong views of it
  (n_strong, 3, H, W), UNLABELED_PAD where the crop is padding (else 0), and one CutMix box per strong view
  (n_strong, H, W).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from dataset.images import open_labels, rgb_array
from dataset.splits import read_list
from dataset.transforms import cutmix_box, normalize, strong_augment, weak_augment
from util.catalog import IGNORE_INDEX, UNLABELED_PAD
from util.config import Config
from util.errors import DataError

Mode = Literal["train_l", "train_u", "val", "test"]
MODES = ("train_l", "train_u", "val", "test")


def tile_key(root: str | os.PathLike, field: str) -> str:
    """The file a split-list path names: `field` under `root` (an absolute one as it is), links resolved."""
    return os.path.realpath(os.path.join(root, field))


def _as(where: str, spelled: str, field: str) -> str:
    """' (<where> has it as <spelled>)' where the first listing wrote the image another way, else ''."""
    return f" ({where} has it as {spelled})" if spelled != field else ""


def read_split(split_file: str | os.PathLike, root: str | os.PathLike,
               needs_mask: bool) -> list[tuple[Path, Path | None]]:
    """Parse a split list into (image, mask) paths under `root`, checking that every file exists once."""
    split_file = Path(split_file)
    lines = read_list(split_file)
    root = Path(root)
    samples: list[tuple[Path, Path | None]] = []
    first_line: dict[str, tuple[int, str]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) > 2 or (needs_mask and len(fields) != 2):
            expected = "'<image> <mask>'" if needs_mask else "'<image>' or '<image> <mask>'"
            raise DataError(f"{split_file}:{number}: expected {expected}, got {line.strip()!r}")
        key = tile_key(root, fields[0])
        if key in first_line:
            # Twice in one list weights that image double (and in val/test counts it twice): a mistake.
            first, spelled = first_line[key]
            raise DataError(f"{split_file}:{number}: {fields[0]} is listed twice, on lines {first} and {number}"
                            f"{_as(f'line {first}', spelled, fields[0])}; each image may appear once")
        first_line[key] = number, fields[0]
        image = root / fields[0]
        mask = root / fields[1] if needs_mask else None
        for kind, path in (("image", image), ("mask", mask)):
            if path is not None and not path.is_file():
                what = "is a folder, not a file" if path.is_dir() else "file not found"
                raise DataError(f"{split_file}:{number}: {kind} {what}: {path}")
        samples.append((image, mask))
    if not samples:
        raise DataError(f"split file is empty: {split_file}")
    return samples


def check_disjoint(split_files: Iterable[str | os.PathLike], root: str | os.PathLike) -> None:
    """DataError if one image is listed in two of the given split lists (labelled, unlabelled, val, test).

    An image both labelled and unlabelled, or trained on and scored, makes every number of the run wrong.
    Lists that do not exist are skipped (test.txt is optional while training); images are compared by the file
    their paths resolve to (`tile_key`). The error names the image and both files with their line numbers.
    """
    seen: dict[str, tuple[Path, int, str]] = {}
    for split_file in split_files:
        split_file = Path(split_file)
        if not split_file.exists():
            continue
        for number, line in enumerate(read_list(split_file), start=1):
            fields = line.split()
            if not fields:
                continue
            first = seen.setdefault(tile_key(root, fields[0]), (split_file, number, fields[0]))
            if first[0] != split_file:
                raise DataError(f"{fields[0]} is listed in both {first[0]}:{first[1]} and {split_file}:{number}; "
                                f"labelled, unlabelled, val and test lists must not share images"
                                f"{_as(f'{first[0]}:{first[1]}', first[2], fields[0])}")


def read_image(path: Path) -> torch.Tensor:
    """An image file as 8-bit RGB uint8 (3, H, W); DataError naming the file if it cannot be read exactly."""
    return torch.from_numpy(rgb_array(path)).permute(2, 0, 1).contiguous()


def read_mask(path: Path, size: tuple[int, int], nclass: int) -> torch.Tensor:
    """A single-channel label image as uint8 (H, W), checked against the image size and the class range."""
    array = open_labels(path)
    if array.shape != size:
        raise DataError(f"mask {path} is {array.shape[1]}x{array.shape[0]} but its image is {size[1]}x{size[0]}")
    bad = (array >= nclass) & (array != IGNORE_INDEX)
    if bad.any():
        raise DataError(f"mask {path} holds value {int(array[bad][0])}, outside [0, {nclass}) and not "
                        f"{IGNORE_INDEX} (ignore)")
    return torch.from_numpy(array)


def index_seed(seed: int, index: int) -> int:
    """The sample seed used when an item is requested by a plain index instead of (index, seed)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class SemiDataset(Dataset):
    """Samples of one split file in one mode (see the module docstring for the item keys)."""

    def __init__(self, cfg: Config, mode: Mode, split_file: str | os.PathLike, n_strong: int = 1) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if n_strong < 1:
            raise ValueError(f"n_strong must be >= 1, not {n_strong}")
        self.mode, self.n_strong = mode, n_strong
        self.crop_size, self.nclass = cfg.dataset.crop_size, cfg.dataset.nclass
        self.augment, self.seed = cfg.augment, cfg.train.seed
        self.split_file = Path(split_file)
        try:
            self.samples = read_split(self.split_file, cfg.dataset.root, needs_mask=mode != "train_u")
        except DataError as e:
            # Tiles not found where dataset.root's default now points may still be where it pointed before.
            raise DataError(f"{e}{cfg.dataset.moved_root_hint()}") from None

    def __len__(self) -> int:
        return len(self.samples)

    def _labels(self, mask_path: Path | None, image_path: Path, size: tuple[int, int]) -> torch.Tensor:
        if mask_path is None:  # read_split already demands a mask for every mode but train_u
            raise DataError(f"{self.split_file}: {image_path} has no mask, which the {self.mode} split needs")
        return read_mask(mask_path, size, self.nclass)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, sample_seed = item if isinstance(item, tuple) else (item, index_seed(self.seed, item))
        image_path, mask_path = self.samples[index]
        img = read_image(image_path)
        size = (img.shape[1], img.shape[2])
        if self.mode in ("val", "test"):
            mask = self._labels(mask_path, image_path, size)
            return {"img": normalize(img), "mask": mask.long(), "name": image_path.stem}

        g = torch.Generator().manual_seed(sample_seed)
        if self.mode == "train_l":
            mask = self._labels(mask_path, image_path, size)
            img, mask = weak_augment(img, mask, self.crop_size, self.augment, g, mask_pad=IGNORE_INDEX)
            return {"img": normalize(img), "mask": mask.long()}

        ignore = torch.zeros(size, dtype=torch.uint8)
        img, ignore = weak_augment(img, ignore, self.crop_size, self.augment, g, mask_pad=UNLABELED_PAD)
        strong, boxes = [], []
        for _ in range(self.n_strong):
            strong.append(normalize(strong_augment(img, self.augment, g)))
            boxes.append(cutmix_box(self.crop_size, self.augment, g))
        return {"img_w": normalize(img), "img_s": torch.stack(strong), "ignore_mask": ignore.long(),
                "cutmix_box": torch.stack(boxes)}
