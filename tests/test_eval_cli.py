"""eval/eval.py and deploy/predict.py: outputs, flags, and one-line errors (stub model and dataset stand in)."""

import errno
import json
import os
import subprocess
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import deploy.predict as predict_cli
import eval.eval as eval_cli
import util.io
from model.convert import LoadedWeights
from util.catalog import DATASETS
from util.cli import run_main
from util.errors import ConfigError, DataError, WeightsError
from util.io import file_sha256

REPO = Path(__file__).resolve().parents[1]
PALETTE = np.array(DATASETS["loveda"].palette, dtype=np.uint8)


SOURCE = {"run_id": "0123456789ab", "iteration": 40, "epoch": 2, "selected_by": "student"}


def stub_model(cfg=None, checkpoint=None, which=None, device=None) -> tuple[torch.nn.Module, LoadedWeights]:
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, 7, 1).to(device).eval(), LoadedWeights(which or "student", dict(SOURCE))


def write_config(tmp_path: Path) -> Path:
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "val.txt").write_text("a.png a_mask.png\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"dataset: {{lists: {splits}, crop_size: 28}}\ntrain: {{num_workers: 0, method: fixmatch}}\n"
                   "teachers: {dino: {enabled: false}, clip: {enabled: false}}\n"
                   "distill: {fusion_weights: {student: 1.0, dino: 0.0, clip: 0.0}}\n"
                   "model: {backbone: tiny, pretrained: null}\n")
    return cfg


class FakeSemiDataset(torch.utils.data.Dataset):
    def __init__(self, cfg, mode, split_file):
        g = torch.Generator().manual_seed(3)
        self.items = [{"img": torch.randn(3, 30, 20, generator=g),
                       "mask": torch.randint(0, 7, (30, 20), generator=g), "name": f"t{i}"} for i in range(3)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.fixture
def stubs(monkeypatch):
    monkeypatch.setattr(eval_cli, "load_model", stub_model)
    monkeypatch.setattr(predict_cli, "load_model", stub_model)
    monkeypatch.setitem(sys.modules, "dataset.semi", types.SimpleNamespace(SemiDataset=FakeSemiDataset))


def test_eval_writes_metrics_table_and_confusion_matrix(tmp_path, stubs, capsys):
    cfg = write_config(tmp_path)
    ckpt = tmp_path / "run" / "best.pth"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"")
    assert eval_cli.main(["--config", str(cfg), "--checkpoint", str(ckpt), "--mode", "sliding_window",
                          "--weights", "ema"]) == 0
    out = tmp_path / "run" / "eval_best_val_sliding_window_ema"
    assert sorted(p.name for p in out.iterdir()) == ["confusion_matrix.png", "metrics.json", "metrics.md"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["mode"], metrics["weights"], metrics["window"], metrics["stride"], metrics["blend"]) == (
        "sliding_window", "ema", 28, 18, "uniform")  # the reference's default stride: int(28 * 2 / 3)
    # What produced the scores: the checkpoint (its bytes and the run and moment it holds) and the list scored.
    assert metrics["checkpoint"] == {"path": str(ckpt.resolve()), "sha256": file_sha256(ckpt), **SOURCE}
    val = tmp_path / "splits" / "val.txt"
    assert (metrics["subset"], metrics["subset_list"], metrics["subset_list_sha256"]) == (
        "val", str(val), file_sha256(val))
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["pixels"] == 3 * 30 * 20
    assert set(metrics["classes"]) == set(DATASETS["loveda"].class_names)
    assert "| mIoU |" in (out / "metrics.md").read_text() and "| mIoU |" in capsys.readouterr().out
    with Image.open(out / "confusion_matrix.png") as im:
        assert im.format == "PNG"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_eval_shows_the_scores_before_a_failed_write_and_saves_nothing(tmp_path, stubs, monkeypatch, capsys, code):
    @contextmanager
    def failing(targets):
        raise OSError(code, os.strerror(code))
        yield  # a generator: what contextmanager takes

    monkeypatch.setattr(util.io, "atomic_paths", failing)
    cfg = write_config(tmp_path)
    ckpt = tmp_path / "run" / "best.pth"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"")
    with pytest.raises(SystemExit) as info:
        run_main(lambda: eval_cli.main(["--config", str(cfg), "--checkpoint", str(ckpt)]))
    captured = capsys.readouterr()
    out = tmp_path / "run" / "eval_best_val_original_student"
    assert info.value.code == 2 and not out.exists()
    assert "| mIoU |" in captured.out  # what was computed, on screen
    assert captured.err.endswith(f"error: could not write metrics.json, metrics.md, confusion_matrix.png into {out}: "
                                 f"{os.strerror(code)}; none of them was written; the scores above are what was "
                                 f"computed\n")


def test_eval_refuses_a_default_out_whose_name_the_file_system_cannot_hold_before_scoring(tmp_path, stubs, capsys):
    cfg = write_config(tmp_path)
    ckpt = tmp_path / "run" / ("best_" + "x" * 230 + ".pth")  # a legal name; eval_<stem>_val_original_student is not
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"")
    with pytest.raises(SystemExit) as info:
        run_main(lambda: eval_cli.main(["--config", str(cfg), "--checkpoint", str(ckpt)]))
    captured = capsys.readouterr()
    assert info.value.code == 2 and "| mIoU |" not in captured.out
    assert captured.err.startswith("error: the output folder beside the checkpoint (--out): the name 'eval_best_xxx")
    assert "more than the 255 this file system allows" in captured.err and captured.err.count("\n") == 1


