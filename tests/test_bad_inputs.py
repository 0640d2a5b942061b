"""The bad-input catalogue: real user mistakes through the real entry points, each one line and exit code 2.

Every case runs the entry point's own code path, `run_main(lambda: module.main(argv))` (what
`python train.py ...` runs, minus interpreter start-up), and checks: exit code 2; `error: <one line>` that
names the offending thing; no traceback; no partial output (the tmp tree is compared before and after);
existing checkpoints byte-for-byte untouched. That the scripts themselves print the same is shown for each
entry point as a real process in tests/test_cli.py, tests/test_eval_cli.py and tests/test_prepare.py, and here
for an image read by a DataLoader worker. Errors that happen once the run has started (an image read
inside the loop) may follow progress and log lines on stderr; there the error must be the last line.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
from dataset import prepare
from dataset.synthetic import write_loveda
from deploy import predict
from eval import eval as eval_cli
from model.segmenter import build_segmenter
from tests.train_fixtures import (
    DEMO,
    REPO,
    RUN_STARTED,
    assert_nothing_left,
    assert_one_line_error,
    invoke,
    snapshot,
    tiny_overrides,
    write_tiny_dataset,
)
from util.cli import run_main
from util.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread", "close_leaked_progress_bars")
ENTRIES: dict[str, Callable[[list[str]], int | None]] = {"train": train.main, "eval": eval_cli.main,
                                                         "predict": predict.main, "prepare": prepare.main}


# ----------------------------------------------------------------------------------------------------------
# Helpers

def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut a file to a fraction of its bytes, as an interrupted copy or download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


class CheckpointTouched(AssertionError):
    """A checkpoint that existed before the failed command is not byte-for-byte the same."""


def assert_checkpoints_untouched(before: dict[str, str], after: dict[str, str]) -> None:
    """Every .pth that existed before is byte-for-byte the same."""
    touched = sorted(k for k in before if k.endswith(".pth") and after.get(k) != before[k])
    if touched:
        raise CheckpointTouched(f"checkpoints changed or removed: {touched}")


def check_all(*checks: Callable[[], object]) -> None:
    """Run every check; one failure is raised as it is (xfail's `raises` matches it), several as one plain
    AssertionError naming them all (which no xfail matches: a second bug must not hide behind the first)."""
    failures = []
    for check in checks:
        try:
            check()
        except AssertionError as e:
            failures.append(e)
    if len(failures) == 1:
        raise failures[0]
    if failures:
        raise AssertionError(" | ".join(f"{type(e).__name__}: {e}" for e in failures))


# ----------------------------------------------------------------------------------------------------------
# Shared tiny run: its checkpoints feed the eval, predict and resume cases; its data holds images smaller than the crop


def write_small_images(root: Path, splits: Path) -> None:
    """Make one labelled and one unlabelled image 20x30, below the 42-pixel crop: padding, not an error."""
    rng = np.random.default_rng(1)
    for line in ((splits / "10" / "labeled.txt").read_text().split("\n")[0],
                 (splits / "10" / "unlabeled.txt").read_text().split("\n")[0]):
        fields = line.split()
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(root / fields[0])
        if len(fields) == 2:
            Image.fromarray(rng.integers(0, 7, (20, 30), dtype=np.uint8)).save(root / fields[1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One 1-epoch FixMatch run of the tiny model (through run_main) and a 6-class Potsdam checkpoint."""
    base = tmp_path_factory.mktemp("trained")
    root = base / "data"
    splits = write_tiny_dataset(root, n_unlabeled=4)
    write_small_images(root, splits)
    run_dir = base / "run"
    argv = ["--config", DEMO, *tiny_overrides(root, splits, run_dir, "fixmatch", 1)]
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: train.main(argv))

    overrides = tiny_overrides(root, splits, run_dir, "fixmatch", 1) + ["dataset.name=potsdam"]
    cfg = load_config(DEMO, overrides)
    torch.manual_seed(0)
    state = build_segmenter(cfg).state_dict()
    potsdam = base / "potsdam.pth"
    torch.save({"model": state, "model_ema": state, "config": cfg.to_dict()}, potsdam)
    return {"code": exit_info.value.code, "run": run_dir, "potsdam": potsdam}


