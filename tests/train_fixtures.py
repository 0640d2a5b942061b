"""A tiny labelled/unlabelled/val dataset on disk and a tiny-model config for end-to-end training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def write_tiny_dataset(root: Path, n_labeled: int = 4, n_unlabeled: int = 8, n_val: int = 2,
                       size: int = 48, n_test: int = 2) -> Path:
    """Images whose class is readable from the colour (so a model can learn it), in split files; returns splits/."""
    rng = np.random.default_rng(0)
    colours = np.array([[200, 200, 200], [200, 40, 40], [230, 230, 60], [30, 30, 200],
                        [150, 120, 180], [20, 160, 20], [240, 190, 130]], dtype=np.float32)
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    lines = []
    for i in range(n_labeled + n_unlabeled + n_val + n_test):
        mask = np.zeros((size, size), dtype=np.uint8)
        for _ in range(4):
            y, x, h, w = rng.integers(0, size, 4)
            mask[y:y + h // 2 + 4, x:x + w // 2 + 4] = rng.integers(0, 7)
        img = colours[mask] + rng.normal(0, 12, (size, size, 3))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / "img" / f"{i}.png")
        Image.fromarray(mask).save(root / "ann" / f"{i}.png")
        lines.append(f"img/{i}.png ann/{i}.png")
    splits = root / "splits"
    (splits / "10").mkdir(parents=True)
    (splits / "10" / "labeled.txt").write_text("\n".join(lines[:n_labeled]) + "\n")
    (splits / "10" / "unlabeled.txt").write_text(
        "\n".join(line.split()[0] for line in lines[n_labeled:n_labeled + n_unlabeled]) + "\n")
    first_val, first_test = n_labeled + n_unlabeled, n_labeled + n_unlabeled + n_val
    (splits / "val.txt").write_text("\n".join(lines[first_val:first_test]) + "\n")
    (splits / "test.txt").write_text("\n".join(lines[first_test:]) + "\n")
    return splits


def tiny_overrides(root: Path, splits: Path, save: Path, method: str = "rs_mtdf", epochs: int = 2) -> list[str]:
    """Overrides of configs/demo.yaml for a run of a few seconds on a CPU."""
    teachers = method == "rs_mtdf"
    fusion = "{student: 0.8, dino: 0.1, clip: 0.1}" if teachers else "{student: 1.0, dino: 0.0, clip: 0.0}"
    return [f"dataset.root={root}", f"dataset.splits={splits}", "dataset.crop_size=42",
            f"train.method={method}", f"train.epochs={epochs}", "train.batch_size=2", "train.num_workers=0",
            "train.precision=fp32", "train.log_interval=2", "train.conf_thresh=0.5",
            f"teachers.dino.enabled={str(teachers).lower()}", f"teachers.clip.enabled={str(teachers).lower()}",
            "teachers.clip.input_size=28", "distill.translator_hidden=16", f"distill.fusion_weights={fusion}",
            "eval.num_visualize=1", "train.supervised_protocol=same_iterations", f"save_path={save}"]
