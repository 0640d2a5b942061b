"""eval/backends.py: the model run by ONNX Runtime gives PyTorch's scores and maps, its graph is exported once per
checkpoint and size into a cache and reused, and `auto` picks it on a CPU. One export of a tiny checkpoint is shared
by every test here (the module's cache)."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import rasterio
import torch

from deploy import predict
from eval import backends
from eval import eval as eval_cli
from eval.backends import OnnxRuntimeModel, choose_backend, graph_identity
from eval.eval import load_model
from eval.inference import predict_logits, predict_rows
from tests.test_export import OVERRIDES, TILE, write_checkpoint, write_scene
from tests.train_fixtures import DEMO, write_tiny_dataset
from util.config import load_config
from util.errors import ConfigError, OutputError
from util.io import file_sha256

pytestmark = pytest.mark.usefixtures("one_thread", "close_leaked_progress_bars")
CPU = torch.device("cpu")
# The tiny student without teachers: its graph exports in a third of the time of RS-MTDF's (whose second encoder
# pass for the fusion tests/test_export.py exports and checks).
TINY = [*OVERRIDES, "train.method=fixmatch", "teachers.dino.enabled=false", "teachers.clip.enabled=false",
        "distill.fusion_weights={student: 1.0, dino: 0.0, clip: 0.0}"]


@pytest.fixture
def torch_unless_asked():
    """The real choice of `auto` here (conftest.py makes it PyTorch elsewhere)."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny checkpoint, its model, and its graph for TILE x TILE inputs exported into this module's cache."""
    root = tmp_path_factory.mktemp("backends")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RS_MTDF_CACHE", str(root / "cache"))
        ckpt = write_checkpoint(root / "run" / "best.pth", TINY)
        cfg = load_config(DEMO, TINY)
        model, loaded = load_model(cfg, ckpt, None, CPU)
        identity = graph_identity(cfg, file_sha256(ckpt), loaded.which)
        runner = OnnxRuntimeModel(model, identity, threads=1)
        runner(torch.zeros(1, 3, TILE, TILE))
        yield types.SimpleNamespace(root=root, ckpt=ckpt, cfg=cfg, model=model, identity=identity, runner=runner,
                                    graph=runner.path(TILE, TILE))


def real_looking_images(root: Path, size: int) -> torch.Tensor:
    """The tiny training set's colour regions with noise, normalised as the loaders give them."""
    from PIL import Image

    from dataset.transforms import normalize

    write_tiny_dataset(root, size=size)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((root / "img").glob("*.png"))]
    return normalize(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2))