class Env:
    """A case's workspace: the tiny dataset under tmp/data, runs under tmp/run, checkpoints copied in on demand."""

    def __init__(self, tmp: Path, request: pytest.FixtureRequest) -> None:
        self.tmp, self.request = tmp, request
        self.root = tmp / "data"
        self.splits = write_tiny_dataset(self.root)
        self.save = tmp / "run"

    def overrides(self, method: str = "fixmatch") -> list[str]:
        return tiny_overrides(self.root, self.splits, self.save, method, 1)

    def train(self, *extra: str, method: str = "fixmatch") -> list[str]:
        return ["--config", DEMO, *self.overrides(method), *extra]

    def checkpoint(self, source: str = "best.pth") -> Path:
        """A copy of a checkpoint of the shared run ('best.pth', 'latest.pth' or 'potsdam') in tmp/ckpt/."""
        trained = self.request.getfixturevalue("trained")
        path = trained["potsdam"] if source == "potsdam" else trained["run"] / source
        target = self.tmp / "ckpt" / "best.pth"
        target.parent.mkdir(exist_ok=True)
        shutil.copy(path, target)
        return target

    def eval(self, *extra: str, checkpoint: Path | None = None) -> list[str]:
        ckpt = checkpoint if checkpoint is not None else self.checkpoint()
        return ["--config", DEMO, *self.overrides(), "--checkpoint", str(ckpt), *extra]

    def predict(self, *inputs: str, checkpoint: Path | None = None) -> list[str]:
        ckpt = checkpoint if checkpoint is not None else self.checkpoint()
        return ["--config", DEMO, *self.overrides(), "--checkpoint", str(ckpt), *inputs,
                "--out", str(self.tmp / "pred")]

    def only_labeled(self, index: int) -> None:
        """A labelled list of one tile, so that the first batch reads it (the sampler's order is its own)."""
        (self.splits / "10" / "labeled.txt").write_text(f"img/{index}.png ann/{index}.png\n")

    def shorten_epoch(self, tiles: int = 2) -> None:
        """Fewer unlabelled tiles: 2 make an epoch of one iteration (batch size 2), 4 that of the shared run."""
        unlabeled = self.splits / "10" / "unlabeled.txt"
        unlabeled.write_text("\n".join(unlabeled.read_text().splitlines()[:tiles]) + "\n")

    def image(self, index: int) -> Path:
        return self.root / "img" / f"{index}.png"

    def mask(self, index: int) -> Path:
        return self.root / "ann" / f"{index}.png"

    def write_yaml(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path


LONG_NAME = "run_" + "x" * 260  # a folder name over NAME_MAX (255 bytes on the usual file systems)
# Index of the tiny dataset's files: labelled 0-3, unlabelled 4-11, val (and test) 12-13.
LABELED, VAL = 0, 12


@dataclass(frozen=True)
class Case:
    entry: str                           # train | eval | predict | prepare
    setup: Callable[[Env], tuple[list[str], list[str]]]  # -> (argv, strings the error line must contain)
    started: bool = False                # the error comes from inside the running loop
    allow: tuple[str, ...] = ()          # new paths (fnmatch, relative to tmp) that may appear


CASES: list = []


def case(case_id: str, entry: str, *, started: bool = False, allow: tuple[str, ...] = (), xfail: str = "",
         raises: type[AssertionError] = AssertionError):
    """Register a setup function as a catalogue entry; `xfail` (with the check that fails) marks a known bug."""
    def register(setup: Callable[[Env], tuple[list[str], list[str]]]) -> Callable:
        marks = [pytest.mark.xfail(strict=True, reason=xfail, raises=raises)] if xfail else []
        CASES.append(pytest.param(Case(entry, setup, started, allow), id=case_id, marks=marks))
        return setup
    return register


# ----------------------------------------------------------------------------------------------------------
# Config mistakes


@case("config-unknown-key-in-yaml", "train")
def _(env: Env):
    path = env.write_yaml("typo.yaml", Path(DEMO).read_text().replace("  epochs: 4", "  epoch: 4"))
    argv = env.train()
    argv[1] = str(path)
    return argv, ["typo.yaml", "train.epoch", "train.epochs"]


@case("config-unknown-override-key", "train")
def _(env: Env):
    return env.train("train.lrr=1e-4"), ["train.lrr", "train.lr'"]


@case("config-wrong-type", "train")
def _(env: Env):
    return env.train("train.epochs=abc"), ["train.epochs", "abc"]


@case("config-negative-lr", "train")
def _(env: Env):
    return env.train("train.lr=-1"), ["train.lr", "-1"]


@case("config-conf-thresh-above-1", "train")
def _(env: Env):
    return env.train("train.conf_thresh=1.5"), ["train.conf_thresh", "1.5"]


@case("config-crop-not-multiple-of-14", "eval")
def _(env: Env):
    return env.eval("dataset.crop_size=500", checkpoint=env.tmp / "absent.pth"), ["dataset.crop_size", "500", "14"]


@case("config-file-missing", "eval")
def _(env: Env):
    argv = env.eval(checkpoint=env.tmp / "absent.pth")
    argv[1] = str(env.tmp / "configs" / "lovda.yaml")
    return argv, ["lovda.yaml"]


@case("config-override-without-equals", "train")
def _(env: Env):
    # `train.lr 1e-4`: a space instead of '='.
    return env.train("train.lr", "1e-4"), ["train.lr"]


@case("config-rs-mtdf-without-teachers", "train")
def _(env: Env):
    return env.train("train.method=rs_mtdf"), ["rs_mtdf", "teachers"]


# ----------------------------------------------------------------------------------------------------------
# Data mistakes


@case("data-train-split-not-prepared", "train")
def _(env: Env):
    # --split 5 on a dataset prepared only for 10 %.
    return env.train("--split", "5"), [str(env.splits / "5" / "unlabeled.txt"), f"!dataset.lists={env.splits / '5'}"]


@case("data-eval-test-list-missing", "eval")
def _(env: Env):
    (env.splits / "test.txt").unlink()
    return env.eval("--subset", "test", checkpoint=env.tmp / "absent.pth"), [str(env.splits / "test.txt")]


@case("data-train-empty-labeled-split", "train")
def _(env: Env):
    (env.splits / "10" / "labeled.txt").write_text("\n")
    return env.train(), ["empty", str(env.splits / "10" / "labeled.txt")]


@case("data-semi-supervised-method-on-a-split-with-no-unlabelled-images", "train")
def _(env: Env):
    (env.splits / "10" / "unlabeled.txt").write_text("")   # what DeepGlobe's 100 % split has
    return env.train(), [str(env.splits / "10" / "unlabeled.txt"), "train.method=fixmatch", "train.method=supervised"]


@case("data-train-split-line-missing-image", "train")
def _(env: Env):
    labeled = env.splits / "10" / "labeled.txt"
    lines = labeled.read_text().splitlines()
    lines[2] = "img/2.jpg ann/2.png"   # the tiles are PNGs
    labeled.write_text("\n".join(lines) + "\n")
    return env.train(), [f"{labeled}:3", "img/2.jpg"]


@case("data-eval-malformed-split-line", "eval")
def _(env: Env):
    val = env.splits / "val.txt"
    lines = val.read_text().splitlines()
    lines[1] = lines[1].replace(" ", ",")   # a comma-separated list
    val.write_text("\n".join(lines) + "\n")
    return env.eval(), [f"{val}:2", "<image> <mask>"]


@case("data-train-truncated-png", "train", started=True, allow=RUN_STARTED)
def _(env: Env):
    truncate(env.image(LABELED))
    env.only_labeled(LABELED)
    return env.train(), [str(env.image(LABELED)), "truncated"]


@case("data-eval-truncated-jpeg", "eval", started=True)
def _(env: Env):
    jpeg = env.root / "img" / "val.jpg"
    Image.open(env.image(VAL)).save(jpeg, quality=90)
    truncate(jpeg)
    val = env.splits / "val.txt"
    val.write_text(val.read_text().replace(f"img/{VAL}.png", "img/val.jpg"))
    return env.eval(), [str(jpeg), "truncated"]


@case("data-eval-mask-size-differs", "eval", started=True)
def _(env: Env):
    Image.fromarray(np.zeros((40, 44), np.uint8)).save(env.mask(VAL + 1))
    return env.eval(), [str(env.mask(VAL + 1)), "44x40", "48x48"]


@case("data-train-label-out-of-range", "train", started=True, allow=RUN_STARTED)
def _(env: Env):
    mask = np.array(Image.open(env.mask(LABELED)))
    mask[5, 5] = 9   # 9 in a 7-class dataset
    Image.fromarray(mask).save(env.mask(LABELED))
    env.only_labeled(LABELED)
    return env.train(), [str(env.mask(LABELED)), "value 9", "[0, 7)"]


@case("data-eval-rgb-mask", "eval", started=True)
def _(env: Env):
    mask = np.array(Image.open(env.mask(VAL)))
    Image.fromarray(np.stack([mask] * 3, -1)).save(env.mask(VAL))   # saved from a viewer as RGB
    return env.eval(), [str(env.mask(VAL)), "RGB"]


@case("data-train-val-image-unreadable", "train", started=True, allow=RUN_STARTED)
def _(env: Env):
    # The training lists are fine; the validation tile fails at the end of the first epoch: no checkpoint.
    env.image(VAL).write_bytes(b"<html>404 Not Found</html>")
    env.shorten_epoch()
    return env.train(), [str(env.image(VAL))]


@case("data-train-resumed-run-reads-bad-image", "train", started=True, allow=RUN_STARTED)
def _(env: Env):
    # A finished 1-epoch run continued for a second epoch, after a labelled tile was overwritten by a broken
    # copy: the error must leave latest.pth and best.pth as they were.
    shutil.copytree(env.request.getfixturevalue("trained")["run"], env.save)
    env.shorten_epoch(4)
    truncate(env.image(LABELED))
    env.only_labeled(LABELED)
    return env.train("train.epochs=2", "--resume-changed"), [str(env.image(LABELED))]


# ----------------------------------------------------------------------------------------------------------
# Weights and checkpoints


@case("weights-pretrained-missing", "train")
def _(env: Env):
    return env.train(f"model.pretrained={env.tmp / 'dinov2_small.pth'}"), ["model.pretrained", "dinov2_small.pth"]


@case("weights-dino-teacher-missing", "train")
def _(env: Env):
    return (env.train(f"teachers.dino.weights={env.tmp / 'dinov2_base.pth'}", method="rs_mtdf"),
            ["teachers.dino.weights", "dinov2_base.pth"])


@case("weights-clip-teacher-missing", "train")
def _(env: Env):
    return (env.train(f"teachers.clip.weights={env.tmp / 'ViT-L-14.pt'}", method="rs_mtdf"),
            ["teachers.clip.weights", "ViT-L-14.pt"])


@case("weights-dinov2-file-of-another-size", "train")
def _(env: Env):
    # Official DINOv2 key names and a ViT-S depth, but tiny-width tensors: the wrong download for `small`.
    from model.encoder import SIZES, DinoEncoder

    tiny = DinoEncoder("tiny").state_dict()
    state = {k: v for k, v in tiny.items() if not k.startswith("blocks.")}
    state["mask_token"] = torch.zeros(1, SIZES["tiny"].embed_dim)
    for i in range(SIZES["small"].depth):
        state.update({k.replace("blocks.0.", f"blocks.{i}.", 1): v for k, v in tiny.items()
                      if k.startswith("blocks.0.")})
    path = env.tmp / "dinov2_small.pth"
    torch.save(state, path)
    return env.train("model.backbone=small", f"model.pretrained={path}"), ["model.pretrained", str(path)]


@case("weights-clip-file-is-not-clip", "train")
def _(env: Env):
    path = env.tmp / "ViT-L-14.pt"
    torch.save({"encoder.layer1.weight": torch.randn(4, 4), "head.bias": torch.randn(4)}, path)
    return env.train(f"teachers.clip.weights={path}", method="rs_mtdf"), ["ViT-L-14.pt"]


@case("eval-checkpoint-other-class-count", "eval")
def _(env: Env):
    return env.eval(checkpoint=env.checkpoint("potsdam")), [str(env.tmp / "ckpt" / "best.pth"), "6 classes", "7",
                                                          "dataset.nclass"]


@case("eval-checkpoint-other-backbone", "eval")
def _(env: Env):
    return env.eval("model.backbone=small"), [str(env.tmp / "ckpt" / "best.pth"), "tiny", "small", "model.backbone"]


@case("eval-checkpoint-truncated", "eval")
def _(env: Env):
    ckpt = env.checkpoint()
    truncate(ckpt)
    return env.eval(checkpoint=ckpt), [str(ckpt), "damaged or incomplete"]


@case("eval-checkpoint-missing", "eval")
def _(env: Env):
    # A path with the run's {method} placeholder left unfilled.
    ckpt = env.tmp / "exp" / "{method}" / "best.pth"
    return env.eval(checkpoint=ckpt), [str(ckpt)]


@case("train-resume-run-of-another-method", "train")
def _(env: Env):
    # Same --save-path as a finished FixMatch run, now with rs_mtdf: resuming would mix two methods.
    shutil.copytree(env.request.getfixturevalue("trained")["run"], env.save)
    return env.train(method="rs_mtdf"), [str(env.save / "latest.pth"), "train.method=fixmatch"]


# ----------------------------------------------------------------------------------------------------------
# Run folders: never overwrite what another run wrote, never resume under other settings silently


@case("train-folder-with-best-but-no-latest", "train")
def _(env: Env):
    # A folder holding only best.pth (copied from elsewhere, or latest.pth deleted): a new run would overwrite it.
    env.save.mkdir()
    shutil.copy(env.request.getfixturevalue("trained")["run"] / "best.pth", env.save / "best.pth")
    return env.train("train.lr=1e-3"), [str(env.save), "best.pth", "no latest.pth"]


@case("train-latest-is-a-folder", "train")
def _(env: Env):
    (env.save / "latest.pth").mkdir(parents=True)
    return env.train(), [str(env.save / "latest.pth"), "not a file"]


@case("train-folder-in-use-by-another-run", "train")
def _(env: Env):
    from util.run import RunFolder

    shutil.copytree(env.request.getfixturevalue("trained")["run"], env.save)
    env.held = RunFolder(env.save)  # flock locks conflict between open files, also within one process
    env.held.open()
    return env.train(), [str(env.save), "in use by another training run"]


@case("train-resume-with-another-lr", "train")
def _(env: Env):
    shutil.copytree(env.request.getfixturevalue("trained")["run"], env.save)
    return env.train("train.lr=1e-3"), [str(env.save / "latest.pth"), "train.lr=0.0002", "0.001", "--resume-changed"]


@case("train-resume-with-another-translator-width", "train")
def _(env: Env):
    shutil.copytree(env.request.getfixturevalue("trained")["run"], env.save)
    # fixmatch has no translators: the same change under rs_mtdf is another model.
    return env.train("distill.translator_hidden=8", method="fixmatch", ) + ["train.method=rs_mtdf",
                                                                         "teachers.dino.enabled=true"], \
        [str(env.save / "latest.pth"), "another model", "train.method=fixmatch"]


@case("train-authors-checkpoint-as-latest", "train")
def _(env: Env):
    env.save.mkdir()
    trained = load_own_checkpoint_for_test(env.request.getfixturevalue("trained")["run"] / "latest.pth")
    torch.save({"model": trained["model"], "optimizer": trained["optimizer"], "epoch": 3, "previous_best": 41.0},
               env.save / "latest.pth")
    return env.train(), [str(env.save / "latest.pth"), "not a checkpoint of this trainer", "eval/eval.py"]


@case("train-save-path-is-a-file", "train")
def _(env: Env):
    env.save.write_text("notes")
    return env.train(), ["save_path", str(env.save), "is a file"]


@case("train-save-path-under-a-file", "train")
def _(env: Env):
    env.save.write_text("notes")
    inner = env.save / "inner"
    return env.train(f"save_path={inner}"), ["save_path", str(inner), "cannot be created", "is a file"]


@case("train-save-path-name-too-long", "train")
def _(env: Env):
    return env.train(f"save_path={env.tmp / LONG_NAME / 'run'}"), ["save_path", "264 bytes", "255"]


@case("train-save-path-unknown-placeholder", "train")
def _(env: Env):
    return env.train(f"save_path={env.tmp / 'exp' / '{seed}'}"), ["save_path", "{seed}", "{dataset}"]


@case("train-empty-override-value", "train")
def _(env: Env):
    return env.train("model.pretrained="), ["model.pretrained=", "empty", "model.pretrained=null"]


@case("train-empty-config-file", "train")
def _(env: Env):
    argv = env.train()
    argv[1] = str(env.write_yaml("empty.yaml", "# to fill in\n"))
    return argv, ["empty.yaml", "is empty"]


@case("train-every-missing-weight-file-in-one-line", "train")
def _(env: Env):
    return (env.train(f"model.pretrained={env.tmp / 'a.pth'}", f"teachers.dino.weights={env.tmp / 'b.pth'}",
                      f"teachers.clip.weights={env.tmp / 'c.pt'}", method="rs_mtdf"),
            ["3 weight files not found", "model.pretrained", "teachers.dino.weights", "teachers.clip.weights"])


@case("eval-checkpoint-of-other-model-settings", "eval")
def _(env: Env):
    # The same parameter shapes, another forward: CLIP's input size changes the fused features.
    shutil.copytree(env.request.getfixturevalue("trained")["run"], env.save)
    ckpt = env.save / "best.pth"
    state = load_own_checkpoint_for_test(ckpt)
    state["config"]["train"]["method"] = "rs_mtdf"
    state["config"]["teachers"]["clip"]["input_size"] = 56
    torch.save(state, ckpt)
    return env.eval(checkpoint=ckpt), [str(ckpt), "train.method=rs_mtdf", "config.yaml"]


@case("eval-out-is-a-file", "eval")
def _(env: Env):
    out = env.tmp / "scores"
    out.write_text("")
    return env.eval("--out", str(out)), ["--out", str(out), "is a file"]


@case("eval-out-name-too-long", "eval")
def _(env: Env):
    return env.eval("--out", str(env.tmp / LONG_NAME)), ["--out", "264 bytes", "255"]


# ----------------------------------------------------------------------------------------------------------
# predict


@case("predict-unreadable-image", "predict", started=True, allow=("pred", "pred/a_*.png"))
def _(env: Env):
    folder = env.tmp / "tiles"
    folder.mkdir()
    shutil.copy(env.image(VAL), folder / "a.png")      # a good tile first: its outputs are complete
    (folder / "b.png").write_bytes(b"GIF89a not really")
    return env.predict(str(folder)), [str(folder / "b.png")]


@case("predict-only-image-unreadable", "predict", started=True)
def _(env: Env):
    bad = env.tmp / "tile.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 20)
    return env.predict(str(bad)), [str(bad)]


@case("predict-input-missing", "predict")
def _(env: Env):
    missing = env.tmp / "tiles" / "top_potsdam_2_10_RGB.tif"
    return env.predict(str(missing), checkpoint=env.tmp / "absent.pth"), [str(missing)]


@case("predict-out-name-too-long", "predict")
def _(env: Env):
    argv = env.predict(str(env.image(VAL)))
    argv[argv.index("--out") + 1] = str(env.tmp / LONG_NAME / "pred")
    return argv, ["--out", "264 bytes", "255"]


# ----------------------------------------------------------------------------------------------------------
# prepare


def prepare_argv(env: Env, raw: Path) -> list[str]:
    return ["loveda", "--raw", str(raw), "--out", str(env.tmp / "out"), "--lists", str(env.tmp / "splits_out"),
            "--resplit", "--workers", "1"]


@case("prepare-out-name-too-long", "prepare")
def _(env: Env):
    raw = env.tmp / "raw"
    write_loveda(raw, np.random.default_rng(0), size=32, count=1)
    argv = prepare_argv(env, raw)
    argv[argv.index("--out") + 1] = str(env.tmp / LONG_NAME)
    return argv, ["--out", "264 bytes", "255"]


@case("prepare-raw-folder-missing", "prepare")
def _(env: Env):
    raw = env.tmp / "LoveDA"
    return prepare_argv(env, raw), [str(raw)]


@case("prepare-raw-tree-of-another-dataset", "prepare")
def _(env: Env):
    raw = env.tmp / "raw"
    (raw / "2_Ortho_RGB").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(raw / "2_Ortho_RGB" / "top_potsdam_2_10_RGB.tif")
    return prepare_argv(env, raw), [str(raw), "LoveDA"]


@case("prepare-corrupt-raw-image", "prepare", started=True, allow=("out", "out/*"))
def _(env: Env):
    raw = env.tmp / "raw"
    write_loveda(raw, np.random.default_rng(0), size=32, count=1)
    bad = raw / "Train" / "Urban" / "images_png" / "1.png"
    truncate(bad)
    return prepare_argv(env, raw), ["train_urban_1", str(bad), str(env.tmp / "out" / "prepare_summary.json")]


# ----------------------------------------------------------------------------------------------------------
# The catalogue


@pytest.mark.parametrize("spec", CASES)
def test_bad_input_is_one_line_error_and_leaves_nothing(spec: Case, tmp_path, request, capfd):
    main = ENTRIES[spec.entry]
    env = Env(tmp_path, request)
    argv, needles = spec.setup(env)
    before = snapshot(tmp_path)
    code, err = invoke(lambda: main(argv), capfd)
    after = snapshot(tmp_path)
    check_all(lambda: assert_checkpoints_untouched(before, after),
              lambda: assert_one_line_error(code, err, needles, spec.started),
              lambda: assert_nothing_left(before, after, spec.allow))


def load_own_checkpoint_for_test(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_image_smaller_than_the_crop_trains(trained):
    """Positive control: tiles below the crop size are padded (255 in the mask), not rejected."""
    assert trained["code"] == 0
    assert {"latest.pth", "best.pth", "config.yaml"} <= {p.name for p in trained["run"].iterdir()}
    assert torch.load(trained["run"] / "latest.pth", weights_only=True)["iteration"] == 2


# ----------------------------------------------------------------------------------------------------------
# A DataLoader worker's error at the process level


@pytest.mark.slow
def test_process_train_data_error_in_a_worker_is_one_line(tmp_path, request):
    """A real `python train.py`: run in this process, the failed run's worker outlives it (its iterator is held
    by the traceback) and takes ~10 s to be reaped, in a later test; a process ends and takes it along."""
    env = Env(tmp_path, request)
    truncate(env.image(LABELED))
    env.only_labeled(LABELED)
    before = snapshot(tmp_path)
    proc = subprocess.run([sys.executable, "train.py", *env.train("train.num_workers=1")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    after = snapshot(tmp_path)
    check_all(lambda: assert_one_line_error(proc.returncode, proc.stderr, [str(env.image(LABELED)), "truncated"],
                                            started=True),
              lambda: assert_nothing_left(before, after, RUN_STARTED))
