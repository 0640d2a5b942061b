"""deploy/predict.py for GIS users: georeferenced outputs, bounded memory, seam-free blending, batches of scenes.

A tiny random model (a 3x3 convolution, or a fake one with a border artefact) stands in for the segmenter:
what is tested is everything around the model.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.enums import Compression
from rasterio.transform import Affine

import deploy.predict as predict_cli
import util.io
from dataset.transforms import normalize
from eval.inference import importance_map, predict_logits, predict_rows
from model.convert import LoadedWeights
from util.catalog import DATASETS
from util.cli import run_main
from util.errors import DataError

REPO = Path(__file__).resolve().parents[1]
LOVEDA = DATASETS["loveda"]
PALETTE = np.array(LOVEDA.palette, dtype=np.uint8)
CRS = "EPSG:32633"  # UTM 33N: a projected CRS
TRANSFORM = Affine(0.3, 0.0, 389_000.0, 0.0, -0.3, 5_819_000.0)  # 0.3 m pixels (LoveDA's), north up


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(cfg=None, checkpoint=None, which=None, device=None) -> tuple[torch.nn.Module, LoadedWeights]:
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, 7, 3, padding=1).eval(), LoadedWeights(which or "student", {})


@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setattr(predict_cli, "load_model", tiny_model)


def write_config(tmp_path: Path, eval_section: str = "") -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("dataset: {crop_size: 28}\nmodel: {backbone: tiny, pretrained: null}\n"
                   "train: {method: fixmatch}\nteachers: {dino: {enabled: false}, clip: {enabled: false}}\n"
                   "distill: {fusion_weights: {student: 1.0, dino: 0.0, clip: 0.0}}\n" + eval_section)
    return cfg


def scene_pixels(height: int, width: int, bands: int = 3, seed: int = 0) -> np.ndarray:
    """(bands, H, W) uint8: smooth patterns with some noise (compresses, yet varies)."""
    yy, xx = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    planes = [(xx * 7 + yy) % 256, (yy * 3) % 256, ((xx + yy) * 5) % 256, (xx * yy) % 256]
    data = np.stack([planes[b % 4] for b in range(bands)]) + rng.integers(0, 8, (bands, height, width))
    return data.astype(np.uint8)


def write_geotiff(path: Path, height: int, width: int, bands: int = 3, dtype: str = "uint8", **extra) -> np.ndarray:
    data = scene_pixels(height, width, bands).astype(dtype)
    profile = {"driver": "GTiff", "width": width, "height": height, "count": bands, "dtype": dtype, "crs": CRS,
               "transform": TRANSFORM, "tiled": True, "blockxsize": 256, "blockysize": 256, **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return data


def run(argv: list[str], capfd) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of the entry point as `python deploy/predict.py` runs it."""
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: predict_cli.main(argv))
    captured = capfd.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def expected_mask(rgb: np.ndarray, window: int, stride: int, blend: str) -> np.ndarray:
    """The whole-image, in-memory prediction of the tiny model: what the streamed outputs must equal."""
    model, _ = tiny_model()
    img = normalize(torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0))
    probs = predict_logits(model, img, "sliding_window", window, stride, batch_size=16, blend=blend)
    return probs[0].argmax(0).to(torch.uint8).numpy()


# ----------------------------------------------------------------------------------------------------------
# 1. Georeference kept


