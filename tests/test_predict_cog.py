"""deploy/predict.py writes cloud-optimised GeoTIFFs (GDAL's COG driver) for georeferenced scenes: tiled, with
overviews that never average class indices, georeference, colour table and class tags kept; --no-cog writes
plain tiled GeoTIFFs; a failed COG copy or a killed one leaves nothing behind.

Each test runs the entry point in this process on tiny files it writes, with a tiny random model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import RasterioIOError

import deploy.maps as maps
import deploy.predict as predict_cli
from tests.test_predict_geo import LOVEDA, PALETTE, TRANSFORM, run, tiny_model, write_config, write_geotiff

pytestmark = pytest.mark.usefixtures("one_thread")
KINDS = ("mask", "color", "overlay")


@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setattr(predict_cli, "load_model", tiny_model)


def predict(tmp_path: Path, capfd, scene: Path, *flags: str) -> tuple[int, str, str]:
    return run(["--config", str(write_config(tmp_path)), "--checkpoint", "x", str(scene),
                "--out", str(tmp_path / "pred"), *flags], capfd)


def scene_with_nodata_corner(path: Path, height: int = 600, width: int = 300) -> None:
    """An RGB GeoTIFF whose top-left 100 x 80 pixels are no data (value 0)."""
    data = write_geotiff(path, height, width, nodata=0)
    data[:, :100, :80] = 0
    with rasterio.open(path, "r+") as dst:
        dst.write(data)


def assert_cloud_optimised(path: Path) -> list[int]:
    """GDAL's own verdict (LAYOUT=COG, its structural header not invalidated by a later edit) and the rules of
    GDAL's validate_cloud_optimized_geotiff: tiled, overviews, every IFD before the image data and in order,
    the smallest overview's tiles first. Returns the overview factors."""
    with rasterio.open(path) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG", path
        assert ds.profile["tiled"] and set(ds.block_shapes) == {(256, 256)}
        factors = ds.overviews(1)
        assert factors, f"{path} has no overviews"
        levels = [None, *range(len(factors))]
        ifds = [int(ds.get_tag_item("IFD_OFFSET", "TIFF", bidx=1, ovr=i)) for i in levels]
        data = [int(ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1, ovr=i)) for i in levels]
    assert ifds == sorted(ifds) and max(ifds) < min(data)
    assert data == sorted(data, reverse=True)
    header = path.read_bytes()[:1024]
    assert b"LAYOUT=IFDS_BEFORE_DATA" in header and b"KNOWN_INCOMPATIBLE_EDITION=NO" in header
    return factors


def overview(path: Path, level: int = 0) -> np.ndarray:
    with rasterio.open(path, overview_level=level) as ds:
        return ds.read()


def test_georeferenced_outputs_are_cogs_with_overviews_georeference_colour_table_and_class_tags(tmp_path, stub,
                                                                                                  capfd):
    scene_with_nodata_corner(tmp_path / "in" / "scene.tif")
    code, _, err = predict(tmp_path, capfd, tmp_path / "in" / "scene.tif")
    assert code == 0, err
    out = tmp_path / "pred"
    assert sorted(p.name for p in out.iterdir()) == [
        "scene_color.tif", "scene_legend.png", "scene_mask.tif", "scene_overlay.tif"]  # no temporary left
    for kind in KINDS:
        assert assert_cloud_optimised(out / f"scene_{kind}.tif") == [2, 4], kind  # down to one 256-px tile
        with rasterio.open(out / f"scene_{kind}.tif") as ds:
            assert ds.crs.to_epsg() == 32633 and ds.transform == TRANSFORM and ds.shape == (600, 300)
            assert ds.tags()["CLASS_NAMES"].split(",") == list(LOVEDA.class_names)
            assert ds.tags()["INPUT_SCALE"].startswith("none")
    with rasterio.open(out / "scene_mask.tif") as ds:
        colormap = ds.colormap(1)
        assert [colormap[c][:3] for c in range(LOVEDA.nclass)] == list(LOVEDA.palette)
        assert ds.nodata == 255 and ds.descriptions == ("class",)
        assert [ds.tags()[f"CLASS_{c}"] for c in range(LOVEDA.nclass)] == list(LOVEDA.class_names)
        mask = ds.read(1)
    assert (mask[:100, :80] == 255).all() and (mask[100:] < 7).all()
    assert (overview(out / "scene_mask.tif", 1)[0, :25, :20] == 255).all()  # no data stays no data at 1/4


