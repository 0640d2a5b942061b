"""Segment scenes with a checkpoint: class masks a GIS can open, for images of any size, in bounded memory.

    python eval/predict.py --config configs/potsdam.yaml --checkpoint best.pth --out pred/ INPUT...
        [--mode sliding_window|original] [--window 518] [--stride 345] [--blend gaussian|uniform]
        [--batch-size 16] [--weights student|ema] [--alpha 0.5] [--list FILE] [key=value ...]

INPUT is an image file (GeoTIFF or TIFF, PNG, JPEG; also GDAL's .vrt), a folder of them (not recursive), or
a list file `@scenes.txt` (one path per line, files or folders, relative to the current folder; blank
lines and # comments skipped; `--list FILE` is the same). Positional arguments of the form section.key=value
(not naming an existing file) are config overrides.

Per scene <stem>_mask (class indices), <stem>_color (dataset palette), <stem>_overlay (the palette over the
image, --alpha) and <stem>_legend.png (class names and colours). A georeferenced TIFF (a CRS, a geotransform
or GCPs) gives GeoTIFFs (.tif) with its CRS, transform and size, deflate-compressed and tiled: the mask
carries the palette as a colour table, both carry class names and colours as tags; they are read and
written by windows, so a scene of any size runs in memory that depends on its width, not its height.
Other inputs (PNG, JPEG, TIFFs without georeference) give PNGs, read whole.

Settings: window, stride, batch size and weights come from the config's eval section (flags override).
Mode and blend are predict's own unless the command line gives them (--mode/--blend, or eval.mode=/
eval.blend=): sliding_window and gaussian, whatever the config file says (its `original` and `uniform` are
eval.py's scoring).

A scene that fails (unreadable, not 8-bit, fewer than 3 bands) is reported and skipped; the others are
written; the run then ends with one line naming how many failed and the first, and exit status 2. Files
inside --out and files named like predict's outputs (*_mask, *_color, *_overlay, *_legend, legend) are
never read as inputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: Python put eval/ first, where eval.py
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # would shadow the package; the repository root instead

import argparse
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from dataset.prepare import rgb_array
from dataset.transforms import normalize
from eval.eval import load_model
from eval.inference import Model, count_windows, predict_logits, predict_rows, resolve_window
from eval.visualize import colorize, overlay
from util.catalog import DATASETS, IGNORE_INDEX
from util.cli import add_config_args, config_from_args, run_main
from util.config import Config
from util.errors import DataError, UserError, short_reason
from util.io import check_output_folder, commit, open_image, save_png, temporary_path, write_bytes
from util.precision import autocast_dtype

OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt")
IMAGE_SUFFIXES = PIL_SUFFIXES + RASTER_SUFFIXES
# What predict writes: a file named like this is an output of an earlier run, never an input.
OUTPUT_KINDS = ("mask", "color", "overlay", "legend")
# GeoTIFF outputs: 256 x 256 tiles, written a full row of tiles at a time (each tile once, complete); the
# colour and overlay of a row of tiles are computed COLUMNS pixels at a time.
TILE = 256
COLUMNS = 2048
# GDAL's block cache (MB): GDAL's default is 5 % of RAM, which a large scene would fill with tiles already
# written; a row of tiles of the input (read by several rows of windows) and of each output is what helps.
GDAL_CACHE_MB = 64
PREDICT_MODE, PREDICT_BLEND = "sliding_window", "gaussian"


# ----------------------------------------------------------------------------------------------------------
# Inputs


def is_output_name(path: Path) -> bool:
    """Named like one of predict's outputs: <stem>_mask/_color/_overlay/_legend, or legend."""
    stem = path.stem.lower()
    return stem == "legend" or any(stem.endswith(f"_{kind}") for kind in OUTPUT_KINDS)


def is_inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def read_list(path: Path) -> list[str]:
    """The entries of a list file: one path per line; blank lines and # comments skipped."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise DataError(f"list file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read list file {path}: {short_reason(e)}") from None
    entries = [line.strip() for line in lines]
    return [e for e in entries if e and not e.startswith("#")]


def collect_inputs(inputs: list[str], out: Path | None = None) -> list[Path]:
    """Scenes named directly, found in the named folders or listed in list files (@FILE), in order, one
    output stem each. Files inside `out` and files named like predict's outputs are left out (with a note)."""
    paths: list[Path] = []
    skipped = 0
    for text in inputs:
        if text.startswith("@") and not Path(text).exists():
            paths += collect_inputs_from_list(Path(text[1:]))
            continue
        paths += expand_input(Path(text))
    unique: list[Path] = []
    seen_paths: set[Path] = set()
    for path in paths:
        if path.resolve() in seen_paths:
            continue
        seen_paths.add(path.resolve())
        if is_inside(path, out) or is_output_name(path):
            skipped += 1
            continue
        unique.append(path)
    if skipped:
        print(f"note: left out {skipped} file(s) inside --out or named like predict's outputs "
              f"(*_{', *_'.join(OUTPUT_KINDS)}, legend)", file=sys.stderr)
    if not unique:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {' '.join(inputs)}"
                        + (" (files inside --out and predict's own outputs are not inputs)" if skipped else ""))
    stems: dict[str, Path] = {}
    for path in unique:
        if path.stem in stems:
            raise DataError(f"{path} and {stems[path.stem]} would write the same outputs ({path.stem}_*)")
        stems[path.stem] = path
    return unique


