"""Predict's inputs: finding the scene files, and reading a scene's red, green and blue and which of its pixels
hold data, as the file declares them.

Bands. A TIFF or VRT (read through GDAL) is read by what its bands declare (their colour interpretation):
bands declared red, green and blue are read as such, in whatever positions; bands that declare no colour
(undefined, gray) are read as red, green, blue from bands 1-3, with a note; a scene declaring another colour
model (YCbCr, CMYK, HLS, a palette) or only part of red, green, blue is refused. A PNG or JPEG (read through
PIL) is read as training reads it (dataset.images.rgb_array).

No data. A TIFF's nodata value or mask band marks no data, as GDAL reads them. A band declared alpha marks no
data only where the file really means it: when it holds nothing but 0 and its type's maximum (GDAL declares
band 4 of any 4-band 8-bit GeoTIFF alpha by default, near-infrared included); otherwise it is data, not read,
and a note says so. A PNG's alpha (RGBA, LA, PA, or a transparent colour) of only 0 and 255 marks no data;
any other alpha is ignored, with a note. What was read as RGB and as no data is in `Scene.tags`.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from dataset.images import rgb_array
from util.cli import user_path
from util.errors import DataError, short_reason
from util.io import open_image

if TYPE_CHECKING:
    from rasterio.io import DatasetReader
    from rasterio.windows import Window

PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt")
IMAGE_SUFFIXES = PIL_SUFFIXES + RASTER_SUFFIXES
# What predict writes: a file named like this is an output of an earlier run, never an input.
OUTPUT_KINDS = ("mask", "color", "overlay", "legend")
RGB = ("red", "green", "blue")
NO_COLOUR = ("undefined", "gray")
# Colour models whose bands are not red, green and blue (GDAL already reads JPEG-compressed YCbCr and CMYK
# TIFFs as RGB; these are what other files, VRTs or their metadata still declare).
OTHER_MODELS = ("palette", "hue", "saturation", "lightness", "cyan", "magenta", "yellow", "black", "Y", "Cb", "Cr")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# Whether a band declared alpha is a mask is judged on a grid of full-resolution windows: cheap on any scene,
# and never on overviews, which average an alpha's edges into values between 0 and the maximum.
ALPHA_GRID = 8
ALPHA_WINDOW = 64


# ----------------------------------------------------------------------------------------------------------
# Finding the inputs


def is_output_name(path: Path) -> bool:
    """Named like one of predict's outputs: <stem>_mask/_color/_overlay/_legend, or legend."""
    stem = path.stem.lower()
    return stem == "legend" or any(stem.endswith(f"_{kind}") for kind in OUTPUT_KINDS)


def is_inside(path: Path, folder: Path | None) -> bool:
    """Whether `path` lies inside `folder` (False when there is no folder)."""
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
    for text in inputs:
        if text.startswith("@") and not Path(text).exists():
            paths += collect_inputs_from_list(Path(user_path(text[1:])))
        else:
            paths += expand_input(Path(user_path(text)))
    first: dict[Path, Path] = {}
    for path in paths:
        first.setdefault(path.resolve(), path)
    unique = list(first.values())
    scenes = [path for path in unique if not (is_inside(path, out) or is_output_name(path))]
    skipped = len(unique) - len(scenes)
    if skipped:
        print(f"note: left out {skipped} file(s) inside --out or named like predict's outputs "
              f"(*_{', *_'.join(OUTPUT_KINDS)}, legend)", file=sys.stderr)
    if not scenes:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {' '.join(inputs)}"
                        + (" (files inside --out and predict's own outputs are not inputs)" if skipped else ""))
    check_distinct_stems(scenes)
    return scenes


def check_distinct_stems(paths: list[Path]) -> None:
    """A DataError naming two scenes whose outputs would have the same names."""
    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems:
            raise DataError(f"{path} and {stems[path.stem]} would write the same outputs ({path.stem}_*)")
        stems[path.stem] = path


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
    return [p for entry in read_list(list_file) for p in expand_input(Path(user_path(entry)), list_file)]


# ----------------------------------------------------------------------------------------------------------
# Scenes


class Scene:
    """An opened input: its size, rows of RGB on demand, which pixels hold data, its georeference, and what was
    read as what (`rgb_source`, `validity_source`, `notes`)."""

    path: Path
    height: int
    width: int
    georeferenced = False
    rgb_source = "1,2,3"
    validity_source: str | None = None  # what marks no data; None: every pixel holds data
    declared = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.notes: list[str] = []

    def read(self, top: int, bottom: int) -> torch.Tensor:
        """Rows [top, bottom) as (3, rows, width) uint8."""
        raise NotImplementedError

    def valid(self, top: int, bottom: int) -> np.ndarray | None:
        """Rows [top, bottom) of the data mask (False: no data), or None when every pixel holds data."""
        return None

    def note(self) -> str:
        """The one line that tells how the scene was read where that needs saying, else ''."""
        return f"note: {self.path}: {'; '.join(self.notes)}" if self.notes else ""

    def tags(self) -> dict[str, str]:
        """What was read as red, green, blue and as the validity mask, for the outputs' metadata."""
        tags = {"INPUT_RGB_BANDS": self.rgb_source, "INPUT_VALIDITY": self.validity_source or "none"}
        if self.declared:
            tags["INPUT_COLOR_INTERPRETATION"] = self.declared
        if self.notes:
            tags["INPUT_NOTE"] = "; ".join(self.notes)
        return tags

    def close(self) -> None:
        """Release the file."""


