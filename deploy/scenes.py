"""Predict's scenes: reading a scene's red, green and blue as the model's 8-bit input, and which of its pixels
hold data, as the file declares them or the command line says (deploy/inputs.py finds the files).

Bands. A TIFF or VRT (read through GDAL) is read by what its bands declare (their colour interpretation):
bands declared red, green and blue are read as such, in whatever positions; bands that declare no colour
(undefined, gray) are read as red, green, blue from bands 1-3, with a note; a scene declaring another colour
model (YCbCr, CMYK, HLS, a palette) or only part of red, green, blue is refused. `--bands R,G,B` (1-based,
as GDAL numbers them) overrides all of that, and is the way to read a 1- or 2-band scene. A PNG or JPEG
(read through PIL) is read as training reads it (dataset.images.rgb_array).

Scaling (`--scale`). The model takes 8-bit RGB. 8-bit bands are read as they are unless a rule is asked
for; other types (16-bit, 32-bit, float) are stretched by default (`auto`) from the 2nd to the 98th
percentile of each band (`percentile`), as GIS viewers show such scenes, from a bounded sample of the
scene's pixels that hold data (a grid of windows over the scene; where its data is too small a part of it for
the grid to find enough, every so many of its pixels holding data, read over the whole scene). `minmax` takes
the sample's extremes, `LOW,HIGH` fixed values for every band, `none` the values as they are (clipped to
0-255). The rule and the numbers are in `Scene.tags`.

No data. A TIFF's nodata value or mask band marks no data, as GDAL reads them. A band declared alpha marks no
data only where the file really means it: when it holds nothing but 0 and its type's maximum (GDAL declares
band 4 of any 4-band 8-bit GeoTIFF alpha by default, near-infrared included); otherwise it is data, not read,
and a note says so. A PNG's alpha (RGBA, LA, PA, or a transparent colour) of only 0 and 255 marks no data;
any other alpha is ignored, with a note. What was read as RGB and as no data is in `Scene.tags`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from dataset.images import rgb_array
from deploy.inputs import PIL_SUFFIXES
from util.errors import DataError, short_reason
from util.io import open_image

if TYPE_CHECKING:
    from rasterio.io import DatasetReader
    from rasterio.windows import Window

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
# A stretch is computed from at most (16 x 32)^2 = 262,144 pixels per band: the whole of a scene that small,
# else a grid of 16 x 16 full-resolution windows of 32 pixels (a few MB read on any scene, spread over it).
STRETCH_GRID = 16
STRETCH_WINDOW = 32
STRETCH_PIXELS = (STRETCH_GRID * STRETCH_WINDOW) ** 2
# Where those windows hold fewer pixels with data than this (a large scene whose data is a small part of it),
# the sample is taken from the whole scene instead, read SCAN_PIXELS at a time: a stretch is never computed from
# a handful of pixels, nor a scene refused while it holds data.
MIN_STRETCH_PIXELS = 4096
SCAN_PIXELS = 1 << 20
DEFAULT_PERCENTILES = (2.0, 98.0)


# ----------------------------------------------------------------------------------------------------------
# How scenes are read: --bands, --scale (parsed by deploy/predict.py)


@dataclass(frozen=True)
class Scale:
    """How pixel values become the model's 0..255 (--scale): `rule` auto, percentile, minmax, none or range;
    `low` and `high` are the percentiles (percentile) or the values (range)."""

    rule: str = "auto"
    low: float = 0.0
    high: float = 0.0


@dataclass(frozen=True)
class Reading:
    """How scenes are read: the bands read as red, green, blue (None: as the file declares) and the scaling."""

    bands: tuple[int, int, int] | None = None
    scale: Scale = Scale()


DEFAULT_READING = Reading()  # as the file declares; 8-bit as it is, other types stretched


# ----------------------------------------------------------------------------------------------------------
# Stretching to 8 bits


@dataclass(frozen=True)
class Stretch:
    """Each band's [low, high] mapped linearly onto 0..255 (clipped, rounded; NaN to 0), and the rule's name."""

    rule: str
    low: tuple[float, ...]
    high: tuple[float, ...]

    def apply(self, data: np.ndarray) -> np.ndarray:
        """(bands, rows, cols) values -> uint8."""
        low = np.array(self.low, np.float32).reshape(-1, 1, 1)
        gain = (255 / np.maximum(np.subtract(self.high, self.low), 1e-12)).astype(np.float32).reshape(-1, 1, 1)
        out = (data.astype(np.float32, copy=False) - low) * gain
        np.clip(np.rint(out, out=out), 0, 255, out=out)
        return np.nan_to_num(out, copy=False).astype(np.uint8)

    def tags(self) -> dict[str, str]:
        """The rule and its numbers per band read (round-trip precision), for the outputs' metadata."""
        return {"INPUT_SCALE": self.rule, "INPUT_SCALE_LOW": ",".join(repr(float(v)) for v in self.low),
                "INPUT_SCALE_HIGH": ",".join(repr(float(v)) for v in self.high)}

    def note(self, dtypes: str) -> str:
        """One note: how pixels of `dtypes` became 8 bits."""
        ranges = ", ".join(f"{low:g}-{high:g}" for low, high in zip(self.low, self.high))
        return f"{dtypes} pixels stretched to 0-255 by {self.rule} ({ranges})"


