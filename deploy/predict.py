"""Segment scenes with a checkpoint: class masks a GIS can open, for images of any size, in bounded memory.

    python deploy/predict.py --config configs/potsdam.yaml --checkpoint best.pth --out pred/ INPUT...
        [--mode sliding_window|original] [--window 518] [--stride 345] [--blend gaussian|uniform]
        [--batch-size 16] [--weights student|ema] [--alpha 0.5] [--list FILE] [--bands R,G,B]
        [--scale auto|percentile[:LOW,HIGH]|minmax|none|LOW,HIGH] [--no-cog] [--tiling predict|deepness]
        [--backend auto|torch|onnxruntime] [--threads N] [key=value ...]

INPUT is an image file (GeoTIFF or TIFF, PNG, JPEG; also GDAL's .vrt), a folder of them (not recursive), or
a list file `@scenes.txt` (one path per line, files or folders, relative to the current folder; blank
lines and # comments skipped; `--list FILE` is the same; deploy/inputs.py). Positional arguments of the form
section.key=value (not naming an existing file) are config overrides.

Per scene <stem>_mask (class indices), <stem>_color (dataset palette), <stem>_overlay (the palette over the
image, --alpha) and <stem>_legend.png (class names and colours). A georeferenced TIFF (a CRS, a geotransform,
GCPs or RPCs) gives cloud-optimised GeoTIFFs (.tif; plain tiled ones with --no-cog) with its CRS, transform
and size, deflate-compressed, tiled, with overviews (nearest for the mask and colours, average for the
overlay): the mask carries the palette as a colour table, all carry class names and colours as tags; they are
read and written by windows, so a scene of any size runs in memory that depends on its width, not its
height. Other inputs (PNG, JPEG, TIFFs without georeference) give PNGs, read whole.

Bands (deploy/scenes.py): a TIFF's bands declared red, green and blue are read as such, wherever they are; bands
declaring no colour are read as red, green, blue from bands 1-3 (with a note); another colour model is
refused; --bands R,G,B (1-based) chooses them instead, whatever they declare. 8-bit bands are read as they
are; 16-bit, 32-bit and float bands are stretched to 0-255 from each band's 2nd to 98th percentile, taken
from a bounded sample of the pixels holding data (--scale chooses another rule). No data (class 255, the
mask's nodata) is where a nodata value, a mask band, or an alpha band or PNG alpha of only 0 and the maximum
says; a band declared alpha that holds other values is data, with a note. No data has a rendering of its own:
grey in the colour map (a value no class colour has, its nodata value), an alpha of 0 in the overlay and in PNGs.
Outputs are written by deploy/maps.py; temporary files that killed runs left in --out are removed.

`--tiling deepness` runs the tiles QGIS's Deepness plugin runs an exported model on instead of predict's windows
(deploy/deepness.py: padded at the top and the right, each pixel the class of one tile, the overlap that
deploy/export.py writes for the window and stride), so that Deepness' map can be compared with predict's.

Settings: window, stride, batch size and weights come from the config's eval section (flags override).
Mode and blend are predict's own unless the command line gives them (--mode/--blend, or eval.mode=/
eval.blend=): sliding_window and gaussian, whatever the config file says (its `original` and `uniform` are
eval.py's scoring).

The model runs in PyTorch or, exported once to ONNX and cached, in ONNX Runtime (--backend; eval/backends.py):
`auto`, the default, takes ONNX Runtime on a machine without a GPU, PyTorch on a GPU. The windows, blending,
bands, scaling and outputs are the same either way.

A scene that fails (unreadable, fewer than 3 bands without --bands, bands not readable as RGB, --bands
beyond its bands) is reported and skipped; the others are written; the run then ends with one line naming
how many failed and the first, and exit status 2. Files inside --out and files named like predict's outputs
(*_mask, *_color, *_overlay, *_legend, legend) are never read as inputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: the repository root, not deploy/, first
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import errno
import math
import os
import re
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

import methods  # noqa: F401  (registers the training methods a config may name)
from dataset.transforms import normalize
from deploy.deepness import count_tiles, deepness_rows, overlap_percent, overlap_px
from deploy.inputs import collect_inputs
from deploy.maps import GDAL_OVERVIEW_SUFFIX, Outputs, Style, legend_png, nodata_grey, open_outputs
from deploy.scenes import DEFAULT_PERCENTILES, DEFAULT_READING, Reading, Scale, Scene, open_scene, scene_size
from eval.backends import add_backend_args, backend_device, backend_model, set_threads
from eval.eval import load_model
from eval.inference import Model, count_windows, predict_logits, predict_rows, resolve_window
from model.convert import LoadedWeights
from util.catalog import DATASETS, IGNORE_INDEX
from util.cli import add_config_args, config_from_args, run_main, user_path
from util.config import Config
from util.errors import ConfigError, DataError, OutputError, UserError, short_reason
from util.io import check_name_lengths, check_output_folder, file_sha256, remove_stale_temporaries
from util.precision import autocast_dtype

OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
# GDAL's block cache (MB): GDAL's default is 5 % of RAM, which a large scene would fill with tiles already
# written; a row of tiles of the input (read by several rows of windows) and of each output is what helps.
GDAL_CACHE_MB = 64
PREDICT_MODE, PREDICT_BLEND = "sliding_window", "gaussian"
# Errors that mean --out takes nothing more: the run stops rather than failing every scene after.
UNWRITABLE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
# A scene whose pixels are more than this many times larger or smaller on the ground than the model's gets a note.
RESOLUTION_TOLERANCE = 1.5
SCALE_CHOICES = "auto, percentile, percentile:LOW,HIGH, minmax, none, or LOW,HIGH (e.g. 0,10000)"


# ----------------------------------------------------------------------------------------------------------
# Prediction


@dataclass(frozen=True)
class Settings:
    """How the model runs over a scene: mode, window, stride, blending, windows per forward, and whose tiling
    (predict's sliding windows, or Deepness' tiles: deploy/deepness.py)."""

    mode: str
    window: int
    stride: int
    blend: str
    batch_size: int
    tiling: str = "predict"


def resolve_settings(cfg: Config, given: set[str], tiling: str = "predict") -> Settings:
    """Mode and blend: the command line's (`given` holds the eval keys it set), else predict's own defaults
    (sliding_window, gaussian); window, stride and batch size: the config's, flags included.

    `tiling` deepness: the window is Deepness' tile and the stride the one Deepness takes from the overlap in
    percent that deploy/export.py writes for this window and stride; no blending (each pixel takes one tile's
    class), so a --blend, or --mode original, is refused."""
    window, stride = resolve_window(cfg)
    if tiling == "deepness":
        if "blend" in given or ("mode" in given and cfg.eval.mode != "sliding_window"):
            raise ConfigError("--tiling deepness runs Deepness' tiles, each pixel given the class of one of them: "
                              "--mode original and --blend (eval.mode, eval.blend) do not go with it")
        stride = window - overlap_px(window, overlap_percent(window, stride))
        return Settings("sliding_window", window, stride, "none", cfg.eval.batch_size, tiling)
    return Settings(mode=cfg.eval.mode if "mode" in given else PREDICT_MODE, window=window, stride=stride,
                    blend=cfg.eval.blend if "blend" in given else PREDICT_BLEND, batch_size=cfg.eval.batch_size)


def planned_windows(path: Path, settings: Settings) -> int:
    """The forwards `path` will take (0 when its size cannot be read: the scene fails later), for the ETA."""
    if settings.mode == "original":
        return 1
    size = scene_size(path)
    if size is None:
        return 0
    count = count_tiles if settings.tiling == "deepness" else count_windows
    return count(*size, settings.window, settings.stride)


def predict_scene(model: Model, scene: Scene, outputs: Outputs, settings: Settings, device: torch.device,
                  amp_dtype: torch.dtype | None, bar: tqdm) -> np.ndarray:
    """Run the model over `scene` and hand its class indices to `outputs`, band of rows by band of rows; returns
    how many pixels each class index got (256 counts, no data at IGNORE_INDEX)."""
    if settings.tiling == "deepness":
        bands = deepness_rows(model, scene.read, scene.height, scene.width, settings.window, settings.stride,
                              settings.batch_size, normalize, device, amp_dtype, progress=bar.update)
    elif settings.mode == "original":
        img = normalize(scene.read(0, scene.height).to(device).unsqueeze(0))
        bands = iter([(0, class_map(predict_logits(model, img, "original", amp_dtype=amp_dtype)[0]))])
        bar.update(1)
    else:
        bands = ((top, class_map(probs)) for top, probs in
                 predict_rows(model, scene.read, scene.height, scene.width, settings.window, settings.stride,
                              settings.batch_size, settings.blend, amp_dtype, device, transform=normalize,
                              progress=bar.update))
    counts = np.zeros(256, np.int64)
    for top, labels in bands:
        valid = scene.valid(top, top + labels.shape[0])
        if valid is not None:
            labels[~valid] = IGNORE_INDEX
        counts += np.bincount(labels.ravel(), minlength=256)
        outputs.write(top, labels)
    return counts


def class_map(probs: torch.Tensor) -> np.ndarray:
    """(classes, rows, width) probabilities -> (rows, width) uint8 class indices."""
    return probs.argmax(0).to(torch.uint8).cpu().numpy()


def class_shares(path: Path, counts: np.ndarray, names: tuple[str, ...]) -> str:
    """One line of what a scene's map holds: its pixels and each class's share of them, no data apart."""
    total = int(counts.sum())
    shares = [f"{name} {100 * counts[c] / total:.1f} %" for c, name in enumerate(names) if counts[c]]
    nodata = f"; no data {100 * counts[IGNORE_INDEX] / total:.1f} %" if counts[IGNORE_INDEX] else ""
    return f"{path.name}: {total:,} px: {', '.join(shares) or 'no class'}{nodata}"


def unwritable(error: BaseException) -> str | None:
    """Why --out takes nothing more (a full disk, a quota, a read-only folder; a write GDAL could not make),
    where `error` says so, else None: the run then stops instead of failing every scene after."""
    from rasterio.errors import RasterioIOError

    if isinstance(error, OSError) and error.errno in UNWRITABLE:
        return os.strerror(error.errno)
    texts = [str(error), str(error.__cause__ or "")]
    known = next((os.strerror(code) for code in UNWRITABLE if any(os.strerror(code) in t for t in texts)), None)
    if known:
        return known
    if isinstance(error, RasterioIOError) and "Write failed" in texts[0]:
        # libtiff says why (a full disk, a quota) on stderr only; GDAL's exception names the failed write.
        return f"GDAL could not write ({short_reason(error.__cause__ or error)}: a full disk or a quota?)"
    return None


def provenance_tags(checkpoint: str | Path, loaded: LoadedWeights) -> dict[str, str]:
    """Which weights made a map: the checkpoint's absolute path and SHA-256, the run id, iteration and epoch it
    was saved at (where it says; not the authors' files), and student or EMA. The same identity eval.py writes
    into metrics.json, so that a map can be matched to a run and a score."""
    path = Path(checkpoint).absolute()
    tags = {"CHECKPOINT": str(path), "WEIGHTS": loaded.which}
    if path.is_file():
        tags["CHECKPOINT_SHA256"] = file_sha256(path)
    for key in ("run_id", "iteration", "epoch"):
        if loaded.source.get(key) is not None:
            tags[f"CHECKPOINT_{key.upper()}"] = str(loaded.source[key])
    return tags


def run_style(cfg: Config, settings: Settings, alpha: float, provenance: dict[str, str],
              cog: bool = True) -> Style:
    """The classes, colours, opacity and provenance tags (`provenance_tags`) every output of this run shares."""
    info = DATASETS[cfg.dataset.name]
    tags = {"CLASS_NAMES": ",".join(info.class_names),
            **{f"CLASS_{c}": name for c, name in enumerate(info.class_names)},
            "CLASS_COLORS": ";".join(",".join(map(str, rgb)) for rgb in info.palette),
            "NODATA_CLASS": str(IGNORE_INDEX), "NODATA_COLOR": ",".join([str(nodata_grey(info.palette))] * 3),
            "DATASET": info.name, **provenance,
            "MODE": settings.mode, "BLEND": settings.blend if settings.mode == "sliding_window" else "",
            "WINDOW": str(settings.window), "STRIDE": str(settings.stride), "TILING": settings.tiling,
            "TIFFTAG_SOFTWARE": "RS-MTDF deploy/predict.py"}
    return Style(info.class_names, info.palette, alpha, tags, legend_png(info.class_names, info.palette), cog)


def stopped(path: Path, out: Path, reason: str, written: list[Path], failures: list[str], total: int) -> str:
    """The one line of a run stopped by --out taking nothing more: what was saved and what was not."""
    saved = f"{len(written)} scene(s) written before it" + (f" (the last {written[-1].name})" if written else "")
    failed = f", {len(failures)} failed earlier" if failures else ""
    rest = total - len(written) - len(failures)
    which = path.name if rest == 1 else f"{path.name} and the {rest - 1} after it"
    return (f"could not write the maps of {path} into {out}: {reason}; stopped: {saved}{failed}, {rest} not written "
            f"({which})")


def resolution_note(scene: Scene, cfg: Config) -> str:
    """One note where the scene's pixels are more than RESOLUTION_TOLERANCE times larger or smaller on the ground
    than the model's (its dataset's, util/catalog.py), else ''."""
    model_cm = DATASETS[cfg.dataset.name].resolution_cm
    scene_m = scene.metres_per_pixel()
    if model_cm is None or scene_m is None:
        return ""
    model_m = model_cm / 100
    ratio = scene_m / model_m
    if 1 / RESOLUTION_TOLERANCE <= ratio <= RESOLUTION_TOLERANCE:
        return ""
    how = f"{ratio:.1f} times coarser" if ratio > 1 else f"{1 / ratio:.1f} times finer"
    return (f"note: {scene.path}: {scene_m:.3g} m per pixel, {how} than the model's {model_m:g} m "
            f"({cfg.dataset.name}); objects look another size than the model learned them: resample the scene to "
            f"{model_m:g} m first (e.g. gdalwarp -tr {model_m:g} {model_m:g} -r bilinear IN.tif OUT.tif)")


def remove_leftovers(out: Path) -> None:
    """Delete the temporary files that killed runs left in `out` (those of running writers stay), with a note."""
    removed = remove_stale_temporaries(out)
    if removed:
        print(f"note: removed {removed} temporary file(s) left in {out} by killed runs", file=sys.stderr)


def predict_files(model: Model, paths: list[Path], out: Path, cfg: Config, device: torch.device,
                  settings: Settings, alpha: float = 0.5, provenance: dict[str, str] | None = None,
                  reading: Reading = DEFAULT_READING, cog: bool = True) -> list[str]:
    """Write the outputs of every scene into `out`, each read as `reading` says (COGs unless `cog` is False);
    a scene that fails is reported and skipped. Returns the failures' messages, in order."""
    import rasterio
    from rasterio.errors import RasterioError

    style = run_style(cfg, settings, alpha, provenance or {}, cog)
    amp_dtype = autocast_dtype(cfg.train.precision, device)
    remove_leftovers(out)
    plan = [planned_windows(p, settings) for p in paths]
    failures: list[str] = []
    written: list[Path] = []
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 2**20), \
            tqdm(total=sum(plan), desc="predict", unit="win", dynamic_ncols=True) as bar:
        for path, planned in zip(paths, plan):
            bar.set_postfix_str(path.name, refresh=False)
            start = bar.n
            scene: Scene | None = None
            outputs: Outputs | None = None
            try:
                scene = open_scene(path, reading)
                for note in (scene.note(), resolution_note(scene, cfg)):
                    if note:
                        tqdm.write(note, file=sys.stderr)
                outputs = open_outputs(out, scene, style)
                counts = predict_scene(model, scene, outputs, settings, device, amp_dtype, bar)
                # What the map holds, shown before its files are committed (a full disk then loses the files).
                tqdm.write(class_shares(path, counts, style.names))
                outputs.commit()
                written.append(path)
            # MemoryError: a header declaring more pixels than can be held (whole-image PNG outputs are kept in
            # memory); the scene is named and skipped like any unreadable one.
            except (UserError, OSError, ValueError, RasterioError, MemoryError) as e:
                if outputs is not None:
                    outputs.abort()
                reason = unwritable(e)
                if reason is not None:
                    raise OutputError(stopped(path, out, reason, written, failures, len(paths))) from None
                message = str(e).splitlines()[0] if isinstance(e, UserError) else f"{path}: {short_reason(e)}"
                failures.append(message)
                tqdm.write(f"skipped {message}", file=sys.stderr)
                # The windows this scene did not run leave the total: the ETA stays that of the rest.
                bar.total -= planned - (bar.n - start)
                bar.refresh()
            except BaseException:
                if outputs is not None:
                    outputs.abort()
                raise
            finally:
                if scene is not None:
                    scene.close()
    return failures


