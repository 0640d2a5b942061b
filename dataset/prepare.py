"""Turn a raw dataset download into 512-px PNG tiles and label maps, checked against the shipped split lists.

    python -m dataset.prepare loveda --raw /data/LoveDA [--out data/loveda]
    python -m dataset.prepare potsdam --raw /data/Potsdam [--workers 8]
    python -m dataset.prepare deepglobe --raw /data/DeepGlobe [--overwrite] [--label-rule authors]
    python -m dataset.prepare potsdam --raw /data/Potsdam --resplit --seed 1 --lists my_lists/potsdam

Output: <out>/images/<name>.png (RGB) and <out>/masks/<name>.png (class index, 255 = ignore) - for LoveDA
under <out>/train/ and <out>/val/ after its official split - and <out>/prepare_summary.json. The split
lists ship with the code in splits/<dataset> (Potsdam and DeepGlobe: the authors' published lists, tile for
tile, of 512-px tiles; LoveDA: seeded lists from the official file names); prepare checks that every tile
they name was written. `--resplit` instead writes new seeded lists of the tiles present into --lists (own
data, other seeds); a --lists folder that already holds other lists is refused unless --replace-lists, and
one that holds exactly these is left as it is. How a dataset's raw files are found, its labels converted, its
images cut and its crops split into lists is its spec's (dataset/spec.py, one module per dataset). One
worker handles one raw image at a time and cuts it crop by crop, so memory stays bounded (peak 0.35 GB per
worker on a 6000x6000 Potsdam tile). A raw image that fails is named in the summary and no split list is
written.

One --out holds the tiles of one cutting: the options the tiles depend on (dataset, --raw, --tile,
--label-rule) are recorded in <out>/.prepare_options.json before the first crop is written, and a re-run
with other ones is refused (or, with --overwrite, the old tiles are removed and everything is re-cut). The
size and modification time of each raw image and label file are recorded in <out>/.prepare_sources.json: a
re-run skips a raw image whose crops all exist only if its raw files are the ones they were cut from, and
re-cuts it otherwise. A run holds an exclusive lock on <out>/.prepare.lock, so a second preparation into the
same --out is refused while one runs, and it starts by deleting what killed writers left in --out (their
temporary files, and the summary of a run that did not finish).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: the repository root, not dataset/, first
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from tqdm import tqdm

from dataset.images import (
    image_size,
    open_rgb,
)
from dataset.raw import Job, Labels, RawTree, source_stamp, walk_raw
from dataset.registry import SPECS, spec_of
from dataset.spec import Box, DatasetSpec
from dataset.splits import (
    SHIPPED,
    crop_line,
    keep_existing,
    line_counts,
    list_files,
    list_texts,
    missing_tiles,
    read_list,
    split_file,
    write_lists,
)
from util.catalog import IGNORE_INDEX
from util.cli import path_arg, refuse_renamed_flags, run_main
from util.config import TILES_DEFAULT
from util.errors import DataError
from util.io import FolderLock, check_output_folder, open_image, remove_stale_temporaries, save_png, write_text

OPTIONS_FILE = ".prepare_options.json"
SOURCES_FILE = ".prepare_sources.json"
SUMMARY_FILE = "prepare_summary.json"
LOCK_FILE = ".prepare.lock"
# Where crops of any dataset go: <out>/<folder>/images, masks beside (DatasetSpec.folders), so that tiles of
# another dataset in --out are found too.
TILE_FOLDERS = tuple(dict.fromkeys(folder for spec in SPECS.values() for folder in ("", *spec.folders)))
# The crop size of the shipped lists of the datasets cut into a grid: their tile names mean these crops only.
SHIPPED_TILE = 512
# Flags renamed since: the old spelling is refused, naming the new one.
RENAMED_FLAGS = {"--splits": "--lists", "--replace-splits": "--replace-lists"}


@dataclass(frozen=True)
class Request:
    """One preparation, as the command line asks for it."""

    dataset: str
    raw: Path
    out: Path
    lists: Path
    seed: int = 0
    workers: int = 1
    overwrite: bool = False
    tile: int = SHIPPED_TILE
    resplit: bool = False
    # None: the dataset's default rule (see DatasetSpec.label_rule).
    label_rule: str | None = None
    replace_lists: bool = False

    @property
    def spec(self) -> DatasetSpec:
        return spec_of(self.dataset)

    @property
    def rule(self) -> str | None:
        """The label rule the labels are converted by (None where the dataset has no choice)."""
        return self.spec.label_rule(self.label_rule)


@dataclass(frozen=True)
class Cutting:
    """How a worker cuts: the dataset's rules, where to, crop size and label rule, and which raw images it must
    re-cut."""

    spec: DatasetSpec
    out: Path
    tile: int
    label_rule: str | None
    overwrite: bool = False
    # Raw images whose files changed since their crops were cut (or are not on record).
    changed: frozenset[str] = frozenset()

    def recut(self, job: Job) -> bool:
        """Whether `job`'s crops are cut again even where they all exist."""
        return self.overwrite or job.name in self.changed


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
    # Pixels of each crop whose colour is not exactly a class's (DatasetSpec.label_rules; crops with none left out).
    impure: dict[str, int] = field(default_factory=dict)

    def count(self, crop: str, converted: Labels) -> None:
        """Add one crop's conversion counts."""
        self.remapped += converted.remapped
        if converted.impure:
            self.impure[crop] = converted.impure