def choose_stretch(scale: Scale, dtypes: set[str], sample: Callable[[], np.ndarray]) -> Stretch | None:
    """The stretch `scale` asks for bands of `dtypes` (None: read as they are, 8-bit); `sample()` gives the
    (3, pixels) values of pixels holding data that percentile and minmax are computed from."""
    eight_bit = dtypes == {"uint8"}
    if scale.rule in ("auto", "none") and eight_bit:
        return None
    if scale.rule == "none":
        return Stretch("none", (0.0,) * 3, (255.0,) * 3)
    if scale.rule == "range":
        return Stretch(f"range {scale.low:g},{scale.high:g}", (scale.low,) * 3, (scale.high,) * 3)
    values = sample()
    if scale.rule == "minmax":
        return Stretch("minmax", tuple(values.min(1)), tuple(values.max(1)))
    low, high = (scale.low, scale.high) if scale.rule == "percentile" else DEFAULT_PERCENTILES
    lows, highs = np.percentile(values, [low, high], axis=1)
    return Stretch(f"percentile {low:g},{high:g}", tuple(lows), tuple(highs))


# ----------------------------------------------------------------------------------------------------------
# Scenes


class Scene:
    """An opened input: its size, rows of RGB on demand, which pixels hold data, its georeference, and what was
    read as what (`rgb_source`, `validity_source`, `stretch`, `notes`)."""

    path: Path
    height: int
    width: int
    georeferenced = False
    rgb_source = "1,2,3"
    validity_source: str | None = None  # what marks no data; None: every pixel holds data
    declared = ""
    dtypes = "uint8"
    stretch: Stretch | None = None  # None: 8-bit values read as they are

    def __init__(self, path: Path) -> None:
        self.path = path
        self.notes: list[str] = []

    def read(self, top: int, bottom: int) -> torch.Tensor:
        """Rows [top, bottom) as (3, rows, width) uint8."""
        raise NotImplementedError

    def valid(self, top: int, bottom: int) -> np.ndarray | None:
        """Rows [top, bottom) of the data mask (False: no data), or None when every pixel holds data."""
        return None

    def metres_per_pixel(self) -> float | None:
        """The ground size of a pixel in metres where the scene's georeference gives it, else None."""
        return None

    def note(self) -> str:
        """The one line that tells how the scene was read where that needs saying, else ''."""
        return f"note: {self.path}: {'; '.join(self.notes)}" if self.notes else ""

    def tags(self) -> dict[str, str]:
        """What was read as red, green, blue, how it was scaled and what marks no data, for the outputs' metadata."""
        tags = {"INPUT_RGB_BANDS": self.rgb_source, "INPUT_VALIDITY": self.validity_source or "none",
                "INPUT_DATA_TYPE": self.dtypes}
        tags.update(self.stretch.tags() if self.stretch else {"INPUT_SCALE": "none (8-bit, read as it is)"})
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
                        f"blue; convert the scene to RGB, or choose bands with --bands")
    partial = [name for name in declared if name in RGB]
    if partial or any(name not in NO_COLOUR for name in declared[:3]):
        raise DataError(f"{path}: its bands declare {listing}: predict cannot tell red, green, blue from that "
                        f"(it needs bands declared red, green, blue, bands 1-3 declaring no colour, or --bands)")
    return (1, 2, 3), f"its bands declare no colours ({listing}): bands 1, 2, 3 read as red, green, blue"


