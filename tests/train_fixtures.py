"""Shared by the tests of the entry points: a tiny labelled/unlabelled/val dataset on disk, a tiny-model
config, a training state without data for single steps, and the checks of a refused command (exit code 2, one
`error:` line, nothing left behind)."""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from util.cli import run_main

if TYPE_CHECKING:
    import torch

    from scripts.costs import Step

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.yaml")
# What a run that has started (data read inside the loop) may leave: its lock, config, log and TensorBoard folder.
RUN_STARTED = ("run", "run/.lock", "run/config.yaml", "run/train.log", "run/tb", "run/tb/*")
# The demo's RS-MTDF at test size for single training steps; conf_thresh 0 so that the unlabelled loss is not
# zero (a random-init model is never confident).
TINY_STEP = ["dataset.crop_size=56", "train.batch_size=2", "teachers.clip.input_size=28",
             "distill.translator_hidden=16", "train.conf_thresh=0"]


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
    return [f"dataset.root={root}", f"dataset.lists={splits}", "dataset.crop_size=42",
            f"train.method={method}", f"train.epochs={epochs}", "train.batch_size=2", "train.num_workers=0",
            "train.precision=fp32", "train.log_interval=2", "train.conf_thresh=0.5",
            f"teachers.dino.enabled={str(teachers).lower()}", f"teachers.clip.enabled={str(teachers).lower()}",
            "teachers.clip.input_size=28", "distill.translator_hidden=16", f"distill.fusion_weights={fusion}",
            "eval.num_visualize=1", "train.supervised_protocol=same_iterations", f"save_path={save}"]


def step_trainer(device: str | torch.device = "cpu", *overrides: str) -> Step:
    """The training state of the demo config at TINY_STEP size plus `overrides`, without data: feed it batches
    (`.run(batch)` is one optimizer step of methods/step.py's train_step)."""
    from scripts.costs import step_of
    from util.config import load_config

    return step_of(load_config(DEMO, TINY_STEP + list(overrides)), device, total_iters=100)


# ----------------------------------------------------------------------------------------------------------
# A refused command: exit code 2, one `error:` line naming the offending thing, no traceback, nothing left


class NotOneLine(AssertionError):
    """stderr is not the single `error:` line (or, once a run has started, its error is not a line of its own)."""


class NotNamed(AssertionError):
    """The error line does not name the offending thing (or misstates it)."""


class LeftBehind(AssertionError):
    """The failed command created or changed files other than those its case allows."""


def invoke(main: Callable[[], int | None], capfd: pytest.CaptureFixture) -> tuple[int, str]:
    """Exit code and stderr of `run_main(main)` (what `python <entry point>` runs, minus interpreter start-up);
    stderr at the file-descriptor level, DataLoader workers' included."""
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(main)
    return exit_info.value.code, capfd.readouterr().err


def snapshot(root: Path) -> dict[str, str]:
    """Every file (content hash) and folder under `root`, by relative path."""
    return {p.relative_to(root).as_posix(): "dir" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest()
            for p in root.rglob("*")}


def assert_nothing_left(before: dict[str, str], after: dict[str, str], allow: tuple[str, ...] = ()) -> None:
    """No file changed, vanished or appeared except where `allow` (fnmatch patterns) permits."""
    def allowed(key: str) -> bool:
        return any(fnmatch.fnmatch(key, p) for p in allow)

    changed = sorted(k for k in before if after.get(k) != before[k] and not allowed(k))
    new = sorted(k for k in after.keys() - before.keys() if not allowed(k))
    if changed or new:
        raise LeftBehind(f"changed or removed: {changed}; left behind: {new}")


def screen(text: str) -> list[str]:
    """The lines a terminal shows for `text`: \\r goes to column 0, \\n to the next line, ESC[A one line up."""
    rows: list[list[str]] = [[]]
    row = col = i = 0
    while i < len(text):
        if text.startswith("\x1b[A", i):
            row, i = max(row - 1, 0), i + 3
            continue
        ch, i = text[i], i + 1
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row, col = row + 1, 0
            rows += [[] for _ in range(row + 1 - len(rows))]
        else:
            line = rows[row]
            line += [" "] * (col + 1 - len(line))
            line[col], col = ch, col + 1
    return ["".join(line).rstrip() for line in rows if "".join(line).strip()]


def assert_one_line_error(code: int, err: str, needles: list[str], started: bool = False) -> str:
    """Exit 2, `error: ...` naming every needle (not saying "!needle"), no traceback; the only stderr line
    unless the run had started, else the last line on the terminal and the only error line. Returns it."""
    assert "Traceback" not in err, err
    assert code == 2, err
    lines = screen(err)
    hits = [line for line in lines if "error: " in line]
    assert hits, repr(err)
    message = hits[-1][hits[-1].index("error: "):]
    for needle in needles:
        # "!text": the line must not say this (a misleading hint).
        if needle.startswith("!") and needle[1:] in message:
            raise NotNamed(f"{needle[1:]!r} is misleading in: {message}")
        if not needle.startswith("!") and needle not in message:
            raise NotNamed(f"{needle!r} not named in: {message}")
    if started:
        # Progress bars and log lines may come first; on the terminal the error must be a line of its own,
        # the last one, and the only error line.
        if hits != lines[-1:] or not lines[-1].startswith("error: "):
            raise NotOneLine(f"the error is not the last line of its own on the terminal: {err!r}")
    elif not (err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1 and "\r" not in err):
        raise NotOneLine(f"stderr is not exactly one error line: {err!r}")
    return message