# ---------------------------------------------------------------------------------------------------------
# Cutting and writing


def crop_names(name: str, count: int) -> list[str]:
    """The names of a raw image's crops, numbered from 1 in the order of the dataset's crop rule."""
    return [f"{name}_{k}" for k in range(1, count + 1)]


def planned_crops(spec: DatasetSpec, job: Job, tile: int) -> list[str] | None:
    """The crop names `process` will give `job`, from the image header alone; None where it cannot be read."""
    count = spec.crop_count(tile)
    if count is not None:
        return crop_names(job.name, count)
    try:
        with open_image(job.image) as im:
            height, width = im.height, im.width
    except Exception:  # noqa: BLE001 - a file PIL cannot open is read (or reported) when it is cut
        return None
    return crop_names(job.name, len(spec.crops(height, width, tile)))


def pad_to(array: np.ndarray, height: int, width: int, fill: int) -> np.ndarray:
    """`array` padded at the bottom/right with `fill` to (height, width)."""
    if array.shape[:2] == (height, width):
        return array
    out = np.full((height, width) + array.shape[2:], fill, array.dtype)
    out[:array.shape[0], :array.shape[1]] = array
    return out


def _region(box: Box, height: int, width: int) -> tuple[int, int, int, int]:
    """A crop box as PIL's (left, top, right, bottom), clipped to the raster."""
    top, left, h, w = box
    return left, top, min(left + w, width), min(top + h, height)


def _cut(job: Job, boxes: list[Box], targets: list[tuple[Path, Path]], cutting: Cutting, result: Result) -> None:
    """Write every crop of `job` (image and converted labels)."""
    # Rasters stay PIL images and only one crop at a time becomes an array: a 6000x6000 Potsdam
    # tile then costs its two decoded rasters (2 x 108 MB) and little more.
    image, mask = open_rgb(job.image), cutting.spec.open_mask(job)
    width, height = image.size
    if image.size != mask.size:
        raise ValueError(f"image is {width}x{height} but its labels {job.mask} are {mask.width}x{mask.height}")
    for box, crop, (image_path, mask_path) in zip(boxes, result.crops, targets):
        region = _region(box, height, width)
        converted = cutting.spec.convert(np.asarray(mask.crop(region)), cutting.label_rule)
        # Padding beyond the raster is ignored (255), never a class.
        labels = pad_to(converted.labels, box[2], box[3], IGNORE_INDEX)
        save_png(pad_to(np.asarray(image.crop(region)), box[2], box[3], 0), image_path)
        save_png(labels, mask_path)
        result.histogram += np.bincount(labels.ravel(), minlength=256)
        result.count(crop, converted)
        result.written += 1


def _count_existing(job: Job, boxes: list[Box], targets: list[tuple[Path, Path]], cutting: Cutting,
                    result: Result) -> None:
    """Count the crops of `job` that are kept: class histogram from the masks, impure colours from the raw mask."""
    for _, mask_path in targets:
        with open_image(mask_path) as im:
            result.histogram += np.bincount(np.asarray(im).ravel(), minlength=256)
    result.skipped = len(targets)
    spec = cutting.spec
    if spec.label_rules:  # so that the impure count covers every tile, not only those cut this run
        mask = spec.open_mask(job)
        for box, crop in zip(boxes, result.crops):
            result.count(crop, spec.convert(np.asarray(mask.crop(_region(box, mask.height, mask.width))),
                                            cutting.label_rule))


