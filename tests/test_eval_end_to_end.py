"""eval/eval.py and deploy/predict.py end to end, on a tiny real segmenter saved as a training checkpoint: their
main(argv) in this process (the scripts start as a user runs them in tests/test_entry_points.py; predict runs as a
process in tests/test_predict_geo.py's memory test, eval in tests/test_eval_cli.py)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deploy import predict
from eval import eval as eval_cli
from model.segmenter import build_segmenter
from tests.train_fixtures import assert_one_line_error, invoke
from util.catalog import DATASETS
from util.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread", "close_leaked_progress_bars")

TINY = ("model: {backbone: tiny, pretrained: null}\n"
        "train: {method: fixmatch, num_workers: 0, precision: fp32}\n"
        "teachers: {dino: {enabled: false}, clip: {enabled: false}}\n"
        "distill: {fusion_weights: {student: 1.0, dino: 0.0, clip: 0.0}}\n")


def make_run(tmp_path: Path, name: str = "loveda") -> tuple[Path, Path]:
    """A config over a two-image val split, and a checkpoint of a tiny segmenter for it."""
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i, size in enumerate([(42, 56), (30, 44)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        Image.fromarray(rng.integers(0, DATASETS[name].nclass, size, dtype=np.uint8)).save(root / "ann" / f"{i}.png")
        lines.append(f"img/{i}.png ann/{i}.png")
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "val.txt").write_text("\n".join(lines) + "\n")
    cfg_path = tmp_path / f"{name}.yaml"
    cfg_path.write_text(f"dataset: {{name: {name}, root: {root}, lists: {splits}, crop_size: 28}}\n" + TINY)
    torch.manual_seed(0)
    state = build_segmenter(load_config(cfg_path)).state_dict()
    ckpt = tmp_path / "run" / "best.pth"
    ckpt.parent.mkdir()
    torch.save({"model": state, "model_ema": state, "config": load_config(cfg_path).to_dict()}, ckpt)
    return cfg_path, ckpt


def predict_argv(tmp_path: Path, cfg: Path, ckpt: Path) -> list[str]:
    return ["--config", str(cfg), "--checkpoint", str(ckpt), str(tmp_path / "data" / "img"), "--out",
            str(tmp_path / "pred")]


def assert_three_pictures_per_image(out: Path) -> None:
    assert len(list(out.glob("*_mask.png"))) == 2 and len(list(out.glob("*_overlay.png"))) == 2
    assert Image.open(out / "1_color.png").size == (44, 30)


def test_eval_scores_a_checkpoint(tmp_path, capsys):
    cfg, ckpt = make_run(tmp_path)
    assert eval_cli.main(["--config", str(cfg), "--checkpoint", str(ckpt), "--mode", "sliding_window",
                          "--weights", "ema"]) == 0
    metrics = json.loads((ckpt.parent / "eval_best_val_sliding_window_ema" / "metrics.json").read_text())
    assert 0 < metrics["pixels"] <= 42 * 56 + 30 * 44
    assert metrics["unit"] == "percent" and metrics["miou"] is not None and 0 <= metrics["miou"] <= 100
    assert "mIoU" in capsys.readouterr().out


def test_predict_writes_three_pictures(tmp_path):
    cfg, ckpt = make_run(tmp_path)
    assert predict.main(predict_argv(tmp_path, cfg, ckpt)) == 0
    assert_three_pictures_per_image(tmp_path / "pred")


def test_checkpoint_of_another_class_count_is_a_one_line_error(tmp_path, capfd):
    _, ckpt = make_run(tmp_path / "potsdam", name="potsdam")
    cfg, _ = make_run(tmp_path / "loveda")
    code, err = invoke(lambda: eval_cli.main(["--config", str(cfg), "--checkpoint", str(ckpt)]), capfd)
    assert_one_line_error(code, err, [str(ckpt), "6 classes", "7"])
