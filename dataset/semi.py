"""The dataset of every split: labelled and unlabelled training crops, and full validation/test tiles.

A split file lists one sample per line, `<image> <mask>` relative to cfg.dataset.root (unlabelled lines
may hold only the image). Problems with the list are found when the dataset is built; problems inside an
image or mask when it is read. Both raise DataError naming the file (and the split line).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dataset.info import IGNORE_INDEX, UNLABELED_PAD
from dataset.transforms import cutmix_box, normalize, strong_augment, weak_augment
from util.config import Config
from util.errors import DataError

Mode = Literal["train_l", "train_u", "val", "test"]
MODES = ("train_l", "train_u", "val", "test")


def read_split(split_file: str | os.PathLike, root: str | os.PathLike,
               needs_mask: bool) -> list[tuple[Path, Path | None]]:
    """Parse a split list into (image, mask) paths under `root`, checking that every file exists."""
    split_file = Path(split_file)
    if not split_file.is_file():
        raise DataError(f"split file not found: {split_file}")
    try:
        lines = split_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read split file {split_file}: {e}") from None
    root = Path(root)
    samples: list[tuple[Path, Path | None]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) > 2 or (needs_mask and len(fields) != 2):
            expected = "'<image> <mask>'" if needs_mask else "'<image>' or '<image> <mask>'"
            raise DataError(f"{split_file}:{number}: expected {expected}, got {line.strip()!r}")
        image = root / fields[0]
        mask = root / fields[1] if needs_mask else None
        for kind, path in (("image", image), ("mask", mask)):
            if path is not None and not path.is_file():
                raise DataError(f"{split_file}:{number}: {kind} file not found: {path}")
        samples.append((image, mask))
    if not samples:
        raise DataError(f"split file is empty: {split_file}")
    return samples


def read_image(path: Path) -> torch.Tensor:
    """An RGB image file as uint8 (3, H, W); DataError if it cannot be decoded."""
    try:
        with Image.open(path) as im:
            array = np.array(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def read_mask(path: Path, size: tuple[int, int], nclass: int) -> torch.Tensor:
    """A single-channel label PNG as uint8 (H, W), checked against the image size and the class range."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise DataError(f"mask {path} must be single-channel (mode L or P), not mode {im.mode}")
            array = np.array(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read mask {path}: {e}") from None
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
    """Samples of one split file in one mode (see the module docstring and CONTRACT.md for the item keys)."""

    def __init__(self, cfg: Config, mode: Mode, split_file: str | os.PathLike, n_strong: int = 1) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if n_strong < 1:
            raise ValueError(f"n_strong must be >= 1, not {n_strong}")
        self.mode, self.n_strong = mode, n_strong
        self.crop_size, self.nclass = cfg.dataset.crop_size, cfg.dataset.nclass
        self.augment, self.seed = cfg.augment, cfg.train.seed
        self.split_file = Path(split_file)
        self.samples = read_split(self.split_file, cfg.dataset.root, needs_mask=mode != "train_u")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, sample_seed = item if isinstance(item, tuple) else (item, index_seed(self.seed, item))
        image_path, mask_path = self.samples[index]
        img = read_image(image_path)
        size = (img.shape[1], img.shape[2])
        if self.mode in ("val", "test"):
            mask = read_mask(mask_path, size, self.nclass)
            return {"img": normalize(img), "mask": mask.long(), "name": image_path.stem}

        g = torch.Generator().manual_seed(sample_seed)
        if self.mode == "train_l":
            mask = read_mask(mask_path, size, self.nclass)
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
