"""eval/eval.py and eval/predict.py as scripts, on a tiny real segmenter saved as a training checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("model.segmenter")
pytest.importorskip("model.convert")
pytest.importorskip("dataset.semi")

from model.segmenter import build_segmenter  # noqa: E402
from util.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = ("model: {backbone: tiny, pretrained: null}\n"
        "train: {method: fixmatch, num_workers: 0, precision: fp32}\n"
        "teachers: {dino: {enabled: false}, clip: {enabled: false}}\n"
        "distill: {fusion_weights: {student: 1.0, dino: 0.0, clip: 0.0}}\n")


def make_run(tmp_path: Path, name: str = "loveda", nclass: int = 7) -> tuple[Path, Path]:
    """A config over a two-image val split, and a checkpoint of a tiny segmenter for it."""
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i, size in enumerate([(42, 56), (30, 44)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        Image.fromarray(rng.integers(0, nclass, size, dtype=np.uint8)).save(root / "ann" / f"{i}.png")
        lines.append(f"img/{i}.png ann/{i}.png")
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "val.txt").write_text("\n".join(lines) + "\n")
    cfg_path = tmp_path / f"{name}.yaml"
    cfg_path.write_text(f"dataset: {{name: {name}, nclass: {nclass}, root: {root}, splits: {splits}, "
                        f"crop_size: 28}}\n" + TINY)
    torch.manual_seed(0)
    state = build_segmenter(load_config(cfg_path)).state_dict()
    ckpt = tmp_path / "run" / "best.pth"
    ckpt.parent.mkdir()
    torch.save({"model": state, "model_ema": state, "config": load_config(cfg_path).to_dict()}, ckpt)
    return cfg_path, ckpt


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_eval_script_scores_a_checkpoint(tmp_path):
    cfg, ckpt = make_run(tmp_path)
    proc = run_script("eval/eval.py", "--config", str(cfg), "--checkpoint", str(ckpt), "--mode", "sliding_window",
                      "--weights", "ema")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((ckpt.parent / "eval_val_sliding_window_ema" / "metrics.json").read_text())
    assert 0 < metrics["pixels"] <= 42 * 56 + 30 * 44
    assert metrics["unit"] == "percent" and metrics["miou"] is not None and 0 <= metrics["miou"] <= 100
    assert "mIoU" in proc.stdout


def test_predict_script_writes_three_pictures(tmp_path):
    cfg, ckpt = make_run(tmp_path)
    out = tmp_path / "pred"
    proc = run_script("eval/predict.py", "--config", str(cfg), "--checkpoint", str(ckpt),
                      str(tmp_path / "data" / "img"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert len(list(out.glob("*_mask.png"))) == 2 and len(list(out.glob("*_overlay.png"))) == 2
    assert Image.open(out / "1_color.png").size == (44, 30)


def test_checkpoint_of_another_class_count_is_a_one_line_error(tmp_path):
    _, ckpt = make_run(tmp_path / "potsdam", name="potsdam", nclass=6)
    cfg, _ = make_run(tmp_path / "loveda")
    proc = run_script("eval/eval.py", "--config", str(cfg), "--checkpoint", str(ckpt))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