def expand_input(path: Path, listed_in: Path | None = None) -> list[Path]:
    """A file as itself, a folder as its image files (sorted, hidden ones left out); a missing one is an error."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                      and not p.name.startswith("."))
    if path.is_file():
        return [path]
    raise DataError(f"input not found: {path}" + (f" (listed in {listed_in})" if listed_in else ""))


def collect_inputs_from_list(list_file: Path) -> list[Path]:
    """The inputs named in a list file, one path (file or folder) per line."""
    return [p for entry in read_list(list_file) for p in expand_input(Path(entry), list_file)]


def read_rgb(path: Path) -> np.ndarray:
    """A PNG/JPEG file as (H, W, 3) uint8 RGB; an unreadable file or a 1- or 2-band one is a DataError.

    Pixels are read as training reads them (dataset.prepare.rgb_array): 16-bit data only where 8-bit is exact.
    """
    try:
        with open_image(path) as im:
            bands, mode = len(im.getbands()), im.mode
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {short_reason(e)}") from None
    if mode not in ("P", "PA") and bands < 3:
        raise DataError(f"{path} has {bands} band(s) (mode {mode}); predict needs an RGB image")
    return rgb_array(path)


class Scene:
    """An opened input: its size, rows of RGB on demand, which pixels hold data, and its georeference."""

    path: Path
    height: int
    width: int
    georeferenced = False

    def read(self, top: int, bottom: int) -> torch.Tensor:
        """Rows [top, bottom) as (3, rows, width) uint8."""
        raise NotImplementedError

    def valid(self, top: int, bottom: int) -> np.ndarray | None:
        """Rows [top, bottom) of the data mask (False: no data), or None when every pixel holds data."""
        return None

    def close(self) -> None:
        pass


class ArrayScene(Scene):
    """A PNG or JPEG, read whole."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rgb = read_rgb(path)
        self.height, self.width = self.rgb.shape[:2]
        self._chw = torch.from_numpy(self.rgb).permute(2, 0, 1)

    def read(self, top: int, bottom: int) -> torch.Tensor:
        return self._chw[:, top:bottom]


class RasterScene(Scene):
    """A (Geo)TIFF or VRT read through GDAL by windows of rows; bands 1-3 are red, green, blue."""

    def __init__(self, path: Path) -> None:
        import rasterio
        from rasterio.enums import MaskFlags
        from rasterio.errors import NotGeoreferencedWarning

        self.path = path
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self.src = rasterio.open(path)
        try:
            src = self.src
            if src.count < 3:
                raise DataError(f"{path} has {src.count} band(s); predict needs an RGB image (3 bands, or "
                                f"more: bands 1-3 are read as red, green, blue)")
            dtypes = set(src.dtypes[:3])
            if dtypes != {"uint8"}:
                raise DataError(f"{path} holds {', '.join(sorted(dtypes))} pixels; predict needs 8-bit RGB "
                                f"(convert it, e.g. gdal_translate -ot Byte -scale)")
            self.height, self.width = src.height, src.width
            self.georeferenced = (src.crs is not None or not src.transform.is_identity or bool(src.gcps[0])
                                  or src.rpcs is not None)
            flags = src.mask_flag_enums[:3]
            self.has_mask = any(MaskFlags.all_valid not in f for f in flags)
        except BaseException:
            self.src.close()
            raise

    def read(self, top: int, bottom: int) -> torch.Tensor:
        from rasterio.windows import Window

        data = self.src.read((1, 2, 3), window=Window(0, top, self.width, bottom - top))
        return torch.from_numpy(data)

    def valid(self, top: int, bottom: int) -> np.ndarray | None:
        if not self.has_mask:
            return None
        from rasterio.windows import Window

        return self.src.dataset_mask(window=Window(0, top, self.width, bottom - top)) > 0

    def close(self) -> None:
        self.src.close()