# ----------------------------------------------------------------------------------------------------------
# Command line


def check_output_names(out: Path, scene: Path) -> None:
    """Refuse, before any work, a scene whose outputs' names would be longer than the file system allows: the
    longest is GDAL's overview file beside the overlay's temporary COG (`.<stem>_overlay.tif.<pid>.tmp.ovr.tmp`)."""
    try:
        check_name_lengths(out / f"{scene.stem}_overlay.tif{GDAL_OVERVIEW_SUFFIX}", str(scene), file=True)
    except OutputError:
        raise OutputError(f"{scene}: its name is too long for its outputs' names in --out ({scene.stem}_overlay.tif "
                          f"and the temporary files written first) on this file system; give the scene a shorter "
                          f"name or link to it under one") from None


def parse_bands(text: str) -> tuple[int, int, int]:
    """`--bands R,G,B` as three 1-based band numbers; a ConfigError for anything else."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ConfigError(f"--bands {text}: give band numbers, 1-based as GDAL numbers them (e.g. --bands 4,3,2)")
    if len(parts) != 3:
        raise ConfigError(f"--bands {text}: give three bands, read as red, green, blue (e.g. --bands 4,3,2, or "
                          f"--bands 1,1,1 for one grey band)")
    return int(parts[0]), int(parts[1]), int(parts[2])


def parse_pair(text: str) -> tuple[float, float] | None:
    """'LOW,HIGH' as two finite numbers, the lower first, else None."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        return None
    return (low, high) if math.isfinite(low) and math.isfinite(high) and low < high else None


