"""deploy/predict.py reads what a scene's bands declare: red, green and blue wherever they are, alpha only where it is
a mask, no other colour model; and it cleans up after killed runs and expands `~` in its paths.

Each test runs the entry point in this process on tiny files it writes, with a tiny random model (the model is
not what is tested).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.enums import ColorInterp

import deploy.predict as predict_cli
from tests.test_predict_geo import CRS, TRANSFORM, expected_mask, run, scene_pixels, tiny_model, write_config

pytestmark = pytest.mark.usefixtures("one_thread")
H, W = 30, 40


@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setattr(predict_cli, "load_model", tiny_model)


def write_tif(path: Path, data: np.ndarray, colorinterp: list[ColorInterp] | None = None, **extra) -> Path:
    """A georeferenced uint8 GeoTIFF of `data` (bands, H, W), with GDAL's default band declarations unless given."""
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
               "dtype": "uint8", "crs": CRS, "transform": TRANSFORM, **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if colorinterp is not None:
            dst.colorinterp = colorinterp
    return path


def predict(tmp_path: Path, capfd, *inputs: Path | str, out: Path | None = None) -> tuple[int, str, str]:
    argv = ["--config", str(write_config(tmp_path)), "--checkpoint", "x", *map(str, inputs),
            "--out", str(out or tmp_path / "pred")]
    return run(argv, capfd)


def notes(err: str, path: Path) -> list[str]:
    return [line.strip() for line in err.replace("\r", "\n").splitlines()
            if line.startswith("note: ") and str(path) in line]


def read_mask(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as ds:
        return ds.read(1), ds.tags()


def rgb_of(data: np.ndarray) -> np.ndarray:
    return data[:3].transpose(1, 2, 0).copy()


# ----------------------------------------------------------------------------------------------------------
# Alpha


def test_a_band_declared_alpha_that_holds_other_values_is_data_not_a_validity_mask(tmp_path, stub, capfd):
    data = scene_pixels(H, W, bands=4)
    data[3] = np.random.default_rng(1).integers(0, 201, (H, W))  # near-infrared, GDAL declares it alpha
    data[3, :10, :12] = 0                                          # water
    path = write_tif(tmp_path / "rgbn.tif", data)
    with rasterio.open(path) as src:
        assert src.colorinterp[3] == ColorInterp.alpha  # the premise: GDAL's default for 4 bands of 8 bits
    code, _, err = predict(tmp_path, capfd, path)
    assert code == 0, err
    mask, tags = read_mask(tmp_path / "pred" / "rgbn_mask.tif")
    assert np.array_equal(mask, expected_mask(rgb_of(data), 28, 18, "gaussian"))  # classes, no 255, at the water
    [note] = notes(err, path)
    assert "band 4 is declared alpha but holds values other than 0 and 255" in note
    assert tags["INPUT_VALIDITY"] == "none" and "declared alpha" in tags["INPUT_NOTE"]
    assert tags["INPUT_RGB_BANDS"] == "1,2,3"


def test_a_true_alpha_band_marks_no_data(tmp_path, stub, capfd):
    data = scene_pixels(H, W, bands=4)
    data[3] = 255
    data[3, :10, :12] = 0
    path = write_tif(tmp_path / "rgba.tif", data)
    code, _, err = predict(tmp_path, capfd, path)
    assert code == 0, err
    mask, tags = read_mask(tmp_path / "pred" / "rgba_mask.tif")
    expected = expected_mask(rgb_of(data), 28, 18, "gaussian")
    expected[:10, :12] = 255
    assert np.array_equal(mask, expected)
    [note] = notes(err, path)
    assert "band 4 is an alpha band (only 0 and 255)" in note
    assert tags["INPUT_VALIDITY"] == "alpha band 4"


def test_a_nodata_value_and_an_internal_mask_still_mark_no_data(tmp_path, stub, capfd):
    data = scene_pixels(H, W)
    data[:, :10, :12] = 0
    nodata = write_tif(tmp_path / "in" / "nodata.tif", data, nodata=0)
    masked = tmp_path / "in" / "masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        write_tif(masked, scene_pixels(H, W))
        with rasterio.open(masked, "r+") as dst:
            valid = np.full((H, W), 255, np.uint8)
            valid[:10, :12] = 0
            dst.write_mask(valid)
    code, _, err = predict(tmp_path, capfd, nodata, masked)
    assert code == 0, err
    for stem, source in (("nodata", "nodata value 0"), ("masked", "mask band")):
        mask, tags = read_mask(tmp_path / "pred" / f"{stem}_mask.tif")
        assert (mask[:10, :12] == 255).all() and (mask[10:] < 7).all() and (mask[:, 12:] < 7).all(), stem
        assert tags["INPUT_VALIDITY"] == source


def test_a_png_alpha_of_0_and_255_marks_no_data_any_other_alpha_is_ignored(tmp_path, stub, capfd):
    rgb = scene_pixels(H, W).transpose(1, 2, 0)
    alpha = np.full((H, W), 255, np.uint8)
    alpha[:10, :12] = 0
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "cut.png")
    alpha[:10, :12] = 128  # semi-transparent: a picture's alpha, not a validity mask
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "faded.png")
    code, _, err = predict(tmp_path, capfd, tmp_path / "cut.png", tmp_path / "faded.png")
    assert code == 0, err
    expected = expected_mask(rgb.copy(), 28, 18, "gaussian")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "pred" / "faded_mask.png")), expected)
    expected[:10, :12] = 255
    assert np.array_equal(np.asarray(Image.open(tmp_path / "pred" / "cut_mask.png")), expected)
    assert "transparent pixels are no data" in notes(err, tmp_path / "cut.png")[0]
    assert "ignored" in notes(err, tmp_path / "faded.png")[0]