def open_scene(path: Path) -> Scene:
    """The scene in `path`; an unreadable file is a DataError naming it."""
    if path.suffix.lower() in PIL_SUFFIXES:
        return ArrayScene(path)
    from rasterio.errors import RasterioError

    try:
        return RasterScene(path)
    except RasterioError as e:
        raise DataError(f"cannot read image {path}: {short_reason(e)}") from None


def scene_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from the file's header, or None when it cannot be read (the scene fails later)."""
    try:
        if path.suffix.lower() in PIL_SUFFIXES:
            with open_image(path) as im:
                return im.height, im.width
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return src.height, src.width
    except Exception:  # noqa: BLE001 - any failure is reported when the scene itself is read
        return None


# ----------------------------------------------------------------------------------------------------------
# Outputs


def legend_png(names: tuple[str, ...], palette: tuple[tuple[int, int, int], ...]) -> bytes:
    """A PNG of a colour swatch and the name of every class."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=(c[0] / 255, c[1] / 255, c[2] / 255), edgecolor="black", label=f"{i}  {n}")
               for i, (n, c) in enumerate(zip(names, palette))]
    fig = plt.figure(figsize=(3.2, 0.3 + 0.3 * len(names)), dpi=100)
    fig.legend(handles=handles, loc="center", frameon=False, title="class", alignment="left")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


@dataclass
class Style:
    """What every output of a run shares: the classes, their colours, the overlay opacity, provenance tags."""

    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    alpha: float
    tags: dict[str, str]
    legend: bytes


class Outputs:
    """Receives a scene's class indices band of rows by band of rows, in order; `commit` makes the files
    appear under their names, `abort` removes whatever was started."""

    def __init__(self, out: Path, scene: Scene, style: Style) -> None:
        self.out, self.scene, self.style = out, scene, style
        self.stem = scene.path.stem

    def write(self, top: int, labels: np.ndarray) -> None:
        raise NotImplementedError

    def commit(self) -> list[Path]:
        raise NotImplementedError

    def abort(self) -> None:
        pass

    def _legend(self) -> Path:
        path = self.out / f"{self.stem}_legend.png"
        write_bytes(path, self.style.legend)
        return path


class PngOutputs(Outputs):
    """Whole-image PNGs: <stem>_mask.png, <stem>_color.png, <stem>_overlay.png."""

    def __init__(self, out: Path, scene: Scene, style: Style) -> None:
        super().__init__(out, scene, style)
        self.mask = np.empty((scene.height, scene.width), dtype=np.uint8)

    def write(self, top: int, labels: np.ndarray) -> None:
        self.mask[top:top + len(labels)] = labels

    def commit(self) -> list[Path]:
        color = colorize(self.mask, self.style.palette)
        rgb = self.scene.read(0, self.scene.height).permute(1, 2, 0).numpy()
        # Created only once there is something to put in it: a failure on the first image leaves nothing.
        self.out.mkdir(parents=True, exist_ok=True)
        paths = [self.out / f"{self.stem}_{kind}.png" for kind in ("mask", "color", "overlay")]
        save_png(self.mask, paths[0])
        save_png(color, paths[1])
        save_png(overlay(rgb, color, self.style.alpha), paths[2])
        return paths + [self._legend()]


class GeoTiffOutputs(Outputs):
    """Georeferenced GeoTIFFs written by rows of 256 x 256 tiles as bands of rows arrive: <stem>_mask.tif
    (uint8 class indices, colour table, nodata 255 where the input has none), <stem>_color.tif and
    <stem>_overlay.tif (RGB); the input's CRS, transform (or GCPs, RPCs) and size; deflate; class tags."""

    def __init__(self, out: Path, scene: RasterScene, style: Style) -> None:
        super().__init__(out, scene, style)
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        src = scene.src
        self.created_out = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        self.final = {kind: out / f"{self.stem}_{kind}.tif" for kind in ("mask", "color", "overlay")}
        # util.io.atomic_paths' temporary names and commit: these files stay open across calls.
        self.tmp = {kind: temporary_path(p) for kind, p in self.final.items()}
        base = {"driver": "GTiff", "width": scene.width, "height": scene.height, "dtype": "uint8",
                "tiled": True, "blockxsize": TILE, "blockysize": TILE, "compress": "deflate",
                "BIGTIFF": "IF_SAFER"}
        if not src.transform.is_identity or src.crs is not None:
            base.update(crs=src.crs, transform=src.transform)
        self.ds = {}
        try:
            with warnings.catch_warnings():  # an input georeferenced by GCPs alone has no transform
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.ds["mask"] = rasterio.open(self.tmp["mask"], "w", count=1, **base,
                                                nodata=IGNORE_INDEX if scene.has_mask else None)
                for kind in ("color", "overlay"):
                    self.ds[kind] = rasterio.open(self.tmp[kind], "w", count=3, photometric="RGB", predictor=2,
                                                  **base)
            colormap = {c: (0, 0, 0, 0) for c in range(256)}
            colormap.update({c: (*rgb, 255) for c, rgb in enumerate(style.palette)})
            self.ds["mask"].write_colormap(1, colormap)
            self.ds["mask"].set_band_description(1, "class")
            for kind in ("color", "overlay"):
                for band, name in enumerate(("red", "green", "blue"), 1):
                    self.ds[kind].set_band_description(band, name)
            for ds in self.ds.values():
                if src.transform.is_identity and src.gcps[0]:
                    ds.gcps = src.gcps
                if src.rpcs is not None:
                    ds.rpcs = src.rpcs
                ds.update_tags(**style.tags)
        except BaseException:
            self.abort()
            raise
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0
        self.written = 0

    def write(self, top: int, labels: np.ndarray) -> None:
        assert top == self.written + self.pending_rows, "bands of rows must arrive in order"
        self.pending.append(labels)
        self.pending_rows += len(labels)
        if self.pending_rows >= TILE:
            block = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
            full = self.pending_rows // TILE * TILE
            self._write_block(block[:full])
            rest = block[full:]
            self.pending, self.pending_rows = ([rest.copy()] if len(rest) else []), len(rest)

    def _write_block(self, labels: np.ndarray) -> None:
        from rasterio.windows import Window

        top, rows, width = self.written, len(labels), self.scene.width
        self.ds["mask"].write(labels, 1, window=Window(0, top, width, rows))
        rgb = self.scene.read(top, top + rows).numpy()
        for x0 in range(0, width, COLUMNS):
            x1 = min(x0 + COLUMNS, width)
            color = colorize(labels[:, x0:x1], self.style.palette)
            blend = overlay(rgb[:, :, x0:x1].transpose(1, 2, 0), color, self.style.alpha)
            window = Window(x0, top, x1 - x0, rows)
            self.ds["color"].write(color.transpose(2, 0, 1), window=window)
            self.ds["overlay"].write(blend.transpose(2, 0, 1), window=window)
        self.written += rows

    def commit(self) -> list[Path]:
        if self.pending_rows:
            self._write_block(np.concatenate(self.pending))
            self.pending, self.pending_rows = [], 0
        assert self.written == self.scene.height, (self.written, self.scene.height)
        for ds in self.ds.values():
            ds.close()
        commit(list(self.tmp.values()), list(self.final.values()))
        return list(self.final.values()) + [self._legend()]

    def abort(self) -> None:
        for ds in self.ds.values():
            try:
                ds.close()
            except Exception:  # noqa: BLE001 - closing a half-written file may fail as well; it goes anyway
                pass
        for path in self.tmp.values():
            path.unlink(missing_ok=True)
        if self.created_out:
            try:
                self.out.rmdir()  # only if nothing else is in it
            except OSError:
                pass