def process(job: Job, cutting: Cutting) -> Result:
    """Cut one raw image into crops, or count them where they all exist and need no re-cut."""
    result = Result(job.name, job.group, job.folder)
    try:
        height, width = image_size(job.image)
        boxes = cutting.spec.crops(height, width, cutting.tile)
        result.crops = crop_names(job.name, len(boxes))
        targets = [(cutting.out / job.folder / "images" / f"{c}.png", cutting.out / job.folder / "masks" / f"{c}.png")
                   for c in result.crops]
        if not cutting.recut(job) and all(i.is_file() and m.is_file() for i, m in targets):
            _count_existing(job, boxes, targets, cutting, result)
        else:
            _cut(job, boxes, targets, cutting, result)
    except DataError as e:
        result.error = str(e).replace("\n", " ")
    except Exception as e:  # noqa: BLE001 - one bad raw image must not end an hours-long run; it is reported
        result.error = f"{type(e).__name__}: {e}".replace("\n", " ")
    return result


def _run_jobs(jobs: list[Job], cutting: Cutting, workers: int) -> list[Result]:
    """Process every job, in `workers` processes where more than one."""
    work = partial(process, cutting=cutting)
    bar = partial(tqdm, total=len(jobs), unit="image", desc="prepare", dynamic_ncols=True)
    if workers <= 1:
        return [work(job) for job in bar(jobs)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return list(bar(pool.imap_unordered(work, jobs)))


# ---------------------------------------------------------------------------------------------------------
# Split lists


def split_texts(request: Request, crops: dict[tuple[str, str], list[str]]) -> dict[str, str]:
    """The lists --resplit writes for `crops` ({(group, folder): names}), keyed by path under --lists."""
    by_group: dict[str, list[str]] = {}
    lines: dict[str, str] = {}
    for (group, folder), names in crops.items():
        by_group.setdefault(group, []).extend(names)
        lines.update((name, crop_line(folder, name)) for name in names)
    return list_texts(request.spec.split_lists(by_group, request.seed), lines.__getitem__)


def _planned_texts(request: Request, jobs: list[Job]) -> dict[str, str] | None:
    """The lists the run will write, from the raw images' headers; None where a header cannot be read."""
    crops: dict[tuple[str, str], list[str]] = {}
    for job in jobs:
        names = planned_crops(request.spec, job, request.tile)
        if names is None:
            return None
        crops.setdefault((job.group, job.folder), []).extend(names)
    return split_texts(request, crops)


def _check_lists(request: Request) -> None:
    """Refuse, before any work, split lists that cannot be checked against or written (see `prepare`)."""
    lists = request.lists
    if request.resplit:
        check_output_folder(lists, "--lists")
        return
    if not split_file(lists, "val").is_file():
        raise DataError(f"no split lists in {lists} to check the tiles against; pass --resplit to write "
                        f"new ones there")
    if request.spec.tiled and request.tile != SHIPPED_TILE and lists.resolve().parent == SHIPPED.resolve():
        # Crop k of a 256-px grid is another place than crop k of the 512-px one the shipped names stand for.
        raise DataError(f"the shipped split lists in {lists} name {SHIPPED_TILE}-px tiles, not {request.tile}-px "
                        f"ones; drop --tile, or pass --resplit --lists DIR for lists of your tiles")
    for path in list_files(lists):
        read_list(path)  # a list that is not UTF-8 text is named now, not after hours of cutting


# ---------------------------------------------------------------------------------------------------------
# The output folder: checked before any work, one cutting per folder, one run at a time


def tile_options(request: Request) -> dict:
    """What the tiles on disk depend on: tiles cut with other values must not be mixed with these."""
    return {"dataset": request.dataset, "raw": str(request.raw.resolve()),
            "tile": request.tile if request.spec.tiled else None, "label_rule": request.rule}


def _read_json(path: Path) -> dict | None:
    """A JSON object from `path`; None if it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict) -> None:
    """`data` as indented JSON, written atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def _tile_files(out: Path) -> Iterator[Path]:
    """The crops under `out`."""
    for folder in TILE_FOLDERS:
        for kind in ("images", "masks"):
            if (out / folder / kind).is_dir():
                yield from (p for p in (out / folder / kind).iterdir() if p.name.endswith(".png"))


def options_conflict(out: Path, wanted: dict) -> tuple[str | None, bool]:
    """Why the tiles in `out` cannot be kept with the `wanted` options (None: they can, or there are none),
    and whether our own record says so (then --overwrite removes them before re-cutting)."""
    path = out / OPTIONS_FILE
    if not path.is_file():
        if out.is_dir() and next(_tile_files(out), None) is not None:
            return f"{out} holds tiles but no record of the options they were cut with ({path})", False
        return None, False
    recorded = _read_json(path)
    if recorded is None or not isinstance(recorded.get("dataset"), str):
        return f"{path} cannot be read, so the options the tiles in {out} were cut with are unknown", True
    for key, flag in (("dataset", "dataset"), ("tile", "--tile"), ("raw", "--raw"), ("label_rule", "--label-rule")):
        if key in recorded and recorded[key] != wanted[key]:
            if key == "dataset":
                return f"{out} holds {recorded[key]} tiles, not {wanted[key]} (recorded in {path})", True
            return f"{out} holds tiles cut with {flag} {recorded[key]}, not {wanted[key]} (recorded in {path})", True
    return None, False


def _refuse_conflict(conflict: str | None, overwrite: bool) -> None:
    """A DataError for `conflict` unless --overwrite."""
    if conflict and not overwrite:
        raise DataError(f"{conflict}; pass --overwrite to re-cut them, or use another --out")


def _clear_out(out: Path, conflict: str | None) -> None:
    """What earlier runs left that this one must not trust: tiles cut with other options, temporaries, the summary."""
    if conflict:
        for path in _tile_files(out):
            path.unlink()
        (out / SOURCES_FILE).unlink(missing_ok=True)
    for folder in TILE_FOLDERS:
        for kind in ("images", "masks"):
            remove_stale_temporaries(out / folder / kind)
    remove_stale_temporaries(out)
    # A summary describes a finished run; until this one finishes, the tiles are in flux.
    (out / SUMMARY_FILE).unlink(missing_ok=True)


def _tiled_names(out: Path) -> set[str]:
    """The raw image names that have crops under `out` ('<name>_<k>.png' -> '<name>')."""
    names = set()
    for path in _tile_files(out):
        name, _, k = path.name.removesuffix(".png").rpartition("_")
        if k.isdigit():
            names.add(name)
    return names


def plan_sources(out: Path, jobs: list[Job]) -> tuple[dict[str, list], frozenset[str]]:
    """The raw files' stamps per raw image, and the raw images whose crops came from other files (to re-cut)."""
    recorded = _read_json(out / SOURCES_FILE) or {}
    tiled = _tiled_names(out)
    stamps = {job.name: source_stamp(job) for job in jobs}
    return stamps, frozenset(name for name in tiled & stamps.keys() if recorded.get(name) != stamps[name])


# ---------------------------------------------------------------------------------------------------------
# The run


def prepare(dataset: str, raw: Path, out: Path, lists: Path, **options: Any) -> dict:
    """Cut every raw image and write <out>/prepare_summary.json; returns the summary (options: see `Request`).

    Without `resplit` the lists in `lists` (the shipped ones) are checked: every tile they name must now
    exist under `out`. With `resplit`, new seeded lists of the tiles present are written into `lists`.
    Everything that can be checked is checked before anything is written (see the module docstring).
    """
    request = Request(dataset, raw, out, lists, **options)
    if not raw.is_dir():
        raise DataError(f"--raw {raw} is a file, not a folder" if raw.exists() else
                        f"raw dataset folder not found: {raw}")
    check_output_folder(out, "--out")
    _check_lists(request)
    wanted = tile_options(request)
    _refuse_conflict(options_conflict(out, wanted)[0], request.overwrite)
    started = time.perf_counter()
    # Tiles written under --raw are not raw files (unless --out is --raw itself, when there is nothing to skip).
    tree = walk_raw(raw, skip=() if out.resolve() == raw.resolve() else (out,))
    jobs = request.spec.find(tree)
    if request.resplit and (planned := _planned_texts(request, jobs)) is not None:
        keep_existing(planned, lists, request.replace_lists, "--lists")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"--out {out} cannot be created: {e.strerror or e}") from None
    with FolderLock(out, LOCK_FILE, lambda pid: (
            f"another dataset.prepare (process {pid}) is writing into {out} (it holds {out / LOCK_FILE}); wait for "
            f"it to finish, or use another --out")):
        # Again, now that no other run can change it.
        conflict, ours = options_conflict(out, wanted)
        _refuse_conflict(conflict, request.overwrite)
        _clear_out(out, conflict if ours else None)
        _write_json(out / OPTIONS_FILE, wanted)
        stamps, changed = plan_sources(out, jobs)
        # A raw image is on record only while its crops on disk came from its files as they are now: one that
        # changed stays off the record until it is re-cut, so that a run killed meanwhile re-cuts it again.
        _write_json(out / SOURCES_FILE, {name: stamp for name, stamp in stamps.items() if name not in changed})
        cutting = Cutting(request.spec, out, request.tile, request.rule, request.overwrite, changed)
        return _cut_and_check(request, jobs, tree, cutting, stamps, started)