def test_geotiff_in_gives_georeferenced_compressed_tiled_masks_with_colour_table_and_class_tags(tmp_path, stub, capfd):
    data = write_geotiff(tmp_path / "tiles" / "scene.tif", 600, 300)  # 600 rows: three rows of 256-px tiles
    out = tmp_path / "pred"
    code, stdout, _ = run(["--config", str(write_config(tmp_path)), "--checkpoint", "any.pth",
                           str(tmp_path / "tiles"), "--out", str(out)], capfd)
    assert code == 0 and "1 scene(s) written" in stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "scene_color.tif", "scene_legend.png", "scene_mask.tif", "scene_overlay.tif"]  # no temporary, no .aux.xml

    with rasterio.open(out / "scene_mask.tif") as mask_ds:
        assert mask_ds.crs.to_epsg() == 32633 and mask_ds.transform == TRANSFORM
        assert (mask_ds.height, mask_ds.width, mask_ds.count, mask_ds.dtypes) == (600, 300, 1, ("uint8",))
        assert mask_ds.compression == Compression.deflate and mask_ds.profile["tiled"]
        assert mask_ds.block_shapes == [(256, 256)]
        colormap = mask_ds.colormap(1)
        assert [colormap[c][:3] for c in range(LOVEDA.nclass)] == list(LOVEDA.palette)
        tags = mask_ds.tags()
        mask = mask_ds.read(1)
    assert tags["CLASS_NAMES"].split(",") == list(LOVEDA.class_names)
    assert [tags[f"CLASS_{c}"] for c in range(LOVEDA.nclass)] == list(LOVEDA.class_names)
    assert tags["BLEND"] == "gaussian" and tags["MODE"] == "sliding_window"
    # Streamed by bands of rows and tiles, the mask is the whole-image prediction, pixel for pixel.
    rgb = data.transpose(1, 2, 0)
    assert np.array_equal(mask, expected_mask(rgb, 28, 18, "gaussian"))

    with rasterio.open(out / "scene_color.tif") as color_ds:
        assert color_ds.crs.to_epsg() == 32633 and color_ds.transform == TRANSFORM
        assert (color_ds.height, color_ds.width, color_ds.count) == (600, 300, 3)
        assert color_ds.compression == Compression.deflate and color_ds.profile["tiled"]
        assert color_ds.tags()["CLASS_NAMES"] == tags["CLASS_NAMES"]
        assert np.array_equal(color_ds.read().transpose(1, 2, 0), PALETTE[mask])
    with rasterio.open(out / "scene_overlay.tif") as overlay_ds:
        assert overlay_ds.transform == TRANSFORM and overlay_ds.count == 3
        from eval.visualize import overlay
        assert np.array_equal(overlay_ds.read().transpose(1, 2, 0), overlay(rgb, PALETTE[mask], 0.5))
    with Image.open(out / "scene_legend.png") as legend:
        assert legend.format == "PNG" and legend.height > 7 * 15


def test_a_map_says_which_checkpoint_made_it_as_eval_does(tmp_path, monkeypatch, capfd):
    """Path, SHA-256, the run id and iteration the checkpoint was saved at, and student or EMA: a map from best.pth
    of one run can be told from one of latest.pth or of another run."""
    from util.io import file_sha256

    def loaded_ema(cfg=None, checkpoint=None, which=None, device=None):
        model, _ = tiny_model()
        return model, LoadedWeights("ema", {"run_id": "5f1e2d3c4b5a", "iteration": 40, "epoch": 2,
                                            "selected_by": "ema"})

    monkeypatch.setattr(predict_cli, "load_model", loaded_ema)
    checkpoint = tmp_path / "run" / "best.pth"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"weights")
    write_geotiff(tmp_path / "scene.tif", 40, 30)
    code, _, err = run(["--config", str(write_config(tmp_path)), "--checkpoint", str(checkpoint),
                        str(tmp_path / "scene.tif"), "--out", str(tmp_path / "pred")], capfd)
    assert code == 0, err
    with rasterio.open(tmp_path / "pred" / "scene_mask.tif") as ds:
        tags = ds.tags()
    assert tags["CHECKPOINT"] == str(checkpoint) and tags["CHECKPOINT_SHA256"] == file_sha256(checkpoint)
    assert (tags["CHECKPOINT_RUN_ID"], tags["CHECKPOINT_ITERATION"], tags["CHECKPOINT_EPOCH"]) == (
        "5f1e2d3c4b5a", "40", "2")
    assert tags["WEIGHTS"] == "ema"
    # PNG in, PNG out: the same tags as the PNGs' text.
    Image.fromarray(scene_pixels(30, 40).transpose(1, 2, 0).copy()).save(tmp_path / "plain.png")
    code, _, err = run(["--config", str(write_config(tmp_path)), "--checkpoint", str(checkpoint),
                        str(tmp_path / "plain.png"), "--out", str(tmp_path / "pred")], capfd)
    assert code == 0, err
    for kind in ("mask", "color", "overlay"):
        with Image.open(tmp_path / "pred" / f"plain_{kind}.png") as png:
            assert {k: png.text[k] for k in tags if k.startswith(("CHECKPOINT", "WEIGHTS"))} == {
                k: v for k, v in tags.items() if k.startswith(("CHECKPOINT", "WEIGHTS"))}
            assert png.text["CLASS_NAMES"] == tags["CLASS_NAMES"]