# ----------------------------------------------------------------------------------------------------------
# Prediction


@dataclass(frozen=True)
class Settings:
    mode: str
    window: int
    stride: int
    blend: str
    batch_size: int


def resolve_settings(cfg: Config, given: set[str]) -> Settings:
    """Mode and blend: the command line's (`given` holds the eval keys it set), else predict's own defaults
    (sliding_window, gaussian); window, stride and batch size: the config's, flags included."""
    window, stride = resolve_window(cfg)
    return Settings(mode=cfg.eval.mode if "mode" in given else PREDICT_MODE, window=window, stride=stride,
                    blend=cfg.eval.blend if "blend" in given else PREDICT_BLEND, batch_size=cfg.eval.batch_size)


def planned_windows(path: Path, settings: Settings) -> int:
    if settings.mode == "original":
        return 1
    size = scene_size(path)
    return count_windows(*size, settings.window, settings.stride) if size else 0


def predict_scene(model: Model, scene: Scene, outputs: Outputs, settings: Settings, device: torch.device,
                  amp_dtype: torch.dtype | None, bar: tqdm) -> None:
    """Run the model over `scene` and hand its class indices to `outputs`, band of rows by band of rows."""
    if settings.mode == "original":
        img = normalize(scene.read(0, scene.height).to(device).unsqueeze(0))
        bands = iter([(0, predict_logits(model, img, "original", amp_dtype=amp_dtype)[0])])
        bar.update(1)
    else:
        bands = predict_rows(model, scene.read, scene.height, scene.width, settings.window, settings.stride,
                             settings.batch_size, settings.blend, amp_dtype, device, transform=normalize,
                             progress=bar.update)
    for top, probs in bands:
        labels = probs.argmax(0).to(torch.uint8).cpu().numpy()
        valid = scene.valid(top, top + labels.shape[0])
        if valid is not None:
            labels[~valid] = IGNORE_INDEX
        outputs.write(top, labels)


