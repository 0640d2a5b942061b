"""deploy/export.py: a checkpoint as an ONNX file that QGIS's Deepness plugin runs, checked the way Deepness runs
it: ONNX Runtime on uint8 tiles divided by 255 (its ModelBase.preprocessing), the metadata read as its
ModelBase.get_metadata_* read it, and a scene tiled and stitched as its map processor does, against
deploy/predict.py's map of the same scene.

One tiny RS-MTDF checkpoint (the demo config at 42 px: translators, the CLIP-branch pass at 28 px and the fusion
all in the graph) is exported once for the module; the refused commands fail before any export.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import Affine

from dataset.transforms import normalize
from deploy import export, predict
from eval.eval import load_model
from eval.inference import default_stride
from model.segmenter import build_segmenter
from tests.train_fixtures import DEMO, assert_nothing_left, assert_one_line_error, invoke, snapshot, write_tiny_dataset
from util.catalog import DATASETS
from util.config import load_config
from util.io import file_sha256

pytestmark = pytest.mark.usefixtures("one_thread", "close_leaked_progress_bars")

TILE = 42
OVERRIDES = [f"dataset.crop_size={TILE}", "teachers.clip.input_size=28", "distill.translator_hidden=16",
             "train.precision=fp32"]
LOVEDA = DATASETS["loveda"]


def write_checkpoint(path: Path, overrides: list[str] = OVERRIDES) -> Path:
    """A random-init segmenter of DEMO + `overrides` in the trainer's checkpoint format (student, EMA, config,
    selected_by). A random head paints one class everywhere (its bias outweighs the rest): without the bias and
    with larger output weights its map has several classes, so that comparing maps means something."""
    cfg = load_config(DEMO, overrides)
    torch.manual_seed(0)
    model = build_segmenter(cfg)
    with torch.no_grad():
        model.head.output[2].bias.zero_()
        model.head.output[2].weight.mul_(10)
    state = model.state_dict()
    ema = {k: v + 0.01 for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "model_ema": ema, "config": cfg.to_dict(), "selected_by": "student",
                "run_id": "test", "iteration": 10, "epoch": 1}, path)
    return path


def export_argv(ckpt: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", DEMO, "--checkpoint", str(ckpt), "--out", str(out), *extra, *OVERRIDES]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(checkpoint, ONNX file) of one export of the tiny checkpoint, by the command's main()."""
    root = tmp_path_factory.mktemp("export")
    ckpt = write_checkpoint(root / "run" / "best.pth")
    out = root / "onnx" / "tiny.onnx"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert export.main(export_argv(ckpt, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return ckpt, out


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def deepness_input(tiles: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 tiles as Deepness feeds them: float32 in 0..1, channels first (no standardization,
    none being in the metadata)."""
    return np.float32(tiles * (1.0 / 255.0)).transpose(0, 3, 1, 2)


def tiny_tiles(root: Path) -> np.ndarray:
    """The images of the tiny training set at tile size: colour regions with noise, (N, TILE, TILE, 3) uint8."""
    write_tiny_dataset(root, size=TILE)
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted((root / "img").glob("*.png"))])


# ----------------------------------------------------------------------------------------------------------
# (a) The graph is predict.py's model on a window


def test_onnx_runtime_gives_predicts_probabilities_on_real_looking_tiles(exported, tmp_path):
    ckpt, onnx_file = exported
    tiles = tiny_tiles(tmp_path / "data")
    cfg = load_config(DEMO, OVERRIDES)
    model, _ = load_model(cfg, ckpt, None, torch.device("cpu"))
    with torch.no_grad():  # what predict.py computes for a window of uint8 pixels
        reference = model(normalize(torch.from_numpy(tiles).permute(0, 3, 1, 2))).float().softmax(1).numpy()
    sess = session(onnx_file)
    batched = sess.run(None, {"image": deepness_input(tiles)})[0]
    one_by_one = np.concatenate([sess.run(None, {"image": deepness_input(t[None])})[0] for t in tiles])
    for probs in (batched, one_by_one):
        assert probs.shape == (len(tiles), LOVEDA.nclass, TILE, TILE)
        assert np.abs(probs - reference).max() <= 1e-4
        assert np.allclose(probs.sum(1), 1, atol=1e-5)  # probabilities: the softmax is in the graph
        assert (probs.argmax(1) == reference.argmax(1)).mean() >= 0.999
    assert len(np.unique(reference.argmax(1))) >= 3  # the maps compared are not one class


# ----------------------------------------------------------------------------------------------------------
# (b) What Deepness reads


def deepness_overlap_px(tile: int, percent: int) -> int:
    """Deepness' overlap in pixels for an overlap in percent (its ProcessingOverlap.get_overlap_px)."""
    return int(tile * percent / 100 * 2) // 2


def test_metadata_holds_what_deepness_reads(exported):
    ckpt, onnx_file = exported
    sess = session(onnx_file)
    meta = {k: json.loads(v) for k, v in sess.get_modelmeta().custom_metadata_map.items()}
    assert str(meta["model_type"]).capitalize() == "Segmentor"
    names = [name for _, name in sorted(meta["class_names"].items(), key=lambda kv: int(kv[0]))]
    assert names == list(LOVEDA.class_names)
    assert float(meta["resolution"]) == 30.0  # LoveDA's 0.3 m
    assert int(meta["tile_size"]) == int(meta["tiles_size"]) == TILE
    assert deepness_overlap_px(TILE, int(meta["tiles_overlap"])) == TILE - default_stride(TILE)  # predict's stride
    assert float(meta["seg_thresh"]) == 0 and int(meta["seg_small_segment"]) == 0  # plain argmax
    # The normalisation is inside the graph: Deepness must not standardize again.
    assert "standardization_mean" not in meta and "standardization_std" not in meta
    assert meta["rs_mtdf_weights"] == "student" and meta["rs_mtdf_checkpoint_sha256"] == file_sha256(ckpt)
    assert (meta["rs_mtdf_checkpoint_run_id"], meta["rs_mtdf_checkpoint_iteration"],
            meta["rs_mtdf_checkpoint_epoch"]) == ("test", 10, 1)   # as write_checkpoint saved them

    # One input (batch, 3, tile, tile), batch dynamic; one square output (batch, classes, tile, tile).
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, TILE, TILE] and inp.type == "tensor(float)"
    assert isinstance(out.shape[0], str) and out.shape[1:] == [LOVEDA.nclass, TILE, TILE]
    # Loadable by the oldest onnxruntime Deepness installs (1.12.1: IR version 8, opset 17).
    proto = onnx.load(str(onnx_file))
    assert proto.ir_version <= 8 and max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) <= 17
    onnx.checker.check_model(proto, full_check=True)


def test_resolution_for_own_imagery(exported, tmp_path, monkeypatch, capsys):
    ckpt, onnx_file = exported
    monkeypatch.setattr(export, "to_onnx", lambda *args: onnx.load(str(onnx_file)))  # the graph is known
    out = tmp_path / "own.onnx"
    assert export.main(export_argv(ckpt, out, "--resolution", "12.5")) == 0
    assert json.loads(session(out).get_modelmeta().custom_metadata_map["resolution"]) == 12.5
    assert "12.5 cm/px" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------
# (c) A scene tiled by Deepness against predict.py's map


def deepness_map(sess: ort.InferenceSession, rgb: np.ndarray, overlap: int) -> np.ndarray:
    """The class map Deepness makes of an (H, W, 3) uint8 scene with this Segmentor and an overlap in pixels.

    As its map processor does it: square tiles of the model's size every tile - overlap pixels from the top
    left (the scenes here are one tile plus a whole number of strides, where Deepness pads nothing); each tile
    fed as deepness_input, its class the argmax of the probabilities (seg_thresh 0); stitched as
    TileParams.set_mask_on_full_img: a tile writes what lies more than half the overlap inside its borders (out
    to the scene's edge for the first and last tiles of a row or column), later tiles over earlier ones.
    """
    tile = sess.get_inputs()[0].shape[-1]
    height, width = rgb.shape[:2]
    stride, half = tile - overlap, overlap // 2
    assert (height - tile) % stride == 0 and (width - tile) % stride == 0, "a scene Deepness would pad"
    ys, xs = range(0, height - tile + 1, stride), range(0, width - tile + 1, stride)
    origins = [(y, x) for y in ys for x in xs]
    tiles = np.stack([rgb[y:y + tile, x:x + tile] for y, x in origins])
    labels = np.concatenate([sess.run(None, {"image": deepness_input(tiles[i:i + 8])})[0].argmax(1)
                             for i in range(0, len(tiles), 8)])
    full = np.full((height, width), -1)
    for (y, x), lab in zip(origins, labels):
        top = y if y == ys[0] else y + half
        bottom = y + tile if y == ys[-1] else y + tile - half
        left = x if x == xs[0] else x + half
        right = x + tile if x == xs[-1] else x + tile - half
        full[top:bottom, left:right] = lab[top - y:bottom - y, left - x:right - x]
    assert (full >= 0).all()
    return full


def single_window_pixels(height: int, width: int, tile: int, stride: int) -> np.ndarray:
    """Where exactly one of predict.py's windows covers a pixel (so its class is that window's argmax)."""
    def once(length: int) -> np.ndarray:
        count = np.zeros(length, int)
        for start in range(0, length - tile + 1, stride):
            count[start:start + tile] += 1
        return count == 1
    return once(height)[:, None] & once(width)[None, :]


def write_scene(path: Path, height: int, width: int) -> np.ndarray:
    """A georeferenced RGB GeoTIFF (UTM, metres, LoveDA's 0.3 m pixels: what Deepness needs and does not
    resample) of colour regions like the tiny training set's; returns its pixels (H, W, 3)."""
    rng = np.random.default_rng(1)
    colours = np.array([[200, 200, 200], [200, 40, 40], [230, 230, 60], [30, 30, 200], [150, 120, 180],
                        [20, 160, 20], [240, 190, 130]], dtype=np.float32)
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(30):
        y, x, h, w = rng.integers(0, max(height, width), 4)
        mask[y:y + h // 3 + 6, x:x + w // 3 + 6] = rng.integers(0, 7)
    rgb = (colours[mask] + rng.normal(0, 12, (height, width, 3))).clip(0, 255).astype(np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(0.3, 0, 389_000, 0, -0.3, 5_819_000)) as dst:
        dst.write(rgb.transpose(2, 0, 1))
    return rgb


def predict_map(ckpt: Path, scene: Path, out: Path, stride: int) -> np.ndarray:
    argv = ["--config", DEMO, "--checkpoint", str(ckpt), "--out", str(out), str(scene), "--mode", "sliding_window",
            "--window", str(TILE), "--stride", str(stride), "--blend", "uniform", *OVERRIDES]
    assert predict.main(argv) == 0
    with rasterio.open(out / f"{scene.stem}_mask.tif") as ds:
        return ds.read(1)


def test_a_scene_tiled_as_deepness_does_gets_predicts_classes(exported, tmp_path):
    ckpt, onnx_file = exported
    sess = session(onnx_file)
    overlap = deepness_overlap_px(TILE, json.loads(sess.get_modelmeta().custom_metadata_map["tiles_overlap"]))
    stride = TILE - overlap
    # One tile plus whole strides, of the metadata's overlap and of none: Deepness pads nothing either way.
    height, width = TILE + 3 * stride, TILE + 6 * stride
    assert (height - TILE) % TILE == 0 and (width - TILE) % TILE == 0
    rgb = write_scene(tmp_path / "scene.tif", height, width)

    # The metadata's overlap. predict.py averages the windows over a pixel, Deepness keeps the tile whose middle
    # is nearest: the two rules take the same window, and must give the same class, wherever one window alone
    # covers a pixel. Elsewhere the rules differ where the windows disagree, which a random model's do often
    # (here on about 8 % of all pixels; docs/qgis.md).
    ours = deepness_map(sess, rgb, overlap)
    theirs = predict_map(ckpt, tmp_path / "scene.tif", tmp_path / "pred", stride)
    single = single_window_pixels(height, width, TILE, stride)
    assert single.mean() > 0.2
    assert (ours == theirs)[single].mean() >= 0.999
    assert len(np.unique(ours)) >= 3  # the maps compared are not one class

    # No overlap (Deepness' overlap set to 0, predict's stride the tile): one window per pixel, the same map.
    ours_0 = deepness_map(sess, rgb, 0)
    theirs_0 = predict_map(ckpt, tmp_path / "scene.tif", tmp_path / "pred_0", TILE)
    assert (ours_0 == theirs_0).mean() >= 0.999


# ----------------------------------------------------------------------------------------------------------
# (d) Refused in one line, leaving nothing


def refused(argv: list[str], root: Path, capfd, needles: list[str]) -> None:
    before = snapshot(root)
    code, err = invoke(lambda: export.main(argv), capfd)
    assert_one_line_error(code, err, needles)
    assert_nothing_left(before, snapshot(root))


def test_a_missing_checkpoint_is_one_line(tmp_path, capfd):
    missing = tmp_path / "run" / "best.pth"
    refused(export_argv(missing, tmp_path / "out" / "m.onnx"), tmp_path, capfd, ["checkpoint not found", str(missing)])


def test_a_checkpoint_of_another_model_is_one_line(tmp_path, capfd):
    other = write_checkpoint(tmp_path / "potsdam" / "best.pth", OVERRIDES + ["dataset.name=potsdam"])
    refused(export_argv(other, tmp_path / "out" / "m.onnx"), tmp_path, capfd, [str(other), "6 classes", "7"])


def test_an_out_that_cannot_be_the_file_is_one_line_before_the_model_loads(tmp_path, monkeypatch, capfd):
    def no_model(*args):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr("eval.eval.load_model", no_model)
    ckpt = tmp_path / "best.pth"
    ckpt.write_bytes(b"not read")
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for out, needles in ((tmp_path / "folder", ["--out", "is a folder", str(tmp_path / "folder")]),
                         (tmp_path / "file.txt" / "m.onnx", ["is a file, not a folder", str(tmp_path / "file.txt")]),
                         (tmp_path / "model.pth", ["*.onnx", str(tmp_path / "model.pth")]),
                         (tmp_path / ("m" * 250 + ".onnx"), ["--out", "255 bytes", "file system allows"]),
                         (tmp_path / ("d" * 256) / "m.onnx", ["--out", "256 bytes", "file system allows"])):
        refused(export_argv(ckpt, out), tmp_path, capfd, needles)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_out_in_a_read_only_folder_is_one_line(tmp_path, capfd):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        refused(export_argv(tmp_path / "best.pth", locked / "m.onnx"), tmp_path, capfd, [str(locked), "not writable"])
    finally:
        locked.chmod(0o755)


def test_a_failed_write_leaves_nothing(exported, tmp_path, monkeypatch, capfd):
    ckpt, onnx_file = exported
    monkeypatch.setattr(export, "to_onnx", lambda *args: onnx.load(str(onnx_file)))

    def disk_full(proto, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", disk_full)
    out = tmp_path / "new" / "folder" / "m.onnx"
    refused(export_argv(ckpt, out), tmp_path, capfd, ["could not write", str(out), "No space left on device"])


def test_weights_beyond_one_onnx_file_are_one_line(tmp_path, monkeypatch, capfd):
    ckpt = write_checkpoint(tmp_path / "best.pth")
    monkeypatch.setattr(export, "MAX_WEIGHT_BYTES", 1000)  # as ViT-G's 4.7 GB against the 2 GB of one file
    refused(export_argv(ckpt, tmp_path / "out" / "m.onnx"), tmp_path, capfd, ["model.backbone=tiny", "2 GiB"])
