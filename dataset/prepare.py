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
seeds). Raw files are found anywhere under --raw, following symbolic links to folders (each real folder once, so a
link loop ends), so nested archive layouts (2_Ortho_RGB/2_Ortho_RGB/...) and linked folders work. One worker
handles one raw image at a time and cuts it crop by crop, so memory stays bounded (peak 0.35 GB per worker on
a 6000x6000 Potsdam tile). A re-run skips raw images whose crops all exist; a raw image that fails is named in
the summary and no split list is written.

One --out holds the tiles of one cutting: the options the tiles depend on (dataset, --raw, --tile) are
recorded in <out>/.prepare_options.json before the first crop is written, and a re-run with other ones is
refused (or, with --overwrite, the old tiles are removed and everything is re-cut). A run holds an exclusive
lock on <out>/.prepare.lock, so a second preparation into the same --out is refused while one runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: the repository root, not dataset/, first
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import fnmatch
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

import cv2
import numpy as np
from PIL import Image, ImageFile
from tqdm import tqdm

from dataset.splits import (
    SHIPPED,
    Splits,
    crop_line,
    deepglobe_splits,
    list_files,
    loveda_splits,
    missing_tiles,
    potsdam_splits,
    read_list,
    split_file,
    write_splits,
)
from util.catalog import DATASETS, IGNORE_INDEX
from util.cli import run_main
from util.errors import DataError, short_reason
from util.io import FolderLock, check_output_folder, is_temporary, open_image, save_png, write_text

OPTIONS_FILE = ".prepare_options.json"
LOCK_FILE = ".prepare.lock"
# Where crops go: <out>/images (Potsdam, DeepGlobe) or <out>/{train,val}/images (LoveDA), masks beside.
TILE_FOLDERS = ("", "train", "val")


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


@dataclass
class RawTree:
    """Every file under --raw (symbolic links to folders followed), and the folders that could not be listed."""

    root: Path
    files: list[Path]
    unreadable: list[str] = field(default_factory=list)

    def matching(self, pattern: str) -> list[Path]:
        return [path for path in self.files if fnmatch.fnmatchcase(path.name, pattern)]

    def hint(self) -> str:
        """For a 'nothing found' error: the folders that could not be read, which may hold what is missing."""
        if not self.unreadable:
            return ""
        return f"; {len(self.unreadable)} folder(s) could not be read, first {self.unreadable[0]}"


def walk_raw(raw: Path, skip: tuple[Path, ...] = ()) -> RawTree:
    """The files under `raw` as a user expects to find them: symbolic links to folders are followed.

    Path.rglob does not follow them (Python 3.11), so a download linked in from another disk would be missed.
    Each real folder is walked once: a link back to an ancestor (a loop) or a second link to a folder already
    walked is not entered again. `skip` folders (the output, when it lies under --raw) are not walked.
    """
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


# ---------------------------------------------------------------------------------------------------------
# Reading and label conversion


# Single-channel modes wider than 8 bits, as PIL names them.
WIDE_MODES = {**dict.fromkeys(("I;16", "I;16B", "I;16L", "I;16N"), "16-bit grayscale"),
              "I": "32-bit integer grayscale", "F": "32-bit float grayscale"}
# Label images: class indices in one channel. 16-bit ones are read when every value fits 8 bits.
LABEL_MODES = ("L", "P", "I;16", "I;16B", "I;16L", "I;16N", "I")


def _rawmode(im: Image.Image) -> str:
    """How the file stores the pixels (e.g. 'RGB;16B'), before PIL reduces them to its mode; '' if unknown."""
    if not isinstance(im, ImageFile.ImageFile) or not im.tile:  # an image read from a file
        return ""
    args = im.tile[0][3]  # (codec, extents, offset, args)
    first = args[0] if isinstance(args, tuple) and args else args
    return first if isinstance(first, str) else ""