def predict_files(model: Model, paths: list[Path], out: Path, cfg: Config, device: torch.device,
                  settings: Settings, alpha: float = 0.5, checkpoint: str = "") -> list[str]:
    """Write the outputs of every scene into `out`; a scene that fails is reported and skipped. Returns the
    failures' messages, in order."""
    import rasterio
    from rasterio.errors import RasterioError

    info = DATASETS[cfg.dataset.name]
    tags = {"CLASS_NAMES": ",".join(info.class_names),
            **{f"CLASS_{c}": name for c, name in enumerate(info.class_names)},
            "CLASS_COLORS": ";".join(",".join(map(str, rgb)) for rgb in info.palette),
            "NODATA_CLASS": str(IGNORE_INDEX), "DATASET": info.name, "CHECKPOINT": Path(checkpoint).name,
            "MODE": settings.mode, "BLEND": settings.blend if settings.mode == "sliding_window" else "",
            "WINDOW": str(settings.window), "STRIDE": str(settings.stride),
            "TIFFTAG_SOFTWARE": "RS-MTDF eval/predict.py"}
    style = Style(info.class_names, info.palette, alpha, tags, legend_png(info.class_names, info.palette))
    amp_dtype = autocast_dtype(cfg.train.precision, device)
    plan = [planned_windows(p, settings) for p in paths]
    failures: list[str] = []
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 2**20), \
            tqdm(total=sum(plan), desc="predict", unit="win", dynamic_ncols=True) as bar:
        for path, planned in zip(paths, plan):
            bar.set_postfix_str(path.name, refresh=False)
            start = bar.n
            scene: Scene | None = None
            outputs: Outputs | None = None
            try:
                scene = open_scene(path)
                if isinstance(scene, RasterScene) and scene.src.count > 3:
                    tqdm.write(f"note: {path} has {scene.src.count} bands; bands 1-3 are read as red, green, "
                               f"blue", file=sys.stderr)
                if isinstance(scene, RasterScene) and scene.georeferenced:
                    outputs = GeoTiffOutputs(out, scene, style)
                else:
                    outputs = PngOutputs(out, scene, style)
                predict_scene(model, scene, outputs, settings, device, amp_dtype, bar)
                outputs.commit()
            except (UserError, OSError, ValueError, RasterioError) as e:
                if outputs is not None:
                    outputs.abort()
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        usage="%(prog)s --config CFG --checkpoint CKPT --out DIR [options] INPUT... [key.sub=value ...]",
        epilog="INPUT: image files (GeoTIFF/TIFF, PNG, JPEG, VRT), folders of them, or @LIST files (one path a "
               "line). A georeferenced input gives GeoTIFFs with its CRS and transform; others give PNGs. "
               "A scene that fails is skipped; the run then exits with status 2 naming how many failed.")
    add_config_args(parser)
    parser.add_argument("--checkpoint", required=True, help="checkpoint file (.pth) written by train.py")
    parser.add_argument("--out", required=True,
                        help="output folder (created when the first scene is written; never read as input)")
    parser.add_argument("--list", action="append", default=[], metavar="FILE",
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
    flags = {"eval.mode": args.mode, "eval.window": args.window, "eval.stride": args.stride,
             "eval.blend": args.blend, "eval.weights": args.weights, "eval.batch_size": args.batch_size}
    cfg = config_from_args(args, flags)
    given = {k.split(".", 1)[1] for k, v in flags.items() if v is not None}
    given |= {a.split("=", 1)[0].split(".", 1)[1] for a in args.overrides if a.startswith("eval.")}
    settings = resolve_settings(cfg, given)
    out = Path(args.out)
    paths = collect_inputs(inputs, out)
    check_output_folder(out, "--out")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = load_model(cfg, args.checkpoint, cfg.eval.weights, device)
    failures = predict_files(model, paths, out, cfg, device, settings, args.alpha, args.checkpoint)
    written = len(paths) - len(failures)
    if failures:
        raise DataError(f"{len(failures)} of {len(paths)} scene(s) failed (first: {failures[0]}); "
                        f"{written} written to {out}")
    print(f"{written} scene(s) written to {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
