"""deploy/predict.py on scenes that are not 8-bit RGB: 16-bit and float bands stretched to the model's 8-bit input,
bands chosen with --bands, and one line for each input it cannot read.

Each test runs the entry point in this process on tiny files it writes, with a tiny random model (the model is
not what is tested): a scene and its 8-bit version must give the same map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

import deploy.predict as predict_cli
from deploy.scenes import STRETCH_GRID, STRETCH_WINDOW, Reading, Scale, open_scene, stretch_windows
from tests.test_predict_geo import CRS, TRANSFORM, expected_mask, run, scene_pixels, tiny_model, write_config
from util.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")
H, W, BORDER = 80, 100, 6


@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setattr(predict_cli, "load_model", tiny_model)


def write_tif(path: Path, data: np.ndarray, **extra) -> Path:
    """A georeferenced GeoTIFF of `data` (bands, H, W) in its own dtype."""
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
               "dtype": data.dtype.name, "crs": CRS, "transform": TRANSFORM, **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def predict(tmp_path: Path, capfd, *args: Path | str) -> tuple[int, str, str]:
    return run(["--config", str(write_config(tmp_path)), "--checkpoint", "x", "--out", str(tmp_path / "pred"),
                *map(str, args)], capfd)


def read_mask(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        return ds.read(1), ds.tags()


def stretched(data: np.ndarray, tags: dict) -> np.ndarray:
    """`data` (3, H, W) as the 8-bit (H, W, 3) RGB the tags' numbers make of it, computed here independently."""
    low = np.array(tags["INPUT_SCALE_LOW"].split(","), float).reshape(3, 1, 1)
    high = np.array(tags["INPUT_SCALE_HIGH"].split(","), float).reshape(3, 1, 1)
    scaled = np.clip(np.rint((data.astype(np.float64) - low) / (high - low) * 255), 0, 255)
    return scaled.astype(np.uint8).transpose(1, 2, 0).copy()


def multispectral_uint16() -> np.ndarray:
    """(4, H, W) uint16 of 300..~3400, a few saturated pixels (what a percentile stretch leaves out) and a
    no-data border of 0 (a quarter of the pixels: a stretch that counted them would start at 0)."""
    data = scene_pixels(H, W, bands=4).astype(np.uint16) * 12 + 300
    data[:, np.random.default_rng(2).random((H, W)) < 0.01] = 60_000
    data[:, :BORDER] = data[:, -BORDER:] = data[:, :, :BORDER] = data[:, :, -BORDER:] = 0
    return data