def test_eval_flags_become_config_overrides():
    args = eval_cli.parse_args(["--config", "c.yaml", "--checkpoint", "x", "--mode", "original", "--window", "42",
                                "--batch-size", "2", "train.seed=1"])
    assert {k: v for k, v in eval_cli.flag_overrides(args).items() if v is not None} == {
        "eval.mode": "original", "eval.window": 42, "eval.batch_size": 2}
    assert args.overrides == ["train.seed=1"]


@pytest.mark.parametrize("flag", [["--split", "test"], ["--split=val"], ["--split"]])
def test_eval_refuses_split_and_points_to_subset(flag):
    # "split" is the labelled share a run trained on (train.py --split); eval.py's val/test is --subset.
    with pytest.raises(ConfigError, match="did you mean --subset"):
        eval_cli.parse_args(["--config", "c.yaml", "--checkpoint", "x", *flag])


@pytest.mark.parametrize("abbreviation", ["--sub", "--spl"])
def test_eval_takes_no_abbreviated_options(abbreviation, capsys):
    with pytest.raises(SystemExit):
        eval_cli.parse_args(["--config", "c.yaml", "--checkpoint", "x", abbreviation, "test"])
    assert f"unrecognized arguments: {abbreviation}" in capsys.readouterr().err


def test_eval_missing_list_file_and_checkpoint_are_one_line_errors(tmp_path):
    cfg = write_config(tmp_path)
    with pytest.raises(DataError, match="test.txt"):
        eval_cli.main(["--config", str(cfg), "--checkpoint", "missing.pth", "--subset", "test"])
    with pytest.raises(WeightsError, match="missing.pth"):
        eval_cli.main(["--config", str(cfg), "--checkpoint", "missing.pth"])


@pytest.mark.slow
def test_eval_script_runs_from_the_repo_root_and_reports_errors_in_one_line(tmp_path):
    cfg = write_config(tmp_path)
    proc = subprocess.run([sys.executable, "eval/eval.py", "--config", str(cfg), "--checkpoint", "nope.pth"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: checkpoint not found: nope.pth"


def write_images(folder: Path) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (33, 45, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)).save(folder / "b.jpg")
    Image.fromarray(rng.integers(0, 256, (40, 29, 3), dtype=np.uint8)).save(folder / "c.tif")


def test_predict_writes_mask_colour_and_overlay_per_image(tmp_path, stubs):
    cfg = write_config(tmp_path)
    write_images(tmp_path / "imgs")
    out = tmp_path / "pred"
    assert predict_cli.main(["--config", str(cfg), "--checkpoint", "any.pth", str(tmp_path / "imgs"),
                             "--out", str(out), "eval.batch_size=2"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{s}_{k}.png" for s in "abc" for k in ("mask", "color", "overlay", "legend"))
    for stem, size in (("a", (33, 45)), ("b", (20, 16)), ("c", (40, 29))):
        mask = Image.open(out / f"{stem}_mask.png")
        color = np.asarray(Image.open(out / f"{stem}_color.png"))
        assert mask.mode == "L" and mask.size == size[::-1]
        assert np.asarray(mask).max() < 7
        assert np.array_equal(color, PALETTE[np.asarray(mask)])
        assert Image.open(out / f"{stem}_overlay.png").size == size[::-1]


def test_predict_skips_an_unreadable_image_and_names_it_at_the_end(tmp_path, stubs):
    cfg = write_config(tmp_path)
    write_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "b.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "pred"
    with pytest.raises(DataError, match="1 of 3 scene.*b.jpg"):
        predict_cli.main(["--config", str(cfg), "--checkpoint", "any.pth", str(tmp_path / "imgs"), "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s}_{k}.png" for s in "ac" for k in ("mask", "color", "overlay", "legend"))


def test_predict_inputs_must_exist_and_have_distinct_stems(tmp_path):
    write_images(tmp_path / "imgs")
    with pytest.raises(DataError, match="input not found"):
        predict_cli.collect_inputs([str(tmp_path / "nothing.png")])
    (tmp_path / "imgs" / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "imgs" / "sub" / "a.png")
    with pytest.raises(DataError, match="same outputs"):
        predict_cli.collect_inputs([str(tmp_path / "imgs"), str(tmp_path / "imgs" / "sub")])


@pytest.mark.slow
def test_images_are_opened_without_a_pixel_limit(tmp_path):
    """Whole orthophotos (a Potsdam tile holds 36 M pixels, others more) are the user's own data: the one
    limit, util.io.MAX_IMAGE_PIXELS, is none; it is set where images are opened, not by importing a reader."""
    import util.io

    code = ("from PIL import Image; default = Image.MAX_IMAGE_PIXELS; "
            "import deploy.predict, dataset.prepare, dataset.semi; assert Image.MAX_IMAGE_PIXELS == default")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    with util.io.open_image(tmp_path / "a.png") as im:
        assert im.size == (4, 4)
    assert util.io.MAX_IMAGE_PIXELS is None and Image.MAX_IMAGE_PIXELS is None


def test_colorize_uses_the_palette_and_draws_ignore_black():
    from eval.visualize import colorize, overlay

    mask = np.array([[0, 1], [6, 255]], dtype=np.uint8)
    color = colorize(mask, DATASETS["loveda"].palette)
    assert color[0, 0].tolist() == [255, 255, 255] and color[0, 1].tolist() == [255, 0, 0]
    assert color[1, 0].tolist() == [255, 195, 128] and color[1, 1].tolist() == [0, 0, 0]
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    assert overlay(image, color, alpha=0.5)[0, 1].tolist() == [178, 50, 50]


def test_denormalize_inverts_the_input_normalisation():
    from dataset.transforms import normalize
    from eval.visualize import denormalize

    rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    assert np.array_equal(denormalize(normalize(torch.from_numpy(rgb).permute(2, 0, 1))), rgb)