@pytest.mark.parametrize("dataset", ["loveda", "deepglobe"])  # DeepGlobe's "unknown" class is black
def test_nodata_of_the_input_is_class_255_and_has_a_rendering_of_its_own_in_every_output(tmp_path, stub, capfd,
                                                                                          dataset):
    path = tmp_path / "scene.tif"
    data = write_geotiff(path, 80, 90, nodata=0)
    data[:, :30, :40] = 0  # a no-data corner, as an orthophoto's collar
    with rasterio.open(path, "r+") as dst:
        dst.write(data)
    nodata = np.zeros((80, 90), bool)
    nodata[:30, :40] = True
    Image.fromarray(data.transpose(1, 2, 0)).save(tmp_path / "plain.png")
    rgba = np.dstack([data.transpose(1, 2, 0), np.where(nodata, 0, 255).astype(np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "cut.png")  # the same no data as a PNG alpha
    code, _, _ = run(["--config", str(write_config(tmp_path)), "--checkpoint", "x", str(path),
                      str(tmp_path / "cut.png"), str(tmp_path / "plain.png"), "--out", str(tmp_path / "pred"),
                      f"dataset.name={dataset}"], capfd)
    assert code == 0
    palette = DATASETS[dataset].palette
    grey = {"loveda": 127, "deepglobe": 128}[dataset]  # the grey nearest 128 that no class colour has in any band
    assert all(grey not in rgb for rgb in palette)
    with rasterio.open(tmp_path / "pred" / "scene_mask.tif") as ds:
        mask = ds.read(1)
        assert ds.nodata == 255 and ds.tags()["NODATA_COLOR"] == f"{grey},{grey},{grey}"
    assert ((mask == 255) == nodata).all()
    with rasterio.open(tmp_path / "pred" / "scene_color.tif") as ds:
        color = ds.read()
        assert ds.nodata == grey  # declared: a GIS shows it transparent
        assert ((color == grey).any(axis=0) == nodata).all()  # only no data has the value, in any band
        assert (ds.dataset_mask() == np.where(nodata, 0, 255)).all()
    with rasterio.open(tmp_path / "pred" / "scene_overlay.tif") as ds:
        assert ds.count == 4 and ds.colorinterp[3].name == "alpha"
        assert (ds.read(4) == np.where(nodata, 0, 255)).all() and (ds.dataset_mask() == ds.read(4)).all()
    for kind in ("color", "overlay"):  # PNGs have no nodata value: an alpha channel
        with Image.open(tmp_path / "pred" / f"cut_{kind}.png") as im:
            assert im.mode == "RGBA" and (np.asarray(im)[..., 3] == np.where(nodata, 0, 255)).all()
    with Image.open(tmp_path / "pred" / "plain_color.png") as im:
        assert im.mode == "RGB"  # a scene without no data: no alpha


@pytest.mark.parametrize(("metres", "crs", "noted"), [
    (0.3, CRS, None), (0.44, CRS, None), (0.21, CRS, None),        # within 1.5 times LoveDA's 0.3 m: nothing said
    (2.0, CRS, "2 m per pixel, 6.7 times coarser than the model's 0.3 m (loveda)"),
    (0.05, CRS, "0.05 m per pixel, 6.0 times finer than the model's 0.3 m (loveda)"),
    (0.3 / 0.3048, "EPSG:2263", None),                              # US survey feet: 0.3 m, converted
    (6.0 / 0.3048, "EPSG:2263", "6 m per pixel, 20.0 times coarser"),
    (0.00001, "EPSG:4326", None),                                   # degrees: no fixed ground size
])
def test_a_scene_far_from_the_models_resolution_gets_a_note_not_an_error(tmp_path, stub, capfd, metres, crs, noted):
    path = tmp_path / "scene.tif"
    write_geotiff(path, 40, 50, crs=crs, transform=Affine(metres, 0.0, 1000.0, 0.0, -metres, 2000.0))
    code, _, err = run(["--config", str(write_config(tmp_path)), "--checkpoint", "x", str(path),
                        "--out", str(tmp_path / "pred")], capfd)
    assert code == 0 and (tmp_path / "pred" / "scene_mask.tif").is_file()
    lines = [line for line in err.replace("\r", "\n").splitlines() if "m per pixel" in line]
    if noted is None:
        assert lines == []
    else:
        [line] = lines
        assert line.startswith(f"note: {path}: ") and noted in line and "resample" in line


def test_gcps_of_an_input_without_geotransform_are_kept(tmp_path, stub, capfd):
    from rasterio.control import GroundControlPoint

    gcps = [GroundControlPoint(0, 0, 389_000, 5_819_000), GroundControlPoint(0, 50, 389_025, 5_819_000),
            GroundControlPoint(40, 0, 389_000, 5_818_980)]
    path = tmp_path / "scan.tif"
    with rasterio.open(path, "w", driver="GTiff", width=50, height=40, count=3, dtype="uint8", gcps=gcps,
                       crs=CRS) as dst:
        dst.write(scene_pixels(40, 50))
    assert run(["--config", str(write_config(tmp_path)), "--checkpoint", "x", str(path),
                "--out", str(tmp_path / "pred")], capfd)[0] == 0
    with rasterio.open(tmp_path / "pred" / "scan_mask.tif") as ds:
        points, crs = ds.gcps
        assert crs.to_epsg() == 32633 and [(p.row, p.col, p.x, p.y) for p in points] == [
            (p.row, p.col, p.x, p.y) for p in gcps]


def test_png_in_gives_png_out_and_uniform_is_todays_prediction(tmp_path, stub, capfd):
    rgb = scene_pixels(70, 95).transpose(1, 2, 0).copy()
    (tmp_path / "imgs").mkdir()
    Image.fromarray(rgb).save(tmp_path / "imgs" / "a.png")
    code, _, _ = run(["--config", str(write_config(tmp_path)), "--checkpoint", "x", str(tmp_path / "imgs"),
                      "--out", str(tmp_path / "pred"), "--blend", "uniform"], capfd)
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == [
        "a_color.png", "a_legend.png", "a_mask.png", "a_overlay.png"]
    # predict_logits on the whole image is what predict computed before it streamed.
    assert np.array_equal(np.asarray(Image.open(tmp_path / "pred" / "a_mask.png")),
                          expected_mask(rgb, 28, 18, "uniform"))


# ----------------------------------------------------------------------------------------------------------
# 2. Any scene size in bounded memory

# The child reports its own peak: VmHWM, the high-water mark of its resident memory. (getrusage's ru_maxrss
# would not do: Linux carries it over fork and exec, so a child of this large pytest process starts at
# pytest's size.)
CHILD = textwrap.dedent("""
    import re, sys
    sys.path.insert(0, sys.argv[1])
    import torch
    import deploy.predict as predict
    from model.convert import LoadedWeights

    def tiny(cfg, checkpoint, which, device):
        torch.manual_seed(0)
        return torch.nn.Conv2d(3, 7, 3, padding=1).eval(), LoadedWeights("student", {})

    predict.load_model = tiny
    code = predict.main(sys.argv[2:])
    with open("/proc/self/status") as f:
        print("peak_kb", re.search(r"VmHWM:\\s+(\\d+) kB", f.read()).group(1))
""")


def peak_rss_mb(tmp_path: Path, scene: Path, out: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(REPO), "--config", str(write_config(tmp_path)),
                           "--checkpoint", "x", str(scene), "--out", str(out), "--window", "112", "--stride", "74"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.split("peak_kb")[-1]) / 1024


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from Linux's /proc")
def test_peak_memory_does_not_grow_with_the_scene(tmp_path):
    # 25 times the pixels; held whole, the 3000-px scene alone would need ~0.5 GB of float probabilities.
    write_geotiff(tmp_path / "small" / "small.tif", 600, 600)
    write_geotiff(tmp_path / "large" / "large.tif", 3000, 3000)
    small = peak_rss_mb(tmp_path, tmp_path / "small" / "small.tif", tmp_path / "pred_small")
    large = peak_rss_mb(tmp_path, tmp_path / "large" / "large.tif", tmp_path / "pred_large")
    with rasterio.open(tmp_path / "pred_large" / "large_mask.tif") as ds:
        assert ds.shape == (3000, 3000) and ds.read(1, window=((2990, 3000), (2990, 3000))).max() < 7
    print(f"peak RSS: {small:.0f} MB (600 px), {large:.0f} MB (3000 px)")
    assert large < 1.5 * small, f"peak RSS {large:.0f} MB for 3000 px against {small:.0f} MB for 600 px"


def test_rows_are_read_and_handed_back_as_the_windows_advance():
    # A tall narrow image: only the band of rows the windows cover is alive, whatever the height.
    height, width, window, stride = 2000, 60, 14, 9
    img = torch.randn(3, height, width)
    read_to = 0
    alive = []

    def read(top, bottom):
        nonlocal read_to
        read_to = max(read_to, bottom)
        return img[:, top:bottom]

    done = 0
    for top, probs in predict_rows(lambda x: x[:, :2], read, height, width, window, stride, batch_size=4):
        assert top == done
        done += probs.shape[1]
        alive.append(read_to - top)
    assert done == height
    assert max(alive) <= window + 2 * stride  # rows read but not yet handed back


# ----------------------------------------------------------------------------------------------------------
# 3. Seam-free blending


def border_artefact(x: torch.Tensor) -> torch.Tensor:
    """Class 1, very sure, within 2 px of the window's border; class 0, less sure, inside."""
    n, _, h, w = x.shape
    ring = torch.ones(h, w, dtype=torch.bool)
    ring[2:-2, 2:-2] = False
    logits = torch.zeros(n, 2, h, w)
    logits[:, 0] = 1.0
    logits[:, 0, ring] = 0.0
    logits[:, 1, ring] = 10.0
    return logits


def interior_artefacts(mask: np.ndarray) -> int:
    """Class-1 pixels away from the scene's own border (which every window's border covers)."""
    return int((mask[2:-2, 2:-2] == 1).sum())


def test_gaussian_blending_leaves_no_seams_where_uniform_does():
    img = torch.zeros(3, 100, 130)
    masks = {}
    for blend in ("uniform", "gaussian"):
        bands = predict_rows(border_artefact, lambda a, b: img[:, a:b], 100, 130, 28, 18, 8, blend)
        masks[blend] = torch.cat([p for _, p in bands], 1).argmax(0).numpy()
    assert interior_artefacts(masks["uniform"]) > 500  # a grid of lines along the window edges
    rows = np.nonzero((masks["uniform"][2:-2, 2:-2] == 1).all(1))[0] + 2
    assert len(rows) > 0  # whole rows of seam
    assert interior_artefacts(masks["gaussian"]) == 0


def test_predict_blends_gaussian_by_default_and_uniform_on_request(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(predict_cli, "load_model", lambda *a: (border_artefact, LoadedWeights("student", {})))
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.full((100, 130, 3), 128, np.uint8)).save(tmp_path / "imgs" / "a.png")
    cfg = write_config(tmp_path)
    for out, extra in (("default", []), ("uniform", ["--blend", "uniform"])):
        assert run(["--config", str(cfg), "--checkpoint", "x", str(tmp_path / "imgs"),
                    "--out", str(tmp_path / out), *extra], capfd)[0] == 0
    assert interior_artefacts(np.asarray(Image.open(tmp_path / "default" / "a_mask.png"))) == 0
    assert interior_artefacts(np.asarray(Image.open(tmp_path / "uniform" / "a_mask.png"))) > 500


def test_gaussian_importance_map_is_nnunets():
    w = importance_map(64, "gaussian")
    assert w.shape == (64, 64) and w.max() == pytest.approx(1.0, abs=1e-3) and w.min() > 0
    assert torch.equal(w, w.flip(0)) and torch.equal(w, w.T)
    # sigma = window / 8 around the centre 31.5: pixel 0 is 31.5 px from it, pixel 31 half a pixel.
    assert w[0, 32] / w[31, 32] == pytest.approx(np.exp(-0.5 * ((31.5 / 8) ** 2 - (0.5 / 8) ** 2)), rel=1e-4)
    assert importance_map(64, "uniform") is None


# ----------------------------------------------------------------------------------------------------------
# 4. One source of defaults


def test_mode_and_blend_are_predicts_own_unless_the_command_line_says(tmp_path, stub, monkeypatch):
    seen = []
    monkeypatch.setattr(predict_cli, "predict_files", lambda *a, **k: seen.append(a[5]) or [])
    write_geotiff(tmp_path / "s.tif", 30, 30)
    cfg = write_config(tmp_path, "eval: {mode: original, blend: uniform, window: 42, stride: 21, batch_size: 3}\n")
    base = ["--config", str(cfg), "--checkpoint", "x", str(tmp_path / "s.tif"), "--out", str(tmp_path / "p")]
    predict_cli.main(base)
    predict_cli.main(base + ["--blend", "uniform", "--window", "56"])
    predict_cli.main(base + ["eval.mode=original", "eval.blend=uniform", "--batch-size", "5"])
    assert [(s.mode, s.blend, s.window, s.stride, s.batch_size) for s in seen] == [
        ("sliding_window", "gaussian", 42, 21, 3),
        ("sliding_window", "uniform", 56, 21, 3),
        ("original", "uniform", 42, 21, 5)]


def test_every_flag_is_in_help_and_on_the_prediction_page():
    parser = predict_cli.build_parser()
    flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"]
    assert {"--blend", "--list", "--alpha", "--mode", "--window", "--stride", "--batch-size"} <= set(flags)
    help_text = parser.format_help()
    page = (REPO / "docs" / "prediction.md").read_text()
    section = page[page.index("## deploy/predict.py"):]
    for flag in flags:
        assert flag in help_text and flag in section, flag


# ----------------------------------------------------------------------------------------------------------
# 5. Batch of scenes


def test_failing_scenes_are_skipped_the_others_written_and_named_in_one_final_line(tmp_path, stub, capfd):
    tiles = tmp_path / "tiles"
    write_geotiff(tiles / "a_good.tif", 50, 60)
    write_geotiff(tiles / "b_one_band.tif", 50, 60, bands=1)
    write_geotiff(tiles / "c_two_band.tif", 50, 60, bands=2)
    (tiles / "d_broken.png").write_bytes(b"\x89PNG not really")
    write_geotiff(tiles / "e_complex.tif", 50, 60, dtype="complex64")
    Image.fromarray(scene_pixels(40, 30).transpose(1, 2, 0).copy()).save(tiles / "f_good.png")
    write_geotiff(tiles / "g_rgbir.tif", 50, 60, bands=4)  # bands 1-3 are red, green, blue: fine
    out = tmp_path / "pred"
    code, _, err = run(["--config", str(write_config(tmp_path)), "--checkpoint", "x", str(tiles), "--out", str(out)],
                       capfd)
    assert code == 2
    last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert last.startswith("error: 4 of 7 scene(s) failed (first: ") and str(tiles / "b_one_band.tif") in last
    assert "3 written to" in last and sum("error: " in line for line in err.splitlines()) == 1
    reports = [line.strip() for line in err.replace("\r", "\n").splitlines() if line.startswith("skipped ")]
    for name in ("b_one_band.tif", "c_two_band.tif", "d_broken.png", "e_complex.tif"):
        assert sum(name in line for line in reports) == 1, (name, reports)
    assert "1 band(s)" in err and "2 band(s)" in err and "complex64" in err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"a_good_{k}.tif" for k in ("mask", "color", "overlay")] + ["a_good_legend.png"]
        + [f"f_good_{k}.png" for k in ("mask", "color", "overlay", "legend")]
        + [f"g_rgbir_{k}.tif" for k in ("mask", "color", "overlay")] + ["g_rgbir_legend.png"])


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_a_full_disk_stops_the_run_in_one_line_saying_what_was_saved(tmp_path, stub, capfd, monkeypatch, code):
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for name in ("a", "b", "c"):  # PNG scenes: each written as one group of files (util.io.write_files)
        Image.fromarray(scene_pixels(30, 40, seed=ord(name)).transpose(1, 2, 0).copy()).save(tiles / f"{name}.png")
    real = util.io.atomic_paths
    calls = []

    @contextmanager
    def full_after_the_first(targets):
        calls.append(targets)
        if len(calls) > 1:
            raise OSError(code, os.strerror(code))
        with real(targets) as temporary:
            yield temporary

    monkeypatch.setattr(util.io, "atomic_paths", full_after_the_first)
    out = tmp_path / "pred"
    code_, stdout, err = run(["--config", str(write_config(tmp_path)), "--checkpoint", "x", str(tiles), "--out",
                              str(out)], capfd)
    assert code_ == 2 and len(calls) == 2  # stopped at b: c was not predicted only to fail as well
    last = err.rstrip("\n").split("\n")[-1]
    assert last == (f"error: could not write the maps of {tiles / 'b.png'} into {out}: {os.strerror(code)}; stopped: "
                    f"1 scene(s) written before it (the last a.png), 2 not written (b.png and the 1 after it)")
    assert sorted(p.name for p in out.iterdir()) == [f"a_{k}.png" for k in ("color", "legend", "mask", "overlay")]
    shares = [line for line in stdout.splitlines() if " px: " in line]
    assert [line.split(":")[0] for line in shares] == ["a.png", "b.png"]  # b's map, shown though not saved
    assert shares[1].startswith("b.png: 1,200 px: ") and " %" in shares[1]