def test_class_overviews_take_a_pixel_of_their_block_never_an_average(tmp_path, stub, capfd):
    write_geotiff(tmp_path / "in" / "scene.tif", 600, 300)
    code, _, err = predict(tmp_path, capfd, tmp_path / "in" / "scene.tif")
    assert code == 0, err
    out = tmp_path / "pred"
    with rasterio.open(out / "scene_mask.tif") as ds:
        mask = ds.read(1)
    half = overview(out / "scene_mask.tif")[0]
    assert half.shape == (300, 150) and len(np.unique(mask)) > 2
    blocks = mask.reshape(300, 2, 150, 2)
    # Each overview pixel is one of the four pixels it stands for: a class, never a mean of classes.
    assert (blocks == half[:, None, :, None]).any(axis=(1, 3)).all()
    # The colour map's overviews are the mask's overviews painted; the overlay's are averaged (a picture).
    assert np.array_equal(overview(out / "scene_color.tif").transpose(1, 2, 0), PALETTE[half])
    with rasterio.open(out / "scene_overlay.tif") as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.overviews(1) == [2, 4]


def test_no_cog_writes_plain_tiled_geotiffs(tmp_path, stub, capfd):
    write_geotiff(tmp_path / "in" / "scene.tif", 300, 280)
    code, _, err = predict(tmp_path, capfd, tmp_path / "in" / "scene.tif", "--no-cog")
    assert code == 0, err
    for kind in KINDS:
        with rasterio.open(tmp_path / "pred" / f"scene_{kind}.tif") as ds:
            assert "LAYOUT" not in ds.tags(ns="IMAGE_STRUCTURE") and ds.overviews(1) == []
            assert ds.profile["tiled"] and ds.block_shapes[0] == (256, 256) and ds.crs.to_epsg() == 32633
    assert len(list((tmp_path / "pred").iterdir())) == 4


def test_a_scene_whose_cog_copy_fails_leaves_nothing(tmp_path, stub, monkeypatch, capfd):
    real = maps.make_cog

    def disk_full(tiled: Path, cog: Path, kind: str) -> None:
        if kind == "color":  # the mask's COG is done by then; this one stops half-way
            Path(f"{cog}{maps.GDAL_OVERVIEW_SUFFIX}").write_bytes(b"overviews being built")
            cog.write_bytes(b"half a COG")
            raise RasterioIOError("No space left on device")
        real(tiled, cog, kind)

    monkeypatch.setattr(maps, "make_cog", disk_full)
    write_geotiff(tmp_path / "in" / "scene.tif", 300, 280)
    code, _, err = predict(tmp_path, capfd, tmp_path / "in" / "scene.tif")
    assert code == 2 and "could not write the maps of" in err and "No space left on device; stopped: 0 scene(s)" in err
    assert not (tmp_path / "pred").exists()  # made for this scene, emptied, removed


def test_overview_files_of_killed_cog_copies_are_removed_from_out(tmp_path, stub, capfd, dead_pid):
    out = tmp_path / "pred"
    out.mkdir()
    stale, living = out / f".x_mask.tif.{dead_pid}.tmp.ovr.tmp", out / f".y_mask.tif.{os.getpid()}.tmp.ovr.tmp"
    stale.write_bytes(b"overviews of a killed run")
    living.write_bytes(b"overviews being built")
    write_geotiff(tmp_path / "in" / "a.tif", 30, 40)
    code, _, err = predict(tmp_path, capfd, tmp_path / "in" / "a.tif")
    assert code == 0, err
    assert not stale.exists() and living.exists()
    assert f"removed 1 temporary file(s) left in {out}" in err

