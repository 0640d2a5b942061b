"""Predict's outputs: per scene the class mask, its colours in the dataset palette, the palette over the image
and a legend, as PNGs or, for a georeferenced input, as cloud-optimised GeoTIFFs a GIS opens in place.

Files appear under their names only once complete: a scene's PNGs are written whole and together
(util.io.write_files), GeoTIFFs by rows of tiles into temporary files (util.io.temporary_path), made
cloud-optimised by a copy through GDAL's COG driver (overviews and layout are GDAL's) and renamed over their
names by `commit`; `abort` removes whatever a failed scene started.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy.scenes import RasterScene, Scene
from eval.visualize import colorize, overlay
from util.catalog import IGNORE_INDEX
from util.io import commit, png_bytes, temporary_path, write_bytes, write_files

# GeoTIFF outputs: 256 x 256 tiles, written a full row of tiles at a time (each tile once, complete); the
# colour and overlay of a row of tiles are computed COLUMNS pixels at a time.
TILE = 256
COLUMNS = 2048
PICTURES = ("mask", "color", "overlay")
# The COG copy (GDAL's COG driver): the same tiles and compression, overviews halving the size down to one
# tile. Class indices must never be averaged: the mask's overviews take the nearest pixel, as do the colour
# map's (palette colours only, the mask's overview painted); the overlay is a picture, averaged.
COG_OPTIONS = {"BLOCKSIZE": TILE, "COMPRESS": "DEFLATE", "BIGTIFF": "IF_SAFER"}
COG_RESAMPLING = {"mask": "NEAREST", "color": "NEAREST", "overlay": "AVERAGE"}
COG_PREDICTOR = {"mask": "NO", "color": "YES", "overlay": "YES"}
# The COG driver builds overviews in `<its output>.ovr.tmp` beside it, deleted when done: a kill leaves one.
GDAL_OVERVIEW_SUFFIX = ".ovr.tmp"
# No data (class 255) has a rendering of its own, never a class's colour (DeepGlobe's "unknown" is black). The
# colour map paints it grey, in a value no class colour has in any band (`nodata_grey`), and declares that value
# its nodata value: a GIS shows it transparent, and no class colour is taken for it. The overlay's pixels are the
# image's, of any value, so no value can mark no data there without hiding data: it carries an alpha band, 0
# where no data. PNGs, which have no nodata value, carry an alpha channel (colour map and overlay).
PREFERRED_GREY = 128


def nodata_grey(palette: tuple[tuple[int, int, int], ...]) -> int:
    """The grey value nearest PREFERRED_GREY that no colour of `palette` has in any band (127 for LoveDA's)."""
    used = {value for rgb in palette for value in rgb}
    return min((v for v in range(1, 255) if v not in used), key=lambda v: (abs(v - PREFERRED_GREY), v))


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
    cog: bool  # GeoTIFFs cloud-optimised (--no-cog: plain tiled GeoTIFFs)

    @property
    def nodata_grey(self) -> int:
        return nodata_grey(self.palette)


class Outputs:
    """Receives a scene's class indices band of rows by band of rows, in order; `commit` makes the files
    appear under their names, `abort` removes whatever was started."""

    def __init__(self, out: Path, scene: Scene, style: Style) -> None:
        self.out, self.scene, self.style = out, scene, style
        self.stem = scene.path.stem

    def write(self, top: int, labels: np.ndarray) -> None:
        """Rows [top, top + len(labels)) of class indices, (rows, width) uint8."""
        raise NotImplementedError

    def commit(self) -> list[Path]:
        """Finish the files and put them under their names; returns their paths."""
        raise NotImplementedError

    def abort(self) -> None:
        """Remove what a failed scene started."""

    def pictures(self, labels: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The colour map and the overlay (H, W, 3) of class indices `labels` over the image `rgb` (H, W, 3), and
        where the scene can have no data, its alpha (H, W): 0 where no data (painted `nodata_grey`), else 255."""
        color = colorize(labels, self.style.palette)
        alpha = None
        if self.scene.validity_source:
            nodata = labels == IGNORE_INDEX
            color[nodata] = self.style.nodata_grey
            alpha = np.where(nodata, 0, 255).astype(np.uint8)
        return color, overlay(rgb, color, self.style.alpha), alpha

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
        rgb = self.scene.read(0, self.scene.height).permute(1, 2, 0).numpy()
        color, blend, alpha = self.pictures(self.mask, rgb)
        if alpha is not None:
            color, blend = np.dstack([color, alpha]), np.dstack([blend, alpha])
        tags = {**self.style.tags, **self.scene.tags()}  # the GeoTIFFs' tags, as PNG text
        # All four or none (the folder is made with them): a failure on the first image leaves nothing.
        return write_files(self.out, {f"{self.stem}_mask.png": png_bytes(self.mask, tags),
                                      f"{self.stem}_color.png": png_bytes(color, tags),
                                      f"{self.stem}_overlay.png": png_bytes(blend, tags),
                                      f"{self.stem}_legend.png": self.style.legend})


class GeoTiffOutputs(Outputs):
    """Georeferenced GeoTIFFs written by rows of 256 x 256 tiles as bands of rows arrive: <stem>_mask.tif
    (uint8 class indices, colour table, nodata 255 where the input has no data), <stem>_color.tif (RGB; no
    data grey, its nodata value) and <stem>_overlay.tif (RGB, and an alpha band where the input has no data);
    the input's CRS, transform (or GCPs, RPCs) and size; deflate; class tags and
    the scene's (which bands were read as RGB, how they were scaled, what marked no data). Once complete, each
    is copied as a COG (`make_cog`) unless the style says not to."""

    def __init__(self, out: Path, scene: RasterScene, style: Style) -> None:
        super().__init__(out, scene, style)
        self.raster = scene
        self.created_out = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        self.final = {kind: out / f"{self.stem}_{kind}.tif" for kind in PICTURES}
        # util.io.atomic_paths' temporary names and commit: these files stay open across calls. The tiled
        # GeoTIFFs are written where the COG copies read them from, or straight into the temporaries.
        self.tmp = {kind: temporary_path(p) for kind, p in self.final.items()}
        self.tiled = {kind: temporary_path(p.with_suffix(".tiled.tif")) if style.cog else self.tmp[kind]
                      for kind, p in self.final.items()}
        self.ds: dict = {}
        try:
            self._create()
        except BaseException:
            self.abort()
            raise
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0
        self.written = 0

    def _create(self) -> None:
        """Open the three temporary GeoTIFFs with the input's georeference, colour table, band names and tags."""
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        src = self.raster.src
        base = {"driver": "GTiff", "width": src.width, "height": src.height, "dtype": "uint8",
                "tiled": True, "blockxsize": TILE, "blockysize": TILE, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
        if not src.transform.is_identity or src.crs is not None:
            base.update(crs=src.crs, transform=src.transform)
        with warnings.catch_warnings():  # an input georeferenced by GCPs alone has no transform
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            holes = self.scene.validity_source is not None
            self.ds["mask"] = rasterio.open(self.tiled["mask"], "w", count=1, nodata=IGNORE_INDEX if holes else None,
                                            **base)
            self.ds["color"] = rasterio.open(self.tiled["color"], "w", count=3, photometric="RGB", predictor=2,
                                             nodata=self.style.nodata_grey if holes else None, **base)
            alpha = {"count": 4, "ALPHA": "YES"} if holes else {"count": 3}
            self.ds["overlay"] = rasterio.open(self.tiled["overlay"], "w", photometric="RGB", predictor=2, **alpha,
                                               **base)
        colormap = {c: (0, 0, 0, 0) for c in range(256)}
        colormap.update({c: (*rgb, 255) for c, rgb in enumerate(self.style.palette)})
        self.ds["mask"].write_colormap(1, colormap)
        self.ds["mask"].set_band_description(1, "class")
        for kind in ("color", "overlay"):
            for band, name in enumerate(("red", "green", "blue", "alpha")[:self.ds[kind].count], 1):
                self.ds[kind].set_band_description(band, name)
        for ds in self.ds.values():
            if src.transform.is_identity and src.gcps[0]:
                ds.gcps = src.gcps
            if src.rpcs is not None:
                ds.rpcs = src.rpcs
            ds.update_tags(**self.style.tags, **self.scene.tags())

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
        """Write whole rows of tiles of all three files, from the class indices of their rows."""
        from rasterio.windows import Window

        top, rows, width = self.written, len(labels), self.scene.width
        self.ds["mask"].write(labels, 1, window=Window(0, top, width, rows))
        rgb = self.scene.read(top, top + rows).numpy()
        for x0 in range(0, width, COLUMNS):
            x1 = min(x0 + COLUMNS, width)
            color, blend, alpha = self.pictures(labels[:, x0:x1], rgb[:, :, x0:x1].transpose(1, 2, 0))
            window = Window(x0, top, x1 - x0, rows)
            self.ds["color"].write(color.transpose(2, 0, 1), window=window)
            self.ds["overlay"].write(blend.transpose(2, 0, 1), indexes=[1, 2, 3], window=window)
            if alpha is not None:
                self.ds["overlay"].write(alpha, 4, window=window)
        self.written += rows

    def commit(self) -> list[Path]:
        if self.pending_rows:
            self._write_block(np.concatenate(self.pending))
            self.pending, self.pending_rows = [], 0
        assert self.written == self.scene.height, (self.written, self.scene.height)
        for ds in self.ds.values():
            ds.close()
        if self.style.cog:
            for kind in PICTURES:
                make_cog(self.tiled[kind], self.tmp[kind], kind)
                self.tiled[kind].unlink()
        legend = self._legend()  # before the maps appear: a scene's maps are never there without it
        commit(list(self.tmp.values()), list(self.final.values()))
        return list(self.final.values()) + [legend]

    def abort(self) -> None:
        for ds in self.ds.values():
            try:
                ds.close()
            except Exception:  # noqa: BLE001 - closing a half-written file may fail as well; it goes anyway
                pass
        for path in {*self.tiled.values(), *self.tmp.values()}:
            path.unlink(missing_ok=True)
            Path(f"{path}{GDAL_OVERVIEW_SUFFIX}").unlink(missing_ok=True)
        if self.created_out:
            try:
                self.out.rmdir()  # only if nothing else is in it
            except OSError:
                pass


def make_cog(tiled: Path, cog: Path, kind: str) -> None:
    """Copy the finished tiled GeoTIFF `tiled` to `cog` through GDAL's COG driver, with overviews fit for `kind`:
    georeference, colour table, nodata, band names and tags go along; GDAL reads it block by block."""
    import rasterio.shutil

    rasterio.shutil.copy(tiled, cog, driver="COG", OVERVIEW_RESAMPLING=COG_RESAMPLING[kind],
                         PREDICTOR=COG_PREDICTOR[kind], **COG_OPTIONS)


def open_outputs(out: Path, scene: Scene, style: Style) -> Outputs:
    """GeoTIFFs for a georeferenced scene, PNGs for any other."""
    if isinstance(scene, RasterScene) and scene.georeferenced:
        return GeoTiffOutputs(out, scene, style)
    return PngOutputs(out, scene, style)
