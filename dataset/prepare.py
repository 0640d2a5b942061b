"""Turn a raw dataset download into 512-px PNG tiles and label maps, checked against the shipped split lists.

    python -m dataset.prepare loveda --raw /data/LoveDA [--out dataset/loveda]
    python -m dataset.prepare potsdam --raw /data/Potsdam [--workers 8]
    python -m dataset.prepare deepglobe --raw /data/DeepGlobe [--overwrite]
    python -m dataset.prepare potsdam --raw /data/Potsdam --resplit --seed 1 --splits my_splits/potsdam

Output: <out>/images/<name>.png (RGB) and <out>/masks/<name>.png (class index, 255 = ignore) - for LoveDA
under <out>/train/ and <out>/val/ after its official split - and <out>/prepare_summary.json. The split
lists ship with the code in splits/<dataset> (Potsdam and DeepGlobe: the authors' published lists, tile for
tile; LoveDA: seeded lists from the official file names); prepare checks that every tile they name was
written. `--resplit` instead writes new seeded lists of the tiles present into --splits (own data, other
seeds). Raw files are found anywhere under --raw, so nested archive
layouts (2_Ortho_RGB/2_Ortho_RGB/...) work. One worker handles one raw image at a time and cuts it crop by
crop, so memory stays bounded (peak 0.35 GB per worker on a 6000x6000 Potsdam tile). A re-run skips raw
images whose crops all exist; a raw image that fails is named in the summary and no split list is written.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from dataset.info import DATASETS, IGNORE_INDEX
from dataset.splits import (SHIPPED, Splits, crop_line, deepglobe_splits, loveda_splits, missing_tiles,
                            potsdam_splits, write_splits)
from util.cli import run_main
from util.errors import DataError

# Potsdam tiles hold 36 MP: below PIL's 89 MP guard, but other rasters users feed in may not be.
Image.MAX_IMAGE_PIXELS = None


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


@dataclass
class Result:
    """What one worker did with one raw image: its crops, counts, class histogram, or the error."""

    name: str
    group: str
    folder: str
    crops: list[str] = field(default_factory=list)
    written: int = 0
    skipped: int = 0
    error: str | None = None
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    remapped: int = 0


# ---------------------------------------------------------------------------------------------------------
# Finding raw files


def _unique(paths: list[Path], key: Callable[[Path], str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(paths):
        k = key(path)
        if k in found:
            raise DataError(f"raw file {path.name} appears twice: {found[k]} and {path}; keep one copy")
        found[k] = path
    return found


def find_loveda(raw: Path) -> list[Job]:
    """{Train,Val}/{Urban,Rural}/images_png/<id>.png with masks_png/<id>.png beside (Test has no masks)."""
    jobs = []
    for folder in sorted(raw.rglob("images_png")):
        domain, split = folder.parent.name.lower(), folder.parent.parent.name.lower()
        if domain not in ("urban", "rural") or split not in ("train", "val"):
            continue
        for image in sorted(folder.glob("*.png")):
            name = f"{split}_{domain}_{image.stem}"
            group = f"train_{domain}" if split == "train" else "val"
            jobs.append(Job("loveda", image, folder.parent / "masks_png" / image.name, name, group, split))
    if not jobs:
        raise DataError(f"no LoveDA images under {raw} (expected {{Train,Val}}/{{Urban,Rural}}/images_png/*.png)")
    by_name = _unique([j.image for j in jobs], lambda p: f"{p.parent.parent.parent.name.lower()}_"
                      f"{p.parent.parent.name.lower()}_{p.stem}")
    return [j for j in jobs if by_name[j.name] == j.image]


def find_potsdam(raw: Path) -> list[Job]:
    """top_potsdam_<r>_<c>_RGB.tif (2_Ortho_RGB) and top_potsdam_<r>_<c>_label.tif (5_Labels_all)."""
    images = _unique(list(raw.rglob("top_potsdam_*_RGB.tif")), lambda p: p.name.removesuffix("_RGB.tif"))
    labels = _unique(list(raw.rglob("top_potsdam_*_label.tif")), lambda p: p.name.removesuffix("_label.tif"))
    if not images:
        raise DataError(f"no Potsdam tiles under {raw} (expected 2_Ortho_RGB/top_potsdam_<r>_<c>_RGB.tif)")
    return [Job("potsdam", path, labels.get(stem), stem, "all") for stem, path in images.items()]


def find_deepglobe(raw: Path) -> list[Job]:
    """<id>_sat.jpg with <id>_mask.png beside it; satellite images without a mask (valid/test) are left out."""
    images = _unique(list(raw.rglob("*_sat.jpg")), lambda p: p.name.removesuffix("_sat.jpg"))
    jobs = [Job("deepglobe", path, path.with_name(f"{stem}_mask.png"), stem, "all")
            for stem, path in images.items() if path.with_name(f"{stem}_mask.png").is_file()]
    if not jobs:
        raise DataError(f"no DeepGlobe image/mask pairs under {raw} (expected <id>_sat.jpg and <id>_mask.png)")
    return jobs


FINDERS = {"loveda": find_loveda, "potsdam": find_potsdam, "deepglobe": find_deepglobe}


# ---------------------------------------------------------------------------------------------------------
# Reading and label conversion


def open_rgb(path: Path) -> Image.Image:
    """A decoded RGB image; OpenCV reads what PIL cannot (e.g. some TIFF compressions)."""
    try:
        im = Image.open(path)
        im.load()
        return im if im.mode == "RGB" else im.convert("RGB")
    except OSError as e:
        array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if array is None or array.dtype != np.uint8:
            raise ValueError(f"cannot read {path} as an 8-bit image ({e})") from None
        if array.ndim == 2:
            return Image.fromarray(array).convert("RGB")
        # OpenCV stores BGR(A).
        return Image.fromarray(cv2.cvtColor(array, cv2.COLOR_BGRA2RGB if array.shape[2] == 4 else cv2.COLOR_BGR2RGB))


def open_mask(job: Job) -> Image.Image:
    """The raw label image: single-channel for LoveDA, RGB colours for Potsdam and DeepGlobe."""
    if job.mask is None or not job.mask.is_file():
        raise ValueError(f"label file not found for {job.image}")
    if job.dataset != "loveda":
        return open_rgb(job.mask)
    im = Image.open(job.mask)
    if im.mode not in ("L", "P"):
        raise ValueError(f"{job.mask}: LoveDA masks are single-channel, not mode {im.mode}")
    im.load()
    return im


def loveda_labels(raw: np.ndarray) -> tuple[np.ndarray, int]:
    """LoveDA raw 1..7 -> 0..6 and no-data 0 -> 255 (mmseg's reduce_zero_label)."""
    if raw.max(initial=0) > 7:
        raise ValueError(f"mask value {int(raw.max())} outside the LoveDA range 0..7")
    return np.where(raw == 0, IGNORE_INDEX, raw.astype(np.int16) - 1).astype(np.uint8), 0


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


def convert_labels(dataset: str, raw: np.ndarray) -> tuple[np.ndarray, int]:
    """Raw label crop -> class indices, plus how many pixels were remapped (Potsdam) or unmatched (DeepGlobe)."""
    if dataset == "loveda":
        return loveda_labels(raw)
    palette = DATASETS[dataset].palette
    if dataset == "potsdam":
        return palette_labels(raw, palette, nearest=True)
    # DeepGlobe's compressed masks blur colours: each channel is on or off at 128 before matching.
    return palette_labels(np.where(raw >= 128, 255, 0).astype(np.uint8), palette, nearest=False)


# ---------------------------------------------------------------------------------------------------------
# Cutting and writing


def crop_boxes(dataset: str, height: int, width: int, tile: int) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) per crop: LoveDA's quadrants TL, TR, BL, BR, else a row-major tile grid."""
    if dataset == "loveda":
        h, w = height // 2, width // 2
        return [(0, 0, h, w), (0, w, h, w), (h, 0, h, w), (h, w, h, w)]
    return [(top, left, tile, tile) for top in range(0, height, tile) for left in range(0, width, tile)]