# ----------------------------------------------------------------------------------------------------------
# Red, green, blue


def test_bands_declared_blue_green_red_are_read_as_red_green_blue(tmp_path, stub, capfd):
    data = scene_pixels(H, W)
    rgb = write_tif(tmp_path / "in" / "rgb.tif", data)
    bgr = write_tif(tmp_path / "in" / "bgr.tif", data[::-1].copy(),
                    colorinterp=[ColorInterp.blue, ColorInterp.green, ColorInterp.red])
    code, _, err = predict(tmp_path, capfd, rgb, bgr)
    assert code == 0, err
    for kind in ("mask", "color", "overlay"):
        with rasterio.open(tmp_path / "pred" / f"rgb_{kind}.tif") as a, \
                rasterio.open(tmp_path / "pred" / f"bgr_{kind}.tif") as b:
            assert np.array_equal(a.read(), b.read()), kind
    assert "red, green, blue read from bands 3, 2, 1, as declared (blue, green, red)" in notes(err, bgr)[0]
    assert notes(err, rgb) == []
    assert read_mask(tmp_path / "pred" / "bgr_mask.tif")[1]["INPUT_RGB_BANDS"] == "3,2,1"


def test_bands_declaring_no_colour_are_read_as_bands_1_to_3_with_a_note(tmp_path, stub, capfd):
    data = scene_pixels(H, W)
    path = write_tif(tmp_path / "gray.tif", data, photometric="MINISBLACK")  # gray, undefined, undefined
    code, _, err = predict(tmp_path, capfd, path)
    assert code == 0, err
    mask, tags = read_mask(tmp_path / "pred" / "gray_mask.tif")
    assert np.array_equal(mask, expected_mask(rgb_of(data), 28, 18, "gaussian"))
    assert "declare no colours (gray, undefined, undefined): bands 1, 2, 3 read as red" in notes(err, path)[0]
    assert tags["INPUT_RGB_BANDS"] == "1,2,3"


def test_a_scene_declaring_another_colour_model_is_refused_in_one_line(tmp_path, stub, capfd):
    ycbcr = write_tif(tmp_path / "in" / "a_ycbcr.tif", scene_pixels(H, W),
                      colorinterp=[ColorInterp.Y, ColorInterp.Cb, ColorInterp.Cr])
    partial = write_tif(tmp_path / "in" / "b_partial.tif", scene_pixels(H, W),
                        colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.undefined])
    good = write_tif(tmp_path / "in" / "c_good.tif", scene_pixels(H, W))
    code, _, err = predict(tmp_path, capfd, tmp_path / "in")
    assert code == 2
    skipped = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 2
    assert str(ycbcr) in skipped[0] and "declare Y, Cb, Cr" in skipped[0] and "colour model" in skipped[0]
    assert str(partial) in skipped[1] and "declare red, green, undefined" in skipped[1]
    assert "2 of 3 scene(s) failed" in err
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == [
        f"{good.stem}_{kind}" for kind in ("color.tif", "legend.png", "mask.tif", "overlay.tif")]


# ----------------------------------------------------------------------------------------------------------
# Paths


def test_stale_temporaries_of_dead_writers_are_removed_from_out(tmp_path, stub, capfd, dead_pid):
    out = tmp_path / "pred"
    out.mkdir()
    stale, living = out / f".x_mask.tif.{dead_pid}.tmp", out / f".y_mask.tif.{os.getpid()}.tmp"
    stale.write_bytes(b"half a GeoTIFF")
    living.write_bytes(b"a GeoTIFF being written")
    code, _, err = predict(tmp_path, capfd, write_tif(tmp_path / "a.tif", scene_pixels(H, W)), out=out)
    assert code == 0, err
    assert not stale.exists() and living.exists()
    assert f"removed 1 temporary file(s) left in {out}" in err


def test_tilde_in_paths_means_the_home_folder(tmp_path, monkeypatch, capfd):
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    checkpoints = []
    monkeypatch.setattr(predict_cli, "load_model", lambda cfg, ckpt, *a: checkpoints.append(ckpt) or tiny_model())
    write_tif(home / "s" / "a.tif", scene_pixels(H, W))
    write_tif(home / "s" / "b.tif", scene_pixels(H, W))
    write_tif(home / "s" / "c.tif", scene_pixels(H, W))
    (home / "listed.txt").write_text("~/s/b.tif\n")
    (home / "more.txt").write_text("~/s/c.tif\n")
    argv = ["--config", str(write_config(tmp_path)), "--checkpoint=~/best.pth", "--out=~/pred", "~/s/a.tif",
            "--list=~/listed.txt", "@~/more.txt"]
    code, stdout, err = run(argv, capfd)
    assert code == 0 and "3 scene(s) written" in stdout, err
    assert checkpoints == [str(home / "best.pth")]
    assert {p.name for p in (home / "pred").iterdir()} >= {"a_mask.tif", "b_mask.tif", "c_mask.tif"}
    assert list(work.iterdir()) == []  # no folder named ~