def to_8bit(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    """`array` as uint8 where that is exact, else a DataError naming the file, its format and its value range.

    Exact: integer values within 0..255 (8-bit data stored wide), or an 8-bit image saved as 16-bit (every
    value a multiple of 257, as 16-bit exports scale 255 to 65535). Anything else (11-, 12- or 16-bit sensor
    data, floats) needs a scale only the user knows, so it is refused rather than guessed.
    """
    if array.dtype == np.uint8:
        return array
    if array.size and (array.dtype.kind in "iu" or np.isfinite(array).all()):
        low, high = array.min(), array.max()
        integral = array.dtype.kind in "iu" or np.array_equal(array, np.round(array))
        if integral and low >= 0 and high <= 255:
            return array.astype(np.uint8)
        if integral and low >= 0 and high <= 65535 and not (array % 257).any():
            return (array // 257).astype(np.uint8)
        values = f"values {low:g}..{high:g}"
    else:
        values = "values that are not finite numbers" if array.size else "no pixels"
    raise DataError(f"image {path} is {what} with {values}: only 8-bit data (0..255, or 16-bit multiples of 257) "
                    f"converts exactly; convert it to 8-bit RGB with the scale of your sensor")


def _rgb_from_opencv(path: Path, what: str | None, pil_error: BaseException | None = None) -> Image.Image:
    """Decode with OpenCV: all 16 bits of 16-bit colour files, and files PIL cannot decode (some TIFF compressions)."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # no TIFF warnings on the terminal
    try:
        array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        array = None
    finally:
        cv2.utils.logging.setLogLevel(level)
    if array is None:
        reason = short_reason(pil_error) if pil_error is not None else f"{what} that OpenCV cannot decode"
        raise DataError(f"cannot read image {path}: {reason}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2 and not (array.ndim == 3 and array.shape[2] in (3, 4)):
        raise DataError(f"cannot read image {path}: {array.shape[-1]} channels, not gray, RGB or RGBA")
    channels = 1 if array.ndim == 2 else array.shape[2]
    kind = "float" if array.dtype.kind == "f" else "integer"
    array = to_8bit(array, path, what or f"{array.dtype.itemsize * 8}-bit {kind} data in {channels} channel(s), "
                                         f"a layout PIL has no mode for")
    if array.ndim == 2:
        return Image.fromarray(array).convert("RGB")
    # OpenCV stores BGR(A); alpha is dropped.
    return Image.fromarray(cv2.cvtColor(array, cv2.COLOR_BGRA2RGB if array.shape[2] == 4 else cv2.COLOR_BGR2RGB))


def open_rgb(path: Path) -> Image.Image:
    """Any image file as 8-bit RGB, exactly, or a DataError naming the file (and its mode where that is why).

    8-bit modes convert as PIL converts them: palette applied, alpha dropped (LA, RGBA, PA), CMYK, YCbCr, LAB,
    HSV and 1-bit to RGB. Wider data (16-bit gray 'I;16', 32-bit 'I' and 'F', and 16-bit RGB(A), of which PIL
    would keep only the high byte) is converted only where that is exact (see `to_8bit`). OpenCV reads files
    PIL has no decoder for (e.g. TIFF pixel layouts it does not know), never a file PIL found damaged: OpenCV
    fills a truncated JPEG with grey without a word.
    """
    try:
        im = open_image(path)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except Image.UnidentifiedImageError as e:
        return _rgb_from_opencv(path, None, e)
    except Exception as e:  # noqa: BLE001 - a decoder may fail any way on a user's file; it is named
        raise DataError(f"cannot read image {path}: {short_reason(e)}") from None
    mode, rawmode = im.mode, _rawmode(im)
    try:
        im.load()
        if mode in WIDE_MODES:
            return Image.fromarray(to_8bit(np.asarray(im), path, f"{WIDE_MODES[mode]} (mode {mode})")).convert("RGB")
        if rawmode.endswith((";16B", ";16L", ";16N")):
            # 16 bits per channel, of which PIL kept the high byte (decoded whole above, so the file is sound).
            im.close()
            return _rgb_from_opencv(path, f"16-bit {mode} (stored as {rawmode})")
        if mode == "RGB":
            return im
        # Premultiplied gray+alpha has no direct conversion to RGB.
        return (im.convert("LA") if mode == "La" else im).convert("RGB")
    except DataError:
        raise
    except ValueError as e:
        raise DataError(f"cannot convert image {path} (mode {mode}) to RGB: {short_reason(e)}") from None
    except OSError as e:
        if "not available" in str(e):  # "decoder jpeg2k not available": OpenCV may have one
            return _rgb_from_opencv(path, None, e)
        raise DataError(f"cannot read image {path}: {short_reason(e)}") from None
    except Exception as e:  # noqa: BLE001 - a decoder may fail any way on a user's file; it is named
        raise DataError(f"cannot read image {path}: {short_reason(e)}") from None


def rgb_array(path: Path) -> np.ndarray:
    """`open_rgb` as a writable (H, W, 3) uint8 array (torch.from_numpy refuses to share read-only memory):
    how training, evaluation and predict read an image."""
    return np.array(open_rgb(path))


def open_labels(path: Path) -> np.ndarray:
    """A label image (class indices, mode L or P, or 16-bit with every value below 256) as uint8 (H, W)."""
    try:
        with open_image(path) as im:
            mode = im.mode
            if mode not in LABEL_MODES:
                raise DataError(f"mask {path} must be single-channel (mode L or P, or 16-bit with values below 256), "
                                f"not mode {mode}")
            array = np.array(im)
    except FileNotFoundError:
        raise DataError(f"mask file not found: {path}") from None
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure on a user's file is reported as that file's
        raise DataError(f"cannot read mask {path}: {short_reason(e)}") from None
    if array.dtype != np.uint8:
        wide = (array < 0) | (array > 255)
        if wide.any():
            raise DataError(f"mask {path} (mode {mode}) holds value {int(array[wide][0])}: label values must be "
                            f"0..255 ({IGNORE_INDEX} = ignore)")
        array = array.astype(np.uint8)
    return array


def open_mask(job: Job) -> Image.Image:
    """The raw label image: single-channel for LoveDA, RGB colours for Potsdam and DeepGlobe."""
    if job.mask is None or not job.mask.is_file():
        raise ValueError(f"label file not found for {job.image}")
    if job.dataset != "loveda":
        return open_rgb(job.mask)
    return Image.fromarray(open_labels(job.mask))


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


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header where PIL can, else by decoding."""
    try:
        with open_image(path) as im:
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
                with open_image(mask_path) as im:
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
            # Padding beyond the raster is ignored (255), never a class.
            labels = pad_to(labels, h, w, IGNORE_INDEX)
            save_png(pad_to(np.asarray(image.crop(box)), h, w, 0), image_path)
            save_png(labels, mask_path)
            result.histogram += np.bincount(labels.ravel(), minlength=256)
            result.remapped += remapped
            result.written += 1
    except DataError as e:
        result.error = str(e).replace("\n", " ")
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


# ---------------------------------------------------------------------------------------------------------
# The output folder: checked before any work, one cutting per folder, one run at a time


def tile_options(dataset: str, raw: Path, tile: int) -> dict:
    """What the tiles on disk depend on: tiles cut with other values must not be mixed with these."""
    return {"dataset": dataset, "raw": str(raw.resolve()), "tile": None if dataset == "loveda" else tile}


def _read_record(out: Path) -> tuple[dict | None, Path | None]:
    """The options the tiles in `out` were cut with and the file that records them; ({}, file) if unreadable.

    prepare_summary.json is the record of runs made before .prepare_options.json existed (dataset and tile).
    """
    for name in (OPTIONS_FILE, "prepare_summary.json"):
        path = out / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("dataset"), str):
            return {}, path
        if name != OPTIONS_FILE:
            data = {"dataset": data["dataset"], "tile": None if data["dataset"] == "loveda" else data.get("tile")}
        return data, path
    return None, None


def _tile_files(out: Path) -> Iterator[Path]:
    for folder in TILE_FOLDERS:
        for kind in ("images", "masks"):
            if (out / folder / kind).is_dir():
                # Crops, and a killed run's half-written ones: util.io's temporary names, or `<name>.png.tmp`
                # from before them.
                yield from (p for p in (out / folder / kind).iterdir()
                            if p.name.endswith((".png", ".png.tmp")) or is_temporary(p))


def options_conflict(out: Path, wanted: dict) -> tuple[str | None, bool]:
    """Why the tiles in `out` cannot be kept with the `wanted` options (None: they can, or there are none),
    and whether our own record says so (then --overwrite removes them before re-cutting)."""
    if not out.is_dir():
        return None, False
    recorded, source = _read_record(out)
    if recorded is None:
        if next(_tile_files(out), None) is not None:
            return f"{out} holds tiles but no record of the options they were cut with ({out / OPTIONS_FILE})", False
        return None, False
    if not recorded:
        return f"{source} cannot be read, so the options the tiles in {out} were cut with are unknown", True
    for key, flag in (("dataset", "dataset"), ("tile", "--tile"), ("raw", "--raw")):
        if key in recorded and recorded[key] != wanted[key]:
            if key == "dataset":
                return f"{out} holds {recorded[key]} tiles, not {wanted[key]} (recorded in {source})", True
            return f"{out} holds tiles cut with {flag} {recorded[key]}, not {wanted[key]} (recorded in {source})", True
    return None, False


def _refuse_conflict(conflict: str | None, overwrite: bool) -> None:
    if conflict and not overwrite:
        raise DataError(f"{conflict}; pass --overwrite to re-cut them, or use another --out")


def _write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def prepare(dataset: str, raw: Path, out: Path, splits_dir: Path, seed: int = 0, workers: int = 1,
            overwrite: bool = False, tile: int = 512, resplit: bool = False) -> dict:
    """Cut every raw image and write <out>/prepare_summary.json; returns the summary.

    Without `resplit` the lists in `splits_dir` (the shipped ones) are checked: every tile they name must now
    exist under `out`. With `resplit`, new seeded lists of the tiles present are written into `splits_dir`.
    Everything that can be checked is checked before anything is written (see the module docstring).
    """
    if not raw.is_dir():
        raise DataError(f"--raw {raw} is a file, not a folder" if raw.exists() else
                        f"raw dataset folder not found: {raw}")
    check_output_folder(out, "--out")
    if resplit:
        check_output_folder(splits_dir, "--splits")
    elif not split_file(splits_dir, "val").is_file():
        raise DataError(f"no split lists in {splits_dir} to check the tiles against; pass --resplit to write "
                        f"new ones there")
    else:
        for path in list_files(splits_dir):
            read_list(path)  # a list that is not UTF-8 text is named now, not after hours of cutting
    wanted = tile_options(dataset, raw, tile)
    _refuse_conflict(options_conflict(out, wanted)[0], overwrite)
    started = time.perf_counter()
    # Tiles written under --raw are not raw files (unless --out is --raw itself, when there is nothing to skip).
    tree = walk_raw(raw, skip=() if out.resolve() == raw.resolve() else (out,))
    jobs = FINDERS[dataset](tree)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"--out {out} cannot be created: {e.strerror or e}") from None
    with FolderLock(out, LOCK_FILE, lambda pid: (
            f"another dataset.prepare (process {pid}) is writing into {out} (it holds {out / LOCK_FILE}); wait for "
            f"it to finish, or use another --out")):
        # Again, now that no other run can change it.
        conflict, ours = options_conflict(out, wanted)
        _refuse_conflict(conflict, overwrite)
        if conflict and ours:
            for path in _tile_files(out):
                path.unlink()
            (out / "prepare_summary.json").unlink(missing_ok=True)
        _write_json(out / OPTIONS_FILE, wanted)
        return _cut_and_check(dataset, raw, out, splits_dir, seed, workers, overwrite, tile, resplit, jobs, tree,
                              started)


def _cut_and_check(dataset: str, raw: Path, out: Path, splits_dir: Path, seed: int, workers: int, overwrite: bool,
                   tile: int, resplit: bool, jobs: list[Job], tree: RawTree, started: float) -> dict:
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
        "split_counts": {}, "resplit": resplit, "unreadable_folders": tree.unreadable,
    }
    missing, first_missing = 0, None
    if not failed and resplit:
        lines = {name: crop_line(r.folder, name) for r in results for name in r.crops}
        try:
            summary["split_counts"] = write_splits(make_splits(dataset, results, seed), splits_dir,
                                                   lines.__getitem__)
        except OSError as e:
            raise DataError(f"cannot write the split lists into --splits {splits_dir}: {e.filename}: "
                            f"{e.strerror or e}") from None
    elif not failed:
        missing, first_missing = missing_tiles(splits_dir, out)
        summary["missing_listed_files"] = missing
    summary["seconds"] = round(time.perf_counter() - started, 1)
    _write_json(out / "prepare_summary.json", summary)
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
    for folder in summary["unreadable_folders"]:
        print(f"  note: could not read folder {folder}")


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
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