def sample_windows(height: int, width: int, grid: int = ALPHA_GRID, size: int = ALPHA_WINDOW) -> Iterator[Window]:
    """A grid of up to grid x grid windows of `size` pixels spread over the scene."""
    from rasterio.windows import Window

    rows, cols = min(size, height), min(size, width)
    for top in np.unique(np.linspace(0, height - rows, grid).astype(int)):
        for left in np.unique(np.linspace(0, width - cols, grid).astype(int)):
            yield Window(int(left), int(top), cols, rows)


def stretch_windows(height: int, width: int) -> Iterator[Window]:
    """The windows a stretch is computed from: the whole scene when it is small, else a grid of windows."""
    from rasterio.windows import Window

    if height * width <= STRETCH_PIXELS:
        return iter([Window(0, 0, width, height)])
    return sample_windows(height, width, STRETCH_GRID, STRETCH_WINDOW)


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
    """A (Geo)TIFF or VRT read through GDAL by windows of rows: the bands `bands` (1-based) as red, green, blue,
    stretched to 8 bits by `stretch`; no data where its nodata value, its mask band or a true alpha band
    (`alpha_band`) says, and where a float band read is not finite."""

    def __init__(self, path: Path, reading: Reading = DEFAULT_READING) -> None:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        super().__init__(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self.src = rasterio.open(path)
        try:
            self._inspect(reading)
        except BaseException:
            self.src.close()
            raise

    def _inspect(self, reading: Reading) -> None:
        """Choose the bands to read, what marks no data and how values become 8 bits; refuse what cannot be read."""
        src, path = self.src, self.path
        declared = tuple(c.name for c in src.colorinterp)
        self.declared = ",".join(declared)
        self.bands = self._given_bands(reading.bands) if reading.bands else self._declared_bands(declared)
        dtypes = {src.dtypes[b - 1] for b in self.bands}
        if any(dtype.startswith("complex") for dtype in dtypes):
            raise DataError(f"{path} holds {', '.join(sorted(dtypes))} pixels; predict reads real-valued bands")
        self.dtypes = ",".join(sorted(dtypes))
        self.height, self.width = src.height, src.width
        self.georeferenced = (src.crs is not None or not src.transform.is_identity or bool(src.gcps[0])
                              or src.rpcs is not None)
        self.rgb_source = ",".join(map(str, self.bands))
        self.gdal_mask = gdal_mask_source(src, self.bands)
        alpha = next((b for b, name in enumerate(declared, 1) if name == "alpha" and b not in self.bands), None)
        self.alpha_band = alpha if alpha is not None and self._alpha_is_mask(alpha) else None
        sources = [self.gdal_mask] if self.gdal_mask else []
        sources += [f"alpha band {self.alpha_band}"] if self.alpha_band else []
        # NaN (and inf) is how float rasters leave pixels without a measurement, declared nodata or not: it
        # has no 8-bit value, so it is no data rather than whatever the stretch would make of it.
        self.float_bands = any(np.dtype(dtype).kind == "f" for dtype in dtypes)
        sources += ["non-finite values"] if self.float_bands else []
        self.validity_source = ", ".join(sources) or None
        unread = [b for b in range(1, src.count + 1) if b not in self.bands and b != alpha]
        if unread and not reading.bands:
            self.notes.append(f"band{'s' * (len(unread) > 1)} {', '.join(map(str, unread))} "
                              f"({', '.join(declared[b - 1] for b in unread)}) not read")
        self.stretch = choose_stretch(reading.scale, dtypes, self._sample)
        if self.stretch:
            self.notes.append(self.stretch.note(self.dtypes))

    def _given_bands(self, bands: tuple[int, int, int]) -> tuple[int, int, int]:
        """The bands of --bands, checked against the scene's band count."""
        beyond = [b for b in bands if b > self.src.count]
        if beyond:
            raise DataError(f"{self.path} has {self.src.count} band(s); --bands {','.join(map(str, bands))} "
                            f"names band {beyond[0]}")
        return bands

    def _declared_bands(self, declared: tuple[str, ...]) -> tuple[int, int, int]:
        """The bands read as red, green, blue by what they declare (`rgb_bands`), with its note."""
        if self.src.count < 3:
            raise DataError(f"{self.path} has {self.src.count} band(s); predict needs red, green, blue: choose "
                            f"them with --bands (e.g. --bands 1,1,1 for one grey band)")
        bands, note = rgb_bands(self.path, declared)
        self.notes += [note] if note else []
        return bands

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

    def _sample(self) -> np.ndarray:
        """(3, pixels) float64 values of the bands read that hold data, over `stretch_windows`; where those find
        fewer than MIN_STRETCH_PIXELS (a large scene whose data covers a small part of it), over the whole
        scene (`_scan_sample`). A DataError only where no pixel of the scene holds data."""
        windows = list(stretch_windows(self.height, self.width))
        values = np.concatenate([self._data_values(w) for w in windows], axis=1)
        if values.shape[1] < MIN_STRETCH_PIXELS and len(windows) > 1:
            found = values.shape[1]
            values = self._scan_sample()
            self.notes.append(f"the stretch's sample grid found {found:,} pixels holding data: the stretch was "
                              f"taken from {values.shape[1]:,} read over the whole scene")
        if not values.shape[1]:
            raise DataError(f"{self.path}: no pixel holding data to stretch its {self.dtypes} values by; give "
                            f"the range with --scale LOW,HIGH")
        return values

    def _data_values(self, window: Window) -> np.ndarray:
        """(3, pixels) float64 values of `window`'s pixels that hold data (all three bands finite)."""
        values = self.src.read(self.bands, window=window, out_dtype="float64").reshape(3, -1)
        keep = np.isfinite(values).all(axis=0)
        valid = self._valid(window)
        if valid is not None:
            keep &= valid.ravel()
        return values[:, keep]

    def _scan_sample(self) -> np.ndarray:
        """Every step-th pixel holding data over the whole scene, read by bands of rows, the step doubling as
        needed to keep at most STRETCH_PIXELS of them: (3, pixels) float64."""
        from rasterio.windows import Window

        rows = max(1, SCAN_PIXELS // self.width)
        values, order = np.empty((3, 0)), np.empty(0, np.int64)
        step, seen = 1, 0
        for top in range(0, self.height, rows):
            found = self._data_values(Window(0, top, self.width, min(rows, self.height - top)))
            index = np.arange(seen, seen + found.shape[1])
            seen += found.shape[1]
            pick = index % step == 0
            values, order = np.concatenate([values, found[:, pick]], axis=1), np.concatenate([order, index[pick]])
            while values.shape[1] > STRETCH_PIXELS:
                step *= 2
                pick = order % step == 0
                values, order = values[:, pick], order[pick]
        return values

    def read(self, top: int, bottom: int) -> torch.Tensor:
        from rasterio.windows import Window

        window = Window(0, top, self.width, bottom - top)
        if self.stretch is None:
            return torch.from_numpy(self.src.read(self.bands, window=window))
        return torch.from_numpy(self.stretch.apply(self.src.read(self.bands, window=window, out_dtype="float32")))

    def valid(self, top: int, bottom: int) -> np.ndarray | None:
        from rasterio.windows import Window

        return self._valid(Window(0, top, self.width, bottom - top))

    def _valid(self, window: Window) -> np.ndarray | None:
        """The data mask of `window` (False: no data), or None when every pixel holds data."""
        if self.validity_source is None:
            return None
        valid = np.ones((int(window.height), int(window.width)), dtype=bool)
        if self.gdal_mask:
            valid &= self.src.dataset_mask(window=window) > 0
        if self.alpha_band:
            valid &= self.src.read(self.alpha_band, window=window) > 0
        if self.float_bands:
            valid &= np.isfinite(self.src.read(self.bands, window=window)).all(axis=0)
        return valid

    def metres_per_pixel(self) -> float | None:
        """The mean of a pixel's width and height in metres, where a geotransform places the scene in a projected
        CRS (None in a geographic one: degrees are no fixed ground size, nor are GCPs or RPCs)."""
        from rasterio.errors import CRSError

        crs = self.src.crs
        if crs is None or not crs.is_projected or self.src.transform.is_identity:
            return None
        try:
            _, factor = crs.linear_units_factor
        except CRSError:
            return None
        width, height = self.src.res
        return (width + height) / 2 * factor

    def close(self) -> None:
        self.src.close()


def open_scene(path: Path, reading: Reading = DEFAULT_READING) -> Scene:
    """The scene in `path`, read as `reading` says; an unreadable file is a DataError naming it."""
    if path.suffix.lower() in PIL_SUFFIXES:
        if reading != DEFAULT_READING:
            raise DataError(f"{path}: --bands and --scale are for TIFF and VRT scenes; a PNG or JPEG is read as "
                            f"training reads it (predict it without them)")
        return ArrayScene(path)
    from rasterio.errors import RasterioError

    try:
        return RasterScene(path, reading)
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