def pad_to(array: np.ndarray, height: int, width: int, fill: int) -> np.ndarray:
    """`array` padded at the bottom/right with `fill` to (height, width)."""
    if array.shape[:2] == (height, width):
        return array
    out = np.full((height, width) + array.shape[2:], fill, array.dtype)
    out[:array.shape[0], :array.shape[1]] = array
    return out


def save_png(array: np.ndarray, path: Path) -> None:
    """Write a PNG atomically: a reader never sees half a file, and a killed run leaves only *.tmp."""
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header where PIL can, else by decoding."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except OSError:
        return open_rgb(path).size[::-1]


def process(job: Job, out: Path, tile: int, overwrite: bool) -> Result:
    """Cut one raw image into crops (skipping it if all crops exist), converting its labels."""
    result = Result(job.name, job.group, job.folder)
    try:
        height, width = image_size(job.image)
        boxes = crop_boxes(job.dataset, height, width, tile)
        result.crops = [f"{job.name}_{k}" for k in range(1, len(boxes) + 1)]
        targets = [(out / job.folder / "images" / f"{c}.png", out / job.folder / "masks" / f"{c}.png")
                   for c in result.crops]
        if not overwrite and all(i.is_file() and m.is_file() for i, m in targets):
            for _, mask_path in targets:
                with Image.open(mask_path) as im:
                    result.histogram += np.bincount(np.asarray(im).ravel(), minlength=256)
            result.skipped = len(targets)
            return result
        # Rasters stay PIL images and only one crop at a time becomes an array: a 6000x6000 Potsdam
        # tile then costs its two decoded rasters (2 x 108 MB) and little more.
        image, mask = open_rgb(job.image), open_mask(job)
        if image.size != mask.size:
            raise ValueError(f"image is {width}x{height} but its labels {job.mask} are {mask.width}x{mask.height}")
        for (top, left, h, w), (image_path, mask_path) in zip(boxes, targets):
            box = (left, top, min(left + w, width), min(top + h, height))
            labels, remapped = convert_labels(job.dataset, np.asarray(mask.crop(box)))
            # Padding beyond the raster is ignored (255), never a class (SPEC §8).
            labels = pad_to(labels, h, w, IGNORE_INDEX)
            save_png(pad_to(np.asarray(image.crop(box)), h, w, 0), image_path)
            save_png(labels, mask_path)
            result.histogram += np.bincount(labels.ravel(), minlength=256)
            result.remapped += remapped
            result.written += 1
    except Exception as e:  # noqa: BLE001 - one bad raw image must not end an hours-long run; it is reported
        result.error = f"{type(e).__name__}: {e}".replace("\n", " ")
    return result