def assert_agree(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert (ours - reference).abs().max() <= 1e-4
    assert (ours.argmax(1) == reference.argmax(1)).float().mean() >= 0.999
    assert len(reference.argmax(1).unique()) >= 3  # the maps compared are not one class


# ----------------------------------------------------------------------------------------------------------
# Same numbers


def test_onnxruntime_gives_pytorchs_probabilities_in_both_modes(tiny, tmp_path):
    images = real_looking_images(tmp_path / "original", TILE)[:6]
    assert_agree(predict_logits(tiny.runner, images, "original"), predict_logits(tiny.model, images, "original"))
    scene = real_looking_images(tmp_path / "sliding", 3 * TILE)[:2]
    args = ("sliding_window", TILE, 28, 4, None, "gaussian")
    assert_agree(predict_logits(tiny.runner, scene, *args), predict_logits(tiny.model, scene, *args))


def test_onnxruntime_streams_rows_as_pytorch_does(tiny, tmp_path):
    scene = real_looking_images(tmp_path, 2 * TILE)[0]

    def rows(model):
        return torch.cat([p for _, p in predict_rows(model, lambda top, bottom: scene[:, top:bottom], 2 * TILE,
                                                     2 * TILE, TILE, 28, 3, "gaussian")], 1)

    assert_agree(rows(tiny.runner)[None], rows(tiny.model)[None])


def geotiff_outputs(folder: Path) -> dict[str, tuple[np.ndarray, dict]]:
    found = {}
    for kind in ("mask", "color", "overlay"):
        with rasterio.open(folder / f"scene_{kind}.tif") as ds:
            found[kind] = ds.read(), {"crs": ds.crs, "transform": ds.transform, "overviews": ds.overviews(1),
                                      "layout": ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT"),
                                      "tags": {k: v for k, v in ds.tags().items() if k != "BACKEND"}}
    return found


def test_predict_maps_a_geotiff_alike_with_both_backends(tiny, tmp_path):
    write_scene(tmp_path / "scene.tif", 300, 280)
    maps = {}
    for backend in ("torch", "onnxruntime"):
        argv = ["--config", DEMO, "--checkpoint", str(tiny.ckpt), "--out", str(tmp_path / backend),
                str(tmp_path / "scene.tif"), "--window", str(TILE), "--backend", backend, *TINY]
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("RS_MTDF_CACHE", str(tiny.root / "cache"))
            patch.setattr(backends, "to_onnx", no_export)  # the module's graph serves: same checkpoint, same window
            assert predict.main(argv) == 0
        maps[backend] = geotiff_outputs(tmp_path / backend)
    for kind in ("mask", "color", "overlay"):
        (ours, ours_info), (theirs, theirs_info) = maps["onnxruntime"][kind], maps["torch"][kind]
        assert ours_info == theirs_info and ours_info["layout"] == "COG"
        assert ours.shape == theirs.shape and (ours == theirs).all(0).mean() >= 0.999
    with rasterio.open(tmp_path / "onnxruntime" / "scene_mask.tif") as ds:
        assert ds.tags()["BACKEND"] == "onnxruntime"


def test_eval_scores_alike_with_both_backends(tiny, tmp_path):
    splits = write_tiny_dataset(tmp_path / "data", size=TILE)
    scores = {}
    for backend in ("torch", "onnxruntime"):
        argv = ["--config", DEMO, "--checkpoint", str(tiny.ckpt), "--subset", "test", "--backend", backend,
                "--out", str(tmp_path / backend), *TINY, f"dataset.root={tmp_path / 'data'}",
                f"dataset.lists={splits}", "train.num_workers=0"]
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("RS_MTDF_CACHE", str(tiny.root / "cache"))
            patch.setattr(backends, "to_onnx", no_export)
            assert eval_cli.main(argv) == 0
        scores[backend] = json.loads((tmp_path / backend / "metrics.json").read_text())
    ours, theirs = scores["onnxruntime"], scores["torch"]
    assert (ours["backend"], theirs["backend"]) == ("onnxruntime", "torch")
    differing = np.abs(np.array(ours["confusion_matrix"]) - np.array(theirs["confusion_matrix"])).sum() / 2
    assert differing <= 0.001 * theirs["pixels"]
    assert ours["miou"] == pytest.approx(theirs["miou"], abs=0.1)


# ----------------------------------------------------------------------------------------------------------
# The cache


def no_export(*args):
    raise AssertionError("exported again")


def test_a_graph_is_exported_once_and_reused_by_a_later_run(tiny, monkeypatch):
    monkeypatch.setattr(backends, "to_onnx", no_export)
    later = OnnxRuntimeModel(tiny.model, dict(tiny.identity), threads=1, cache=tiny.graph.parent)
    x = torch.randn(2, 3, TILE, TILE)
    assert torch.equal(later(x), tiny.runner(x))


@pytest.mark.parametrize("change", ["checkpoint", "weights", "model setting", "height", "width"])
def test_everything_that_changes_the_graph_changes_its_cache_entry(tiny, change):
    identity = dict(tiny.identity)
    size = {"height": TILE, "width": TILE}
    if change == "checkpoint":
        identity["checkpoint_sha256"] = "0" * 64
    elif change == "weights":
        identity["weights"] = "ema"
    elif change == "model setting":
        identity["model"] = {**identity["model"], "distill.translator_hidden": 32}
    else:
        size[change] += 14
    other = OnnxRuntimeModel(tiny.model, identity, threads=1, cache=tiny.graph.parent)
    assert other.path(size["height"], size["width"]) != tiny.graph
    assert OnnxRuntimeModel(tiny.model, dict(tiny.identity), 1, tiny.graph.parent).path(TILE, TILE) == tiny.graph


@pytest.mark.parametrize("damage", ["truncated", "another key"])
def test_a_damaged_cache_entry_is_exported_again(tiny, tmp_path, monkeypatch, capsys, damage):
    good = onnx.load(str(tiny.graph))
    entry = tmp_path / "cache" / tiny.graph.name
    entry.parent.mkdir()
    if damage == "truncated":
        entry.write_bytes(tiny.graph.read_bytes()[:5000])
    else:
        backends.set_cache_key(good, "another")
        onnx.save(good, str(entry))
    fresh = onnx.load(str(tiny.graph))
    del fresh.metadata_props[:]
    monkeypatch.setattr(backends, "to_onnx", lambda *args: fresh)
    runner = OnnxRuntimeModel(tiny.model, dict(tiny.identity), threads=1, cache=entry.parent)
    x = torch.randn(1, 3, TILE, TILE)
    assert torch.equal(runner(x), tiny.runner(x))
    assert "its cache entry did not open" in capsys.readouterr().err
    monkeypatch.setattr(backends, "to_onnx", no_export)  # the entry is whole again
    assert torch.equal(OnnxRuntimeModel(tiny.model, dict(tiny.identity), 1, entry.parent)(x), tiny.runner(x))
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # and nothing else was left


def test_a_cache_that_cannot_be_written_is_one_line(tiny, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(backends, "to_onnx", lambda *args: onnx.load(str(tiny.graph)))
    runner = OnnxRuntimeModel(tiny.model, dict(tiny.identity), threads=1, cache=tmp_path / "file" / "onnx")
    with pytest.raises(OutputError, match="could not write the ONNX cache entry .* set RS_MTDF_CACHE"):
        runner(torch.zeros(1, 3, TILE, TILE))


def test_the_cache_is_where_the_environment_says(monkeypatch, tmp_path):
    monkeypatch.setenv("RS_MTDF_CACHE", str(tmp_path / "mine"))
    assert backends.cache_dir() == tmp_path / "mine" / "onnx"
    monkeypatch.delenv("RS_MTDF_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert backends.cache_dir() == tmp_path / "xdg" / "rs_mtdf" / "onnx"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert backends.cache_dir() == tmp_path / "home" / ".cache" / "rs_mtdf" / "onnx"


# ----------------------------------------------------------------------------------------------------------
# Which backend runs


@pytest.mark.parametrize("mode", ["original", "sliding_window"])
def test_auto_runs_onnxruntime_on_a_cpu_and_pytorch_on_a_gpu(mode):
    model = torch.nn.Conv2d(3, 7, 1)
    assert choose_backend("auto", CPU, mode, model) == "onnxruntime"
    assert choose_backend("auto", torch.device("cuda"), mode, model) == "torch"
    assert choose_backend("torch", CPU, mode, model) == "torch"


def test_a_model_beyond_one_onnx_graph_runs_in_pytorch_unless_onnxruntime_is_asked_for(monkeypatch, capsys):
    monkeypatch.setattr(backends, "MAX_WEIGHT_BYTES", 10)
    model = torch.nn.Conv2d(3, 7, 1)
    assert choose_backend("auto", CPU, "original", model) == "torch"
    assert "more than one ONNX graph holds" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="use --backend torch"):
        choose_backend("onnxruntime", CPU, "original", model)


def test_a_pytorch_without_the_exporter_runs_in_pytorch_by_default(monkeypatch, capsys):
    """PyTorch 2.4 and 2.5 cannot export the graph: `auto` stays with PyTorch there, saying why."""
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    model = torch.nn.Conv2d(3, 7, 1)
    assert choose_backend("auto", CPU, "original", model) == "torch"
    assert "needs PyTorch 2.6 or newer" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="needs PyTorch 2.6 or newer"):
        choose_backend("onnxruntime", CPU, "original", model)