def _summary(request: Request, jobs: list[Job], tree: RawTree, results: list[Result]) -> dict:
    """The counts of a run, as prepare_summary.json holds them (the split counts and time are added after)."""
    histogram = sum((r.histogram for r in results), np.zeros(256, np.int64))
    info = request.spec.info
    summary = {
        "dataset": request.dataset, "raw": str(request.raw), "out": str(request.out),
        "lists": str(request.lists), "seed": request.seed, "tile": request.tile, "raw_images": len(jobs),
        "crops_written": sum(r.written for r in results), "crops_skipped": sum(r.skipped for r in results),
        "failed": [{"name": r.name, "reason": r.error} for r in results if r.error],
        "class_pixels": {**{n: int(histogram[i]) for i, n in enumerate(info.class_names)},
                         "ignore": int(histogram[IGNORE_INDEX])},
        # The pixels the conversion did not map one to one, in crops cut in this run (what that means is the
        # dataset's: Potsdam, off-palette colours mapped to the nearest; DeepGlobe, impure pixels by the rule).
        "remapped_pixels": sum(r.remapped for r in results),
        "split_counts": {}, "splits_kept": False, "resplit": request.resplit, "unreadable_folders": tree.unreadable,
    }
    if request.spec.label_rules:
        per_tile = {crop: n for r in results for crop, n in r.impure.items()}
        summary.update(label_rule=request.rule, impure_pixels=sum(per_tile.values()),
                       impure_pixels_per_tile=dict(sorted(per_tile.items())))
    return summary