def test_a_write_gdal_could_not_make_stops_the_run_with_what_was_saved(tmp_path, stub, capfd, monkeypatch):
    from rasterio.errors import RasterioIOError

    import deploy.maps

    for name in ("a", "b"):
        write_geotiff(tmp_path / "tiles" / f"{name}.tif", 30, 40)
    real = deploy.maps.make_cog

    def fails_for_b(tiled, cog, kind):
        if cog.name.startswith(".b_"):
            raise RasterioIOError("Write failed. See previous exception for details.")
        real(tiled, cog, kind)

    monkeypatch.setattr(deploy.maps, "make_cog", fails_for_b)
    out = tmp_path / "pred"
    code, _, err = run(["--config", str(write_config(tmp_path)), "--checkpoint", "x", str(tmp_path / "tiles"),
                        "--out", str(out)], capfd)
    last = err.rstrip("\n").split("\n")[-1]
    assert code == 2 and last.startswith(f"error: could not write the maps of {tmp_path / 'tiles' / 'b.tif'} into "
                                         f"{out}: GDAL could not write (Write failed")
    assert last.endswith("stopped: 1 scene(s) written before it (the last a.tif), 1 not written (b.tif)")
    assert sorted(p.name for p in out.iterdir()) == [f"a_{k}" for k in ("color.tif", "legend.png", "mask.tif",
                                                                        "overlay.tif")]