# ---------------------------------------------------------------------------------------------------------
# The run


def make_splits(dataset: str, results: list[Result], seed: int) -> Splits:
    """Split lists over the crops of every raw image, grouped as the dataset's protocol needs."""
    crops: dict[str, list[str]] = {}
    for r in results:
        crops.setdefault(r.group, []).extend(r.crops)
    if dataset == "loveda":
        return loveda_splits(crops.get("train_rural", []), crops.get("train_urban", []), crops.get("val", []), seed)
    return (potsdam_splits if dataset == "potsdam" else deepglobe_splits)(crops.get("all", []), seed)


def _run_jobs(jobs: list[Job], out: Path, tile: int, overwrite: bool, workers: int) -> list[Result]:
    work = partial(process, out=out, tile=tile, overwrite=overwrite)
    bar = partial(tqdm, total=len(jobs), unit="image", desc="prepare", dynamic_ncols=True)
    if workers <= 1:
        return [work(job) for job in bar(jobs)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return list(bar(pool.imap_unordered(work, jobs)))


def prepare(dataset: str, raw: Path, out: Path, splits_dir: Path, seed: int = 0, workers: int = 1,
            overwrite: bool = False, tile: int = 512, resplit: bool = False) -> dict:
    """Cut every raw image and write <out>/prepare_summary.json; returns the summary.

    Without `resplit` the lists in `splits_dir` (the shipped ones) are checked: every tile they name must now
    exist under `out`. With `resplit`, new seeded lists of the tiles present are written into `splits_dir`.
    """
    if not raw.is_dir():
        raise DataError(f"raw dataset folder not found: {raw}")
    if not resplit and not (splits_dir / "val.txt").is_file():
        raise DataError(f"no split lists in {splits_dir} to check the tiles against; pass --resplit to write "
                        f"new ones there")
    started = time.perf_counter()
    jobs = FINDERS[dataset](raw)
    for folder in {job.folder for job in jobs}:
        (out / folder / "images").mkdir(parents=True, exist_ok=True)
        (out / folder / "masks").mkdir(parents=True, exist_ok=True)
    results = sorted(_run_jobs(jobs, out, tile, overwrite, workers), key=lambda r: r.name)
    failed = [r for r in results if r.error]
    histogram = sum((r.histogram for r in results), np.zeros(256, np.int64))
    info = DATASETS[dataset]
    summary = {
        "dataset": dataset, "raw": str(raw), "out": str(out), "splits": str(splits_dir), "seed": seed,
        "tile": tile, "raw_images": len(jobs),
        "crops_written": sum(r.written for r in results), "crops_skipped": sum(r.skipped for r in results),
        "failed": [{"name": r.name, "reason": r.error} for r in failed],
        "class_pixels": {**{n: int(histogram[i]) for i, n in enumerate(info.class_names)},
                         "ignore": int(histogram[IGNORE_INDEX])},
        # Potsdam: off-palette pixels mapped to the nearest colour; DeepGlobe: unmatched colours set to 255.
        "remapped_pixels": sum(r.remapped for r in results),
        "split_counts": {}, "resplit": resplit,
    }
    missing, first_missing = 0, None
    if not failed and resplit:
        lines = {name: crop_line(r.folder, name) for r in results for name in r.crops}
        summary["split_counts"] = write_splits(make_splits(dataset, results, seed), splits_dir, lines.__getitem__)
    elif not failed:
        missing, first_missing = missing_tiles(splits_dir, out)
        summary["missing_listed_files"] = missing
    summary["seconds"] = round(time.perf_counter() - started, 1)
    tmp = out / "prepare_summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out / "prepare_summary.json")
    if failed:
        raise DataError(f"{len(failed)} of {len(jobs)} raw images failed (first: {failed[0].name}: "
                        f"{failed[0].error}); no split lists written; all listed in {out / 'prepare_summary.json'}")
    if missing:
        raise DataError(f"{missing} files named by the split lists in {splits_dir} are missing, first {first_missing}; "
                        f"is --raw the complete download? (--resplit makes new lists of the tiles present)")
    return summary


def print_summary(summary: dict) -> None:
    """Counts, class histogram and split sizes, for the terminal."""
    print(f"{summary['dataset']}: {summary['raw_images']} raw images -> {summary['crops_written']} crops written, "
          f"{summary['crops_skipped']} already there, {len(summary['failed'])} failed "
          f"({summary['seconds']} s)")
    total = sum(summary["class_pixels"].values()) or 1
    for name, count in summary["class_pixels"].items():
        print(f"  {name:<20} {count:>14,d} px  {100 * count / total:6.2f} %")
    if summary["remapped_pixels"]:
        print(f"  {summary['remapped_pixels']:,d} px had colours outside the palette "
              f"({'mapped to the nearest' if summary['dataset'] == 'potsdam' else 'set to ignore'})")
    for rel, count in summary["split_counts"].items():
        print(f"  {summary['splits']}/{rel}: {count}")
    if not summary["resplit"]:
        print(f"  every tile named by the split lists in {summary['splits']} is present")


def main() -> int:
    """Command line: prepare one dataset."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(FINDERS))
    parser.add_argument("--raw", type=Path, required=True, help="folder of the raw download (archives unpacked)")
    parser.add_argument("--out", type=Path, help="tile folder (default dataset/<dataset>)")
    parser.add_argument("--splits", type=Path,
                        help="split lists to check the tiles against (default: the shipped splits/<dataset>); "
                             "with --resplit, the folder to write new lists into")
    parser.add_argument("--resplit", action="store_true",
                        help="write new seeded lists of the tiles present instead of checking the shipped ones")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split shuffles (with --resplit)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--overwrite", action="store_true", help="rewrite crops that already exist")
    parser.add_argument("--tile", type=int, help="crop size for potsdam/deepglobe (default 512; LoveDA is cut into "
                                                   "quadrants and takes no --tile)")
    args = parser.parse_args()
    if args.tile is not None and args.dataset == "loveda":
        parser.error("--tile does not apply to loveda: each image is cut into its four quadrants")
    if args.tile is not None and args.tile <= 0:
        parser.error("--tile must be positive")
    if args.resplit and args.splits is None:
        parser.error("--resplit needs --splits DIR: the shipped splits/ lists are not overwritten")
    summary = prepare(args.dataset, args.raw, args.out or Path("dataset", args.dataset),
                      args.splits or SHIPPED / args.dataset, args.seed, args.workers, args.overwrite, args.tile or 512,
                      args.resplit)
    print_summary(summary)
    return 0


if __name__ == "__main__":
    run_main(main)
