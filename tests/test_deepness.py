"""deploy/deepness.py and predict's --tiling deepness: the tiles QGIS's Deepness plugin runs an exported model on.

The figures are Deepness 0.6.5's rule worked by hand from its source (processing/extent_utils.py
calculate_extended_processing_extent: the area grows at its right and top to one tile plus whole strides;
processing/tile_params.py: tiles every stride from the grown area's top left, each keeping all but half the
overlap along its inner sides, later tiles over earlier ones; common/processing_overlap.py: the overlap in
pixels of a percent). The 100 x 137 scene's grid is also what Deepness 0.6.5 read, run headless in QGIS 3.22 on
such a scene with the 42-px test model (docs/qgis.md). No test here needs the plugin.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from dataset.transforms import normalize
from deploy.deepness import count_tiles, kept_from, overlap_percent, overlap_px, tile_starts
from tests.test_predict_geo import run, tiny_model, write_config, write_geotiff

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("tile", "percent", "overlap"), [(518, 33, 170), (518, 0, 0), (42, 34, 14), (28, 29, 8)])
def test_the_overlap_of_a_percent_is_deepness(tile, percent, overlap):
    assert overlap_px(tile, percent) == overlap


@pytest.mark.parametrize(("length", "tile", "stride", "rows", "columns"), [
    (1024, 518, 348, [-190, 158, 506], [0, 348, 696]),         # 518-px tiles at 33 %: 190 pixels added
    (1500, 518, 348, [-62, 286, 634, 982], [0, 348, 696, 1044]),
    (1024, 518, 518, [-12, 506], [0, 518]),                     # no overlap: still not predict's [0, 506]
    (1036, 518, 518, [0, 518], [0, 518]),                       # whole tiles: nothing added, predict's grid
    (100, 42, 28, [-26, 2, 30, 58], [0, 28, 56, 84]),           # Deepness in QGIS read the rows of a 100 x 137
    (137, 42, 28, [-17, 11, 39, 67, 95], [0, 28, 56, 84, 112]),  # scene, and its columns, so
    (30, 42, 28, [-12], [0]),                                   # shorter than a tile: one tile
])
def test_tiles_start_as_deepness_places_them(length, tile, stride, rows, columns):
    assert tile_starts(length, tile, stride, grown_before=True) == rows
    assert tile_starts(length, tile, stride, grown_before=False) == columns


@pytest.mark.parametrize(("starts", "tile", "stride", "length", "kept"), [
    ([-190, 158, 506], 518, 348, 1024, [0, 243, 591]),          # half the overlap is 85
    ([0, 348, 696, 1044], 518, 348, 1500, [0, 433, 781, 1129]),
    ([0, 7, 14], 10, 7, 24, [0, 8, 15]),                         # an odd overlap: half rounds down
    ([-12], 42, 28, 30, [0]),
])
def test_each_pixel_takes_the_class_of_the_last_tile_whose_kept_part_reaches_it(starts, tile, stride, length, kept):
    assert kept_from(starts, tile, stride, length) == kept


def test_the_percent_written_by_export_gives_back_predicts_stride_where_it_can():
    assert overlap_percent(518, 345) == 33 and 518 - overlap_px(518, 33) == 348  # the nearest Deepness comes
    assert overlap_percent(42, 28) == 34 and 42 - overlap_px(42, 34) == 28
    assert overlap_percent(518, 518) == 0


def deepness_reference(rgb: np.ndarray, tile: int, stride: int) -> np.ndarray:
    """Deepness' map of an (H, W, 3) scene with the tiny model, written the way its map processor does it: the
    scene pasted into an area grown at the top and right (zeros), each tile's argmax pasted whole-image wise by
    TileParams' slices (half the overlap off the inner sides), in row-major order, and the scene cut back out."""
    model, _ = tiny_model()
    height, width = rgb.shape[:2]

    def grow(length: int) -> int:
        return tile - length if length <= tile else (stride - (length - tile) % stride) % stride

    top, right = grow(height), grow(width)
    area = np.zeros((height + top, width + right, 3), np.uint8)
    area[top:, :width] = rgb
    ny, nx = (area.shape[0] - tile) // stride + 1, (area.shape[1] - tile) // stride + 1
    half = (tile - stride) // 2
    full = np.full(area.shape[:2], -1)
    for by in range(ny):
        for bx in range(nx):
            y, x = by * stride, bx * stride
            window = torch.from_numpy(area[y:y + tile, x:x + tile]).permute(2, 0, 1)[None]
            with torch.no_grad():
                classes = model(normalize(window)).softmax(1).argmax(1)[0].numpy()
            y0, y1 = y + (half if by else 0), y + tile - (half if by < ny - 1 else 0)
            x0, x1 = x + (half if bx else 0), x + tile - (half if bx < nx - 1 else 0)
            full[y0:y1, x0:x1] = classes[y0 - y:y1 - y, x0 - x:x1 - x]
    assert (full >= 0).all()
    return full[top:, :width]


@pytest.mark.parametrize(("height", "width", "stride"), [(50, 75, None), (61, 40, "28"), (20, 33, None)])
def test_predict_tiling_deepness_draws_deepness_map(tmp_path, monkeypatch, capfd, height, width, stride):
    import deploy.predict as predict_cli

    monkeypatch.setattr(predict_cli, "load_model", tiny_model)
    rgb = write_geotiff(tmp_path / "scene.tif", height, width).transpose(1, 2, 0)
    argv = ["--config", str(write_config(tmp_path)), "--checkpoint", "x", str(tmp_path / "scene.tif"),
            "--out", str(tmp_path / "pred"), "--tiling", "deepness", "--stride", stride or "20"]
    code, _, err = run(argv, capfd)
    assert code == 0, err
    tile = 28  # the config's crop size; --stride 20 -> 29 % -> 8 px of overlap; 28 -> 0 %
    deepness_stride = 20 if stride is None else 28
    assert f"overlap {overlap_percent(tile, deepness_stride)} %" in err
    with rasterio.open(tmp_path / "pred" / "scene_mask.tif") as ds:
        mask, tags = ds.read(1), ds.tags()
    assert (tags["TILING"], tags["STRIDE"]) == ("deepness", str(deepness_stride))
    assert (mask == deepness_reference(rgb, tile, deepness_stride)).all()
    assert count_tiles(height, width, tile, deepness_stride) == (
        len(tile_starts(height, tile, deepness_stride, True)) * len(tile_starts(width, tile, deepness_stride, False)))


@pytest.mark.parametrize("flags", [["--blend", "uniform"], ["--mode", "original"], ["eval.blend=gaussian"]])
def test_tiling_deepness_refuses_what_does_not_go_with_it_in_one_line(tmp_path, monkeypatch, capfd, flags):
    import deploy.predict as predict_cli

    monkeypatch.setattr(predict_cli, "load_model", tiny_model)
    write_geotiff(tmp_path / "scene.tif", 20, 20)
    code, _, err = run(["--config", str(write_config(tmp_path)), "--checkpoint", "x", str(tmp_path / "scene.tif"),
                        "--out", str(tmp_path / "pred"), "--tiling", "deepness", *flags], capfd)
    assert code == 2 and err.startswith("error: --tiling deepness") and err.count("\n") == 1, err