def test_a_scene_that_breaks_midway_leaves_no_partial_files(tmp_path, stub, capfd):
    tiles = tmp_path / "tiles"
    write_geotiff(tiles / "a.tif", 700, 300, compress="deflate")
    data = (tiles / "a.tif").read_bytes()
    (tiles / "a.tif").write_bytes(data[:len(data) * 2 // 3])  # an interrupted copy: later tiles unreadable
    code, _, err = run(["--config", str(write_config(tmp_path)), "--checkpoint", "x", str(tiles),
                        "--out", str(tmp_path / "pred")], capfd)
    assert code == 2 and "1 of 1 scene(s) failed" in err and str(tiles / "a.tif") in err
    assert not (tmp_path / "pred").exists()


def test_outputs_are_never_read_back_as_inputs(tmp_path, stub, capfd):
    tiles = tmp_path / "tiles"
    write_geotiff(tiles / "a.tif", 40, 40)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tiles / "old_mask.png")   # an earlier run's
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tiles / "legend.png")
    cfg = write_config(tmp_path)
    argv = ["--config", str(cfg), "--checkpoint", "x", str(tiles), "--out", str(tiles / "pred")]
    for _ in range(2):  # the second run sees the first run's outputs inside the input folder
        code, stdout, err = run(argv, capfd)
        assert code == 0 and "1 scene(s) written" in stdout, err
    assert sorted(p.name for p in (tiles / "pred").iterdir()) == [
        "a_color.tif", "a_legend.png", "a_mask.tif", "a_overlay.tif"]
    # Named directly, inside --out: not an input either.
    code, _, err = run(["--config", str(cfg), "--checkpoint", "x", str(tiles / "pred" / "a_color.tif"),
                        "--out", str(tiles / "pred")], capfd)
    assert code == 2 and "no images" in err