def parse_scale(text: str) -> Scale:
    """`--scale` (SCALE_CHOICES) as a Scale; a ConfigError for anything else."""
    rule, colon, numbers = text.strip().partition(":")
    if rule in ("auto", "minmax", "none") and not colon:
        return Scale(rule)
    if rule == "percentile":
        pair = parse_pair(numbers) if colon else DEFAULT_PERCENTILES
        if pair is not None and 0 <= pair[0] and pair[1] <= 100:
            return Scale("percentile", *pair)
        raise ConfigError(f"--scale {text}: percentiles are two numbers from 0 to 100, the lower first "
                          f"(e.g. --scale percentile:1,99)")
    pair = parse_pair(text)
    if pair is None:
        raise ConfigError(f"--scale {text}: give {SCALE_CHOICES}")
    return Scale("range", *pair)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        usage="%(prog)s --config CFG --checkpoint CKPT --out DIR [options] INPUT... [key.sub=value ...]",
        epilog="INPUT: image files (GeoTIFF/TIFF, PNG, JPEG, VRT), folders of them, or @LIST files (one path a "
               "line). A georeferenced input gives cloud-optimised GeoTIFFs with its CRS and transform; others "
               "give PNGs. 16-bit and float scenes are stretched to 8 bits (--scale). "
               "A scene that fails is skipped; the run then exits with status 2 naming how many failed.")
    add_config_args(parser)
    parser.add_argument("--checkpoint", required=True, type=user_path,
                        help="checkpoint file (.pth) written by train.py")
    parser.add_argument("--out", required=True, type=user_path,
                        help="output folder (created when the first scene is written; never read as input)")
    parser.add_argument("--list", action="append", default=[], metavar="FILE", type=user_path,
                        help="a file listing inputs, one path per line (same as @FILE); may be repeated")
    # Sliding windows by default: `original` is one forward over the whole image, too big for large scenes.
    parser.add_argument("--mode", choices=("original", "sliding_window"),
                        help="eval.mode (default here: sliding_window, whatever the config says; original reads "
                             "the whole scene and runs one forward)")
    parser.add_argument("--window", type=int, help="eval.window: sliding window size (multiple of 14; default: "
                                                   "the config's, else dataset.crop_size)")
    parser.add_argument("--stride", type=int, help="eval.stride: sliding window stride (default: the config's, "
                                                   "else 2/3 of the window)")
    parser.add_argument("--blend", choices=("gaussian", "uniform"),
                        help="eval.blend: how overlapping windows are blended (default here: gaussian, whatever "
                             "the config says; uniform is eval.py's plain average)")
    parser.add_argument("--weights", choices=("student", "ema"),
                        help="eval.weights: which weights to use (default: those the checkpoint was selected by)")
    parser.add_argument("--batch-size", type=int, help="eval.batch_size: windows per forward (default: the config's)")
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="opacity of the mask in the overlay, 0 to 1 (default 0.5)")
    parser.add_argument("--bands", metavar="R,G,B",
                        help="the bands read as red, green, blue, 1-based as GDAL numbers them (e.g. 4,3,2; 1,1,1 "
                             "for a grey scene); default: as the bands declare themselves. TIFF and VRT scenes")
    parser.add_argument("--scale", default="auto", metavar="RULE",
                        help="how pixel values become the model's 8-bit input: auto (default: 8-bit as it is, "
                             "other types percentile), percentile (2nd-98th percentile per band, of a sample of "
                             "the pixels holding data), percentile:LOW,HIGH, minmax (the sample's extremes), "
                             "none (values as they are, clipped to 0-255), or LOW,HIGH (this range, every band, "
                             "e.g. 0,10000; --scale=-1,1 for a negative LOW). TIFF and VRT scenes")
    parser.add_argument("--tiling", choices=("predict", "deepness"), default="predict",
                        help="predict (default): sliding windows, the last one flush with the scene's edge, "
                             "probabilities blended; deepness: the tiles QGIS's Deepness plugin runs an exported "
                             "model on (padded at the top and right, each pixel the class of one tile), with the "
                             "overlap export writes for --window and --stride, to compare with Deepness' map")
    parser.add_argument("--no-cog", dest="cog", action="store_false",
                        help="write plain tiled GeoTIFFs, without overviews (default: cloud-optimised GeoTIFFs)")
    add_backend_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    positional = list(args.overrides)
    args.overrides = [a for a in positional if OVERRIDE.match(a) and not Path(a).exists()]
    inputs = [a for a in positional if a not in args.overrides] + [f"@{f}" for f in args.list]
    if not inputs:
        parser.error("no INPUT images, folders or lists given")
    if not 0 <= args.alpha <= 1:
        parser.error(f"--alpha {args.alpha} is outside [0, 1]")
    reading = Reading(parse_bands(args.bands) if args.bands is not None else None, parse_scale(args.scale))
    flags = {"eval.mode": args.mode, "eval.window": args.window, "eval.stride": args.stride,
             "eval.blend": args.blend, "eval.weights": args.weights, "eval.batch_size": args.batch_size}
    cfg = config_from_args(args, flags)
    given = {k.split(".", 1)[1] for k, v in flags.items() if v is not None}
    given |= {a.split("=", 1)[0].split(".", 1)[1] for a in args.overrides if a.startswith("eval.")}
    settings = resolve_settings(cfg, given, args.tiling)
    if settings.tiling == "deepness":
        percent = overlap_percent(settings.window, settings.stride)
        print(f"note: Deepness' tiling: tile {settings.window} px, overlap {percent} % "
              f"({settings.window - settings.stride} px, stride {settings.stride})", file=sys.stderr)
    threads = set_threads(args.threads)
    out = Path(args.out)
    paths = collect_inputs(inputs, out)
    check_output_folder(out, "--out")
    for path in paths:
        check_output_names(out, path)
    device = backend_device(args.backend, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    model, loaded = load_model(cfg, args.checkpoint, cfg.eval.weights, device)
    provenance = provenance_tags(args.checkpoint, loaded)
    # The checkpoint's digest (in the tags: load_model has read the file) keys the ONNX Runtime graph.
    backend, runner = backend_model(args.backend, model, device, settings.mode, cfg,
                                    provenance.get("CHECKPOINT_SHA256", ""), loaded.which, threads)
    failures = predict_files(runner, paths, out, cfg, device, settings, args.alpha, {**provenance, "BACKEND": backend},
                             reading, args.cog)
    written = len(paths) - len(failures)
    if failures:
        raise DataError(f"{len(failures)} of {len(paths)} scene(s) failed (first: {failures[0]}); "
                        f"{written} written to {out}")
    print(f"{written} scene(s) written to {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