def same_fraction(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


# ----------------------------------------------------------------------------------------------------------
# Stretching


def test_a_4_band_uint16_scene_is_stretched_by_percentiles_of_its_data_and_keeps_its_nodata(tmp_path, stub, capfd):
    data = multispectral_uint16()
    scene = write_tif(tmp_path / "in" / "ms.tif", data, nodata=0)
    code, _, err = predict(tmp_path, capfd, scene)
    assert code == 0, err
    mask, tags = read_mask(tmp_path / "pred" / "ms_mask.tif")
    assert tags["INPUT_SCALE"] == "percentile 2,98" and tags["INPUT_DATA_TYPE"] == "uint16"
    assert tags["INPUT_RGB_BANDS"] == "1,2,3" and tags["INPUT_VALIDITY"] == "nodata value 0"
    # The numbers are the 2nd and 98th percentiles of the pixels holding data (the whole of a small scene).
    inner = data[:3, BORDER:-BORDER, BORDER:-BORDER].reshape(3, -1)
    low = [float(v) for v in tags["INPUT_SCALE_LOW"].split(",")]
    high = [float(v) for v in tags["INPUT_SCALE_HIGH"].split(",")]
    assert low == pytest.approx(np.percentile(inner, 2, axis=1))
    assert high == pytest.approx(np.percentile(inner, 98, axis=1))
    assert "uint16 pixels stretched to 0-255 by percentile 2,98" in err

    # The same scene as 8-bit RGB, stretched here by the recorded numbers, gives the same classes.
    write_tif(tmp_path / "in8" / "rgb8.tif", stretched(data[:3], tags).transpose(2, 0, 1).copy())
    code, _, err = predict(tmp_path, capfd, tmp_path / "in8" / "rgb8.tif")
    assert code == 0, err
    mask8, tags8 = read_mask(tmp_path / "pred" / "rgb8_mask.tif")
    assert tags8["INPUT_SCALE"].startswith("none")  # 8-bit: never stretched by default
    assert (mask[:BORDER] == 255).all() and (mask[:, -BORDER:] == 255).all()  # no data: class 255
    inside = (slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    assert (mask[inside] < 7).all()
    assert same_fraction(mask[inside], mask8[inside]) >= 0.999


def test_float32_reflectance_is_stretched_by_default(tmp_path, stub, capfd):
    data = (scene_pixels(H, W) / 255 * 0.4 + 0.02).astype(np.float32)  # reflectance, 0.02 to 0.42
    code, _, err = predict(tmp_path, capfd, write_tif(tmp_path / "refl.tif", data))
    assert code == 0, err
    mask, tags = read_mask(tmp_path / "pred" / "refl_mask.tif")
    assert tags["INPUT_SCALE"] == "percentile 2,98" and tags["INPUT_DATA_TYPE"] == "float32"
    expected = expected_mask(stretched(data, tags), 28, 18, "gaussian")
    assert same_fraction(mask, expected) >= 0.999


def test_nan_in_a_float_scene_is_no_data_even_where_no_nodata_value_is_declared(tmp_path, stub, capfd):
    data = (scene_pixels(H, W) / 255 * 0.4 + 0.02).astype(np.float32)
    data[:, :BORDER] = np.nan                       # rows without a measurement
    data[1, -BORDER:, :BORDER] = np.inf             # one band not finite is enough
    code, _, err = predict(tmp_path, capfd, write_tif(tmp_path / "refl.tif", data))
    assert code == 0, err
    mask, tags = read_mask(tmp_path / "pred" / "refl_mask.tif")
    assert tags["INPUT_VALIDITY"] == "non-finite values"
    with rasterio.open(tmp_path / "pred" / "refl_mask.tif") as ds:
        assert ds.nodata == 255
    assert (mask[:BORDER] == 255).all() and (mask[-BORDER:, :BORDER] == 255).all()
    assert (mask[BORDER:-BORDER] < 7).all()
    finite = np.nan_to_num(data, nan=0.0, posinf=0.0)  # the stretch ignores them (its numbers are NaN-free)
    assert all(np.isfinite(float(v)) for v in tags["INPUT_SCALE_LOW"].split(","))
    expected = expected_mask(stretched(finite, tags), 28, 18, "gaussian")
    inside = (slice(BORDER, -BORDER), slice(None))
    assert same_fraction(mask[inside], expected[inside]) >= 0.99


@pytest.mark.parametrize(("scale", "rule", "low", "high"), [
    ("0,4000", "range 0,4000", [0.0] * 3, [4000.0] * 3),
    ("none", "none", [0.0] * 3, [255.0] * 3),
    ("minmax", "minmax", None, None),
    ("percentile:10,90", "percentile 10,90", None, None)])
def test_other_scaling_rules_are_applied_and_recorded(tmp_path, stub, capfd, scale, rule, low, high):
    data = (scene_pixels(H, W).astype(np.uint16) * 9 + 100)[:, :, ::-1].copy()  # 100 to ~2500
    code, _, err = predict(tmp_path, capfd, write_tif(tmp_path / "s.tif", data), "--scale", scale)
    assert code == 0, err
    mask, tags = read_mask(tmp_path / "pred" / "s_mask.tif")
    assert tags["INPUT_SCALE"] == rule
    if rule == "minmax":
        low, high = data.reshape(3, -1).min(1).tolist(), data.reshape(3, -1).max(1).tolist()
    if rule.startswith("percentile"):
        low, high = np.percentile(data.reshape(3, -1), [10, 90], axis=1).tolist()
    assert [float(v) for v in tags["INPUT_SCALE_LOW"].split(",")] == pytest.approx(low)
    assert [float(v) for v in tags["INPUT_SCALE_HIGH"].split(",")] == pytest.approx(high)
    assert same_fraction(mask, expected_mask(stretched(data, tags), 28, 18, "gaussian")) >= 0.999


def test_the_stretch_of_a_large_scene_is_computed_from_a_bounded_sample():
    windows = list(stretch_windows(20_000, 30_000))
    assert sum(w.width * w.height for w in windows) <= (STRETCH_GRID * STRETCH_WINDOW) ** 2
    assert len(windows) == STRETCH_GRID ** 2  # spread over the scene, corners included
    assert {(w.row_off, w.col_off) for w in windows} >= {(0, 0), (20_000 - STRETCH_WINDOW, 30_000 - STRETCH_WINDOW)}
    [whole] = stretch_windows(H, W)
    assert (whole.height, whole.width) == (H, W)


def test_a_large_scene_whose_data_the_sample_grid_misses_is_stretched_from_its_data(tmp_path):
    # 600 x 600 pixels of no data (0) but for a 4 x 5 block in a gap between the grid's windows (rows 32-36): the
    # grid finds no pixel holding data, the whole scene is read for it.
    data = np.zeros((3, 600, 600), np.uint16)
    block = np.arange(1000, 1020, dtype=np.uint16).reshape(4, 5)
    data[:, 33:37, 300:305] = block
    path = write_tif(tmp_path / "mostly_empty.tif", data, nodata=0)
    assert not any(w.row_off <= 33 < w.row_off + w.height for w in stretch_windows(600, 600))
    scene = open_scene(path, Reading())
    try:
        assert scene.stretch is not None
        assert scene.stretch.low == pytest.approx((np.percentile(block, 2),) * 3)
        assert scene.stretch.high == pytest.approx((np.percentile(block, 98),) * 3)
        assert "the stretch's sample grid found 0 pixels holding data" in scene.note()
    finally:
        scene.close()


def test_the_whole_scene_sample_keeps_every_step_th_pixel_with_data_within_the_bound(tmp_path, monkeypatch):
    data = np.zeros((3, 600, 600), np.uint16)
    data[:, 33:37, 300:305] = np.arange(1000, 1020, dtype=np.uint16).reshape(4, 5)
    path = write_tif(tmp_path / "mostly_empty.tif", data, nodata=0)
    monkeypatch.setattr("deploy.scenes.STRETCH_PIXELS", 8)  # 20 pixels hold data: every 4th is kept
    scene = open_scene(path, Reading(scale=Scale("minmax")))
    try:
        assert (scene.stretch.low, scene.stretch.high) == ((1000.0,) * 3, (1016.0,) * 3)
    finally:
        scene.close()


def test_a_scene_without_any_data_is_refused_by_its_stretch_in_one_line(tmp_path):
    path = write_tif(tmp_path / "empty.tif", np.zeros((3, 600, 600), np.uint16), nodata=0)
    with pytest.raises(DataError, match="no pixel holding data to stretch"):
        open_scene(path, Reading())


# ----------------------------------------------------------------------------------------------------------
# Choosing the bands


def test_bands_picks_red_green_blue_whatever_the_bands_declare(tmp_path, stub, capfd):
    rgb = scene_pixels(H, W)
    nir = np.random.default_rng(3).integers(0, 200, (1, H, W), dtype=np.uint8)
    write_tif(tmp_path / "in" / "rgb.tif", rgb)
    # Blue, green, red, near-infrared: GDAL declares 4 bands of 8 bits red, green, blue, alpha.
    bgrn = write_tif(tmp_path / "in" / "bgrn.tif", np.concatenate([rgb[::-1], nir]))
    grey = write_tif(tmp_path / "in" / "grey.tif", rgb[1:2].copy())
    write_tif(tmp_path / "in" / "grey3.tif", np.repeat(rgb[1:2], 3, axis=0))
    code, _, err = predict(tmp_path, capfd, tmp_path / "in" / "rgb.tif", tmp_path / "in" / "grey3.tif")
    assert code == 0, err
    code, _, err = predict(tmp_path, capfd, bgrn, "--bands", "3,2,1")
    assert code == 0, err
    code, _, err = predict(tmp_path, capfd, grey, "--bands", "1,1,1")
    assert code == 0, err
    rgb_mask, _ = read_mask(tmp_path / "pred" / "rgb_mask.tif")
    bgrn_mask, tags = read_mask(tmp_path / "pred" / "bgrn_mask.tif")
    assert np.array_equal(bgrn_mask, rgb_mask)
    assert tags["INPUT_RGB_BANDS"] == "3,2,1" and tags["INPUT_SCALE"].startswith("none")
    assert np.array_equal(read_mask(tmp_path / "pred" / "grey_mask.tif")[0],
                          read_mask(tmp_path / "pred" / "grey3_mask.tif")[0])


# ----------------------------------------------------------------------------------------------------------
# Refusals: one line each


@pytest.mark.parametrize(("flags", "needle"), [
    (["--bands", "1,2"], "--bands 1,2: give three bands"),
    (["--bands", "1,2,3,4"], "--bands 1,2,3,4: give three bands"),
    (["--bands", "r,g,b"], "--bands r,g,b: give band numbers"),
    (["--bands", "0,1,2"], "--bands 0,1,2: give band numbers, 1-based"),
    (["--scale", "stretch"], "--scale stretch: give auto, percentile"),
    (["--scale", "5,1"], "--scale 5,1: give auto"),
    (["--scale", "percentile:2,101"], "--scale percentile:2,101: percentiles are two numbers from 0 to 100")])
def test_a_bad_band_list_or_scaling_rule_is_one_line_before_the_model_loads(tmp_path, monkeypatch, capfd, flags,
                                                                           needle):
    monkeypatch.setattr(predict_cli, "load_model", lambda *a: pytest.fail("the model must not be loaded"))
    scene = write_tif(tmp_path / "s.tif", scene_pixels(H, W))
    code, _, err = predict(tmp_path, capfd, scene, *flags)
    assert code == 2 and err.startswith(f"error: {needle}") and err.count("\n") == 1, err


def test_scenes_that_cannot_be_read_as_asked_are_each_refused_in_one_line(tmp_path, stub, capfd):
    folder = tmp_path / "in"
    write_tif(folder / "a_one_band.tif", scene_pixels(H, W)[:1].copy())
    write_tif(folder / "b_good.tif", scene_pixels(H, W, bands=4))
    Image.fromarray(scene_pixels(H, W).transpose(1, 2, 0).copy()).save(folder / "c.png")
    code, _, err = predict(tmp_path, capfd, folder)
    assert code == 2
    skipped = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 1 and "a_one_band.tif has 1 band(s)" in skipped[0] and "--bands" in skipped[0]

    code, _, err = predict(tmp_path, capfd, folder, "--bands", "4,3,5")
    assert code == 2
    skipped = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 3, skipped
    assert "a_one_band.tif has 1 band(s); --bands 4,3,5 names band 4" in skipped[0]
    assert "b_good.tif has 4 band(s); --bands 4,3,5 names band 5" in skipped[1]
    assert "c.png: --bands and --scale are for TIFF and VRT scenes" in skipped[2]
    last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert last.startswith("error: 3 of 3 scene(s) failed (first: ")
    assert sum("error: " in line for line in err.splitlines()) == 1


def test_a_scene_too_large_for_memory_is_skipped_in_one_line_and_the_others_are_written(tmp_path, stub, capfd,
                                                                                      monkeypatch):
    """A damaged TIFF declaring 24 x 1,979,711,508 pixels once ended predict with a traceback (MemoryError)."""
    import deploy.maps

    folder = tmp_path / "in"
    write_tif(folder / "good.tif", scene_pixels(H, W))
    Image.fromarray(scene_pixels(H, W).transpose(1, 2, 0).copy()).save(folder / "huge.png")
    original = deploy.maps.PngOutputs.__init__

    def allocate(self, out, scene, style):
        if scene.path.name == "huge.png":
            raise MemoryError("Unable to allocate 44.3 GiB for an array with shape (1979711508, 24)")
        original(self, out, scene, style)

    monkeypatch.setattr(deploy.maps.PngOutputs, "__init__", allocate)
    code, _, err = predict(tmp_path, capfd, folder)
    assert code == 2
    skipped = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("skipped ")]
    assert skipped == [f"skipped {folder / 'huge.png'}: Unable to allocate 44.3 GiB for an array with shape "
                       f"(1979711508, 24)"]
    assert (tmp_path / "pred" / "good_mask.tif").exists() and not list((tmp_path / "pred").glob("huge*"))