def only_zero_and(values: np.ndarray, top: int) -> bool:
    """Whether every value is 0 or `top`: what an alpha band that is a validity mask holds."""
    return bool(((values == 0) | (values == top)).all())


def read_rgb(path: Path) -> np.ndarray:
    """A PNG/JPEG file as (H, W, 3) uint8 RGB; an unreadable file or a 1- or 2-band one is a DataError.

    Pixels are read as training reads them (dataset.images.rgb_array): 16-bit data only where 8-bit is exact.
    """
    try:
        with open_image(path) as im:
            bands, mode = len(im.getbands()), im.mode
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {short_reason(e)}") from None
    if mode not in ("P", "PA") and bands < 3:
        raise DataError(f"{path} has {bands} band(s) (mode {mode}); predict needs an RGB image")
    return rgb_array(path)


def read_alpha(path: Path) -> tuple[str, np.ndarray | None]:
    """A PNG's mode and its alpha as (H, W) uint8 (an alpha channel, or a transparent colour), None without one."""
    try:
        with open_image(path) as im:
            if im.mode in ALPHA_MODES:
                return im.mode, np.asarray(im.getchannel(im.getbands()[-1]))
            if "transparency" in im.info:
                return im.mode, np.asarray(im.convert("RGBA").getchannel("A"))
            return im.mode, None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {short_reason(e)}") from None


class ArrayScene(Scene):
    """A PNG or JPEG, read whole as training reads it; an alpha of only 0 and 255 marks no data."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        rgb = read_rgb(path)
        self.height, self.width = rgb.shape[:2]
        self._chw = torch.from_numpy(rgb).permute(2, 0, 1)
        mode, alpha = read_alpha(path)
        self.rgb_source = f"mode {mode} as RGB"
        self._valid = None if alpha is None else self._alpha_validity(alpha)

    def _alpha_validity(self, alpha: np.ndarray) -> np.ndarray | None:
        """Which pixels hold data by the alpha; a note where that matters."""
        if not only_zero_and(alpha, 255):
            self.notes.append("its alpha holds values other than 0 and 255: ignored, every pixel is predicted")
            return None
        if alpha.all():
            return None  # opaque: nothing to say
        self.validity_source = "alpha"
        self.notes.append("its alpha holds only 0 and 255: transparent pixels are no data (class 255)")
        return alpha > 0

    def read(self, top: int, bottom: int) -> torch.Tensor:
        return self._chw[:, top:bottom]

    def valid(self, top: int, bottom: int) -> np.ndarray | None:
        return None if self._valid is None else self._valid[top:bottom]


def rgb_bands(path: Path, declared: tuple[str, ...]) -> tuple[tuple[int, int, int], str]:
    """The 1-based bands read as red, green, blue by what the bands declare, and a note ('' for plain RGB);
    a DataError for bands that declare something else."""
    listing = ", ".join(declared)
    if all(colour in declared for colour in RGB):
        bands = (declared.index("red") + 1, declared.index("green") + 1, declared.index("blue") + 1)
        if bands == (1, 2, 3):
            return bands, ("red, green, blue read from bands 1, 2, 3, as declared" if len(declared) > 3 else "")
        return bands, f"red, green, blue read from bands {', '.join(map(str, bands))}, as declared ({listing})"
    other = [name for name in declared if name in OTHER_MODELS]
    if other:
        raise DataError(f"{path}: its bands declare {listing}: a colour model predict cannot read as red, green, "
                        f"blue; convert the scene to RGB")
    partial = [name for name in declared if name in RGB]
    if partial or any(name not in NO_COLOUR for name in declared[:3]):
        raise DataError(f"{path}: its bands declare {listing}: predict cannot tell red, green, blue from that "
                        f"(it needs bands declared red, green, blue, or bands 1-3 declaring no colour)")
    return (1, 2, 3), f"its bands declare no colours ({listing}): bands 1, 2, 3 read as red, green, blue"


def sample_windows(height: int, width: int) -> Iterator[Window]:
    """A grid of up to ALPHA_GRID x ALPHA_GRID windows of ALPHA_WINDOW pixels spread over the scene."""
    from rasterio.windows import Window

    rows, cols = min(ALPHA_WINDOW, height), min(ALPHA_WINDOW, width)
    for top in np.unique(np.linspace(0, height - rows, ALPHA_GRID).astype(int)):
        for left in np.unique(np.linspace(0, width - cols, ALPHA_GRID).astype(int)):
            yield Window(int(left), int(top), cols, rows)


def alpha_is_mask(src: DatasetReader, band: int) -> bool:
    """Whether `band` holds only 0 and its type's maximum (judged on `sample_windows`)."""
    dtype = np.dtype(src.dtypes[band - 1])
    if dtype.kind not in "ui":
        return False
    top = int(np.iinfo(dtype).max)
    return all(only_zero_and(src.read(band, window=w), top) for w in sample_windows(src.height, src.width))