def _write_splits(request: Request, results: list[Result], summary: dict) -> None:
    """Write the --resplit lists, or keep identical ones already there; other lists there are refused."""
    crops: dict[tuple[str, str], list[str]] = {}
    for r in results:
        crops.setdefault((r.group, r.folder), []).extend(r.crops)
    texts = split_texts(request, crops)
    summary["splits_kept"] = keep_existing(texts, request.lists, request.replace_lists, "--lists")
    if not summary["splits_kept"]:
        write_lists(texts, request.lists)
    summary["split_counts"] = line_counts(texts)


def _cut_and_check(request: Request, jobs: list[Job], tree: RawTree, cutting: Cutting, stamps: dict[str, list],
                   started: float) -> dict:
    """Cut, record what the crops were cut from, and write or check the split lists."""
    out, lists = request.out, request.lists
    for folder in {job.folder for job in jobs}:
        (out / folder / "images").mkdir(parents=True, exist_ok=True)
        (out / folder / "masks").mkdir(parents=True, exist_ok=True)
    results = sorted(_run_jobs(jobs, cutting, request.workers), key=lambda r: r.name)
    cut = {r.name: stamps[r.name] for r in results if not r.error}
    _write_json(out / SOURCES_FILE, {**(_read_json(out / SOURCES_FILE) or {}), **cut})
    failed = [r for r in results if r.error]
    summary = _summary(request, jobs, tree, results)
    missing, first_missing, refused = 0, None, None
    if not failed and request.resplit:
        try:
            _write_splits(request, results, summary)
        except DataError as e:  # not foreseen before cutting (a header PIL cannot read): the summary is still due
            refused = e
    elif not failed:
        missing, first_missing = missing_tiles(lists, out)
        summary["missing_listed_files"] = missing
    summary["seconds"] = round(time.perf_counter() - started, 1)
    _write_json(out / SUMMARY_FILE, summary)
    if refused:
        raise refused
    if failed:
        raise DataError(f"{len(failed)} of {len(jobs)} raw images failed (first: {failed[0].name}: "
                        f"{failed[0].error}); no split lists written; all listed in {out / SUMMARY_FILE}")
    if missing:
        raise DataError(f"{missing} files named by the split lists in {lists} are missing, first {first_missing}; "
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
    if (note := spec_of(summary["dataset"]).conversion_note(summary)) is not None:
        print(f"  {note}")
    for rel, count in summary["split_counts"].items():
        print(f"  {summary['lists']}/{rel}: {count}")
    if summary["splits_kept"]:
        print(f"  the split lists in {summary['lists']} were already exactly these (seed {summary['seed']}): kept")
    if not summary["resplit"]:
        print(f"  every tile named by the split lists in {summary['lists']} is present")
    for folder in summary["unreadable_folders"]:
        print(f"  note: could not read folder {folder}")



def _parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    tiled = [name for name, spec in SPECS.items() if spec.tiled]
    ruled = {name: spec for name, spec in SPECS.items() if spec.label_rules}
    parser.add_argument("dataset", choices=sorted(SPECS))
    parser.add_argument("--raw", type=path_arg, required=True, help="folder of the raw download (archives unpacked)")
    parser.add_argument("--out", type=path_arg, help=f"tile folder (default {TILES_DEFAULT.format(name='<dataset>')})")
    parser.add_argument("--lists", type=path_arg,
                        help="split lists to check the tiles against (default: the shipped splits/<dataset>); "
                             "with --resplit, the folder to write new lists into")
    parser.add_argument("--resplit", action="store_true",
                        help="write new seeded lists of the tiles present instead of checking the shipped ones")
    parser.add_argument("--replace-lists", action="store_true",
                        help="with --resplit: replace lists already in --lists that differ (else refused)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split shuffles (with --resplit)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--overwrite", action="store_true", help="rewrite crops that already exist")
    parser.add_argument("--tile", type=int, help=f"crop size for {'/'.join(tiled)} (default {SHIPPED_TILE}; the "
                                                   f"others are cut their own way and take no --tile)")
    parser.add_argument("--label-rule", choices=list(dict.fromkeys(r for s in ruled.values() for r in s.label_rules)),
                        help="; ".join(f"{name}: {spec.label_rule_help}" for name, spec in ruled.items()))
    refuse_renamed_flags(parser, RENAMED_FLAGS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line: prepare one dataset."""
    parser = _parser()
    args = parser.parse_args(argv)
    spec = SPECS[args.dataset]
    if args.tile is not None and not spec.tiled:
        parser.error(f"--tile does not apply to {spec.name}: {spec.cutting}")
    if args.tile is not None and args.tile <= 0:
        parser.error("--tile must be positive")
    if args.label_rule is not None and args.label_rule not in spec.label_rules:
        ruled = [name for name, s in SPECS.items() if args.label_rule in s.label_rules]
        parser.error(f"--label-rule applies to {', '.join(ruled)} only")
    if args.resplit and args.lists is None:
        parser.error("--resplit needs --lists DIR: the shipped splits/ lists are not overwritten")
    if args.replace_lists and not args.resplit:
        parser.error("--replace-lists goes with --resplit: without it no list is written")
    summary = prepare(args.dataset, args.raw, args.out or Path(TILES_DEFAULT.format(name=args.dataset)),
                      args.lists or SHIPPED / args.dataset, seed=args.seed, workers=args.workers,
                      overwrite=args.overwrite, tile=args.tile or SHIPPED_TILE, resplit=args.resplit,
                      label_rule=args.label_rule, replace_lists=args.replace_lists)
    print_summary(summary)
    return 0


if __name__ == "__main__":
    run_main(main)