def test_out_must_be_a_writable_folder_before_anything_runs(tmp_path, monkeypatch, capfd):
    def no_model(*args):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(predict_cli, "load_model", no_model)
    write_geotiff(tmp_path / "a.tif", 20, 20)
    (tmp_path / "file.txt").write_text("x")
    for out, needle in ((tmp_path / "file.txt", "is a file, not a folder"),
                        (tmp_path / "file.txt" / "pred", "is a file, not a folder")):
        code, _, err = run(["--config", str(write_config(tmp_path)), "--checkpoint", "x", str(tmp_path / "a.tif"),
                            "--out", str(out)], capfd)
        assert code == 2 and needle in err and err.count("\n") == 1, err


def test_a_scene_named_too_long_for_its_outputs_is_refused_before_anything_runs(tmp_path, monkeypatch, capfd):
    def no_model(*args):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(predict_cli, "load_model", no_model)
    scene = tmp_path / ("s" * 236 + ".tif")  # a legal name; <stem>_overlay.tif and its temporaries are not
    write_geotiff(scene, 20, 20)
    code, _, err = run(["--config", str(write_config(tmp_path)), "--checkpoint", "x", str(scene),
                        "--out", str(tmp_path / "pred")], capfd)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {scene}: its name is too long"), err
    assert not (tmp_path / "pred").exists()


def test_inputs_from_list_files(tmp_path, stub, capfd):
    write_geotiff(tmp_path / "s" / "one.tif", 30, 30)
    write_geotiff(tmp_path / "s" / "two.tif", 30, 30)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "s" / "three.png")
    listing = tmp_path / "scenes.txt"
    listing.write_text(f"# scenes\n{tmp_path / 's' / 'one.tif'}\n\n{tmp_path / 's' / 'two.tif'}\n")
    other = tmp_path / "more.txt"
    other.write_text(f"{tmp_path / 's' / 'three.png'}\n")
    code, stdout, _ = run(["--config", str(write_config(tmp_path)), "--checkpoint", "x", f"@{listing}",
                           "--list", str(other), "--out", str(tmp_path / "pred")], capfd)
    assert code == 0 and "3 scene(s) written" in stdout
    with pytest.raises(DataError, match="list file not found"):
        predict_cli.collect_inputs([f"@{tmp_path / 'absent.txt'}"])
    listing.write_text(f"{tmp_path / 's' / 'four.tif'}\n")
    with pytest.raises(DataError, match="four.tif"):
        predict_cli.collect_inputs([f"@{listing}"])