def gdal_mask_source(src: DatasetReader, bands: tuple[int, ...]) -> str | None:
    """What GDAL's mask of `bands` is made of (a nodata value, a mask band), or None when there is none or
    GDAL makes it from an alpha band (which `alpha_is_mask` judges instead)."""
    from rasterio.enums import MaskFlags

    flags = [src.mask_flag_enums[b - 1] for b in bands]
    if not any(MaskFlags.all_valid not in f and MaskFlags.alpha not in f for f in flags):
        return None
    nodata = [src.nodatavals[b - 1] for b in bands if src.nodatavals[b - 1] is not None]
    return f"nodata value {nodata[0]:g}" if nodata else "mask band"


class RasterScene(Scene):
    """A (Geo)TIFF or VRT read through GDAL by windows of rows: the bands `bands` (1-based) as red, green, blue;
    no data where its nodata value, its mask band or a true alpha band (`alpha_band`) says."""

    def __init__(self, path: Path) -> None:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        super().__init__(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self.src = rasterio.open(path)
        try:
            self._inspect()
        except BaseException:
            self.src.close()
            raise

    def _inspect(self) -> None:
        """Choose the bands to read and what marks no data; refuse what cannot be read as 8-bit RGB."""
        src, path = self.src, self.path
        if src.count < 3:
            raise DataError(f"{path} has {src.count} band(s); predict needs an RGB image (3 bands, or more)")
        declared = tuple(c.name for c in src.colorinterp)
        self.declared = ",".join(declared)
        self.bands, rgb_note = rgb_bands(path, declared)
        dtypes = {src.dtypes[b - 1] for b in self.bands}
        if dtypes != {"uint8"}:
            raise DataError(f"{path} holds {', '.join(sorted(dtypes))} pixels; predict needs 8-bit RGB "
                            f"(convert it, e.g. gdal_translate -ot Byte -scale)")
        self.height, self.width = src.height, src.width
        self.georeferenced = (src.crs is not None or not src.transform.is_identity or bool(src.gcps[0])
                              or src.rpcs is not None)
        self.rgb_source = ",".join(map(str, self.bands))
        self.notes += [rgb_note] if rgb_note else []
        self.gdal_mask = gdal_mask_source(src, self.bands)
        alpha = next((b for b, name in enumerate(declared, 1) if name == "alpha"), None)
        self.alpha_band = alpha if alpha is not None and self._alpha_is_mask(alpha) else None
        sources = [self.gdal_mask] if self.gdal_mask else []
        sources += [f"alpha band {self.alpha_band}"] if self.alpha_band else []
        self.validity_source = ", ".join(sources) or None
        unread = [b for b in range(1, src.count + 1) if b not in self.bands and b != alpha]
        if unread:
            self.notes.append(f"band{'s' * (len(unread) > 1)} {', '.join(map(str, unread))} "
                              f"({', '.join(declared[b - 1] for b in unread)}) not read")

    def _alpha_is_mask(self, band: int) -> bool:
        """Whether `band`, declared alpha, is a validity mask (`alpha_is_mask`); a note either way."""
        dtype = np.dtype(self.src.dtypes[band - 1])
        top = np.iinfo(dtype).max if dtype.kind in "ui" else "its maximum"
        if alpha_is_mask(self.src, band):
            self.notes.append(f"band {band} is an alpha band (only 0 and {top}): its transparent pixels are no "
                              f"data (class 255)")
            return True
        self.notes.append(f"band {band} is declared alpha but holds values other than 0 and {top}: it is data, "
                          f"not a validity mask, and is not read")
        return False

    def read(self, top: int, bottom: int) -> torch.Tensor:
        from rasterio.windows import Window

        data = self.src.read(self.bands, window=Window(0, top, self.width, bottom - top))
        return torch.from_numpy(data)

    def valid(self, top: int, bottom: int) -> np.ndarray | None:
        if self.validity_source is None:
            return None
        from rasterio.windows import Window

        window = Window(0, top, self.width, bottom - top)
        valid = np.ones((bottom - top, self.width), dtype=bool)
        if self.gdal_mask:
            valid &= self.src.dataset_mask(window=window) > 0
        if self.alpha_band:
            valid &= self.src.read(self.alpha_band, window=window) > 0
        return valid

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
