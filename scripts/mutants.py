"""Test strength, measured: realistic one-line bugs in the code that decides results, one at a time, and which of
them the test suite kills.

    python scripts/mutants.py                       # every mutant against the quick suite (-m "not slow")
    python scripts/mutants.py --only cutmix,ema     # mutants whose name contains one of these
    python scripts/mutants.py --slow --out m.json   # the whole suite for mutants the quick suite misses

Each mutant is one edit of the field's usual slips (off-by-one iteration, a wrong comparison, a missing factor,
image and mask out of step, a shifted index, a layer changed with every shape intact, a setting that never
reaches the optimizer, schedule, EMA or loss), applied to a copy of the working tree (the tree itself is never
touched). A mutant is killed when a test fails: first the tests that name its part are run (fast), then, if
they pass, the whole quick suite. A survivor is a behaviour no test pins. Exit status 1 if any survives; a
mutant whose text is not in the tree exactly once stops the run before any test (tests/test_mutants.py says
so too).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: the repository root, not scripts/, first
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

from util.cli import run_main, user_path
from util.errors import ConfigError
from util.io import write_text

REPO = Path(__file__).resolve().parents[1]
# Fails under every mutant by design (it checks that their text is in the tree): not a kill.
IGNORED = ("--ignore=tests/test_mutants.py",)


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    before: str
    after: str
    why: str
    tests: tuple[str, ...]  # run first: they should kill it quickly


MUTANTS = (
    Mutant("encoder-blocks-shifted", "model/encoder.py", '"small": EncoderSize(384, 12, 6, (2, 5, 8, 11)',
           '"small": EncoderSize(384, 12, 6, (3, 6, 9, 11)', "ViT-S feeds the wrong blocks to the DPT head",
           ("tests/test_model_encoder.py",)),
    Mutant("pos-embed-offset", "model/encoder.py", "INTERPOLATE_OFFSET = 0.1", "INTERPOLATE_OFFSET = 0.0",
           "position embeddings resized unlike DINOv2", ("tests/test_model_encoder.py",)),
    Mutant("head-lr-without-multi", "train.py", '"initial_lr": lr * cfg.train.lr_multi}', '"initial_lr": lr}',
           "the head learns at the encoder's lr (the schedule scales each group's initial_lr)",
           ("tests/test_model_segmenter.py",)),
    Mutant("group-base-lr-ignored", "util/schedule.py", 'poly_lr(group["initial_lr"], iteration, total, power)',
           'poly_lr(optimizer.defaults["lr"], iteration, total, power)',
           "every group at the encoder's lr (the optimizer's default)",
           ("tests/test_model_segmenter.py", "tests/test_train_step.py")),
    Mutant("poly-off-by-one", "util/schedule.py", "base_lr * (1 - iteration / total) ** power",
           "base_lr * (1 - (iteration + 1) / total) ** power", "the schedule one step ahead",
           ("tests/test_train_step.py",)),
    Mutant("ema-ratio-off-by-one", "util/schedule.py", "min(1 - 1 / (iteration + 1), cap)",
           "min(1 - 1 / (iteration + 2), cap)", "the EMA never starts as a copy", ("tests/test_train_step.py",)),
    Mutant("adamw-weight-decay-default", "train.py", "weight_decay=cfg.train.weight_decay, fused=fused)",
           "fused=fused)", "train.weight_decay never reaches AdamW (its own default is the published 0.01)",
           ("tests/test_train_settings.py",)),
    Mutant("adamw-betas-default", "train.py", "lr=lr, betas=cfg.train.betas,", "lr=lr,",
           "train.betas never reach AdamW (its own default is the published pair)", ("tests/test_train_settings.py",)),
    Mutant("poly-power-default", "util/schedule.py", 'poly_lr(group["initial_lr"], iteration, total, power)',
           'poly_lr(group["initial_lr"], iteration, total)', "train.poly_power ignored: always 0.9",
           ("tests/test_train_settings.py",)),
    Mutant("schedule-counts-forwards", "train.py",
           "build_state(cfg, info.device, cfg.train.epochs * data.steps_per_epoch)",
           "build_state(cfg, info.device, cfg.train.epochs * data.steps_per_epoch * plan.accumulation)",
           "the schedule's T counts accumulated forwards, not optimizer steps: the lr never reaches 0",
           ("tests/test_train_settings.py",)),
    Mutant("ema-cap-default", "methods/step.py", "ema_ratio(state.iteration, cfg.train.ema_cap)",
           "ema_ratio(state.iteration, 0.996)", "train.ema_cap ignored: always 0.996",
           ("tests/test_train_settings.py",)),
    Mutant("ema-lerp-backwards", "util/ema.py", "torch._foreach_lerp_(ema_params, params, 1.0 - ratio)",
           "torch._foreach_lerp_(ema_params, params, ratio)", "the EMA follows the student almost at once",
           ("tests/test_train_step.py",)),
    Mutant("confidence-strict", "methods/common.py", "confident = (conf_u >= conf_thresh).float() * valid",
           "confident = (conf_u > conf_thresh).float() * valid", "pixels at the threshold dropped",
           ("tests/test_train_step.py",)),
    Mutant("unsupervised-denominator", "methods/common.py", "denom = valid.sum().clamp_min(1.0)",
           "denom = confident.sum().clamp_min(1.0)", "L_u divided by confident pixels, not all",
           ("tests/test_train_step.py",)),
    Mutant("cutmix-partner-rolled", "methods/common.py", "return torch.where(inside, x.flip(0), x)",
           "return torch.where(inside, x.roll(1, 0), x)", "CutMix takes another partner than the reference",
           ("tests/test_train_step.py",)),
    Mutant("ignore-mask-not-mixed", "methods/fixmatch.py",
           'return img_u_s, mix(mask_u_w, box), mix(conf_u_w, box), mix(batch["ignore_mask"], box)',
           'return img_u_s, mix(mask_u_w, box), mix(conf_u_w, box), batch["ignore_mask"]',
           "padding mask out of step with the mixed image", ("tests/test_train_step.py",)),
    Mutant("pseudo-labels-not-mixed", "methods/fixmatch.py",
           'return img_u_s, mix(mask_u_w, box), mix(conf_u_w, box), mix(batch["ignore_mask"], box)',
           'return img_u_s, mask_u_w, mix(conf_u_w, box), mix(batch["ignore_mask"], box)',
           "pseudo-labels out of step with the mixed image", ("tests/test_train_step.py",)),
    Mutant("loss-weights-not-normalised", "methods/common.py",
           "/ max(total_weight, 1e-12)", "/ 1.0", "the loss is a sum, not the weighted mean",
           ("tests/test_train_step.py",)),
    Mutant("distill-weight-dropped", "methods/rs_mtdf.py", "weighted = [weights.get(name, 0.0) * loss for",
           "weighted = [loss for", "teachers weigh 1 instead of 0.5", ("tests/test_train_step.py",
                                                                          "tests/test_model_segmenter.py")),
    Mutant("fixmatch-loss-weights-ignored", "methods/fixmatch.py",
           'losses["loss"] = weighted_total(ctx.cfg.train.loss_weights, loss_x, loss_u)',
           'losses["loss"] = (loss_x + loss_u) / 2', "FixMatch ignores train.loss_weights",
           ("tests/test_train_settings.py", "tests/test_train_step.py")),
    Mutant("unimatch-loss-weights-ignored", "methods/unimatch_v2.py",
           '{"loss": weighted_total(ctx.cfg.train.loss_weights, loss_x, loss_u),',
           '{"loss": (loss_x + loss_u) / 2,', "UniMatch V2 ignores train.loss_weights",
           ("tests/test_train_settings.py", "tests/test_train_step.py")),
    Mutant("rs-mtdf-loss-weights-ignored", "methods/rs_mtdf.py",
           'losses["loss"] = weighted_total(ctx.cfg.train.loss_weights, loss_x, loss_u, loss_dis)',
           'losses["loss"] = (loss_x + loss_u + loss_dis) / 3', "RS-MTDF ignores train.loss_weights",
           ("tests/test_train_settings.py", "tests/test_train_step.py")),
    Mutant("unimatch-conf-thresh-default", "methods/unimatch_v2.py", "thresh = ctx.cfg.train.conf_thresh",
           "thresh = 0.95", "UniMatch V2 ignores train.conf_thresh", ("tests/test_train_settings.py",
                                                                     "tests/test_train_step.py")),
    Mutant("distill-weights-default", "methods/rs_mtdf.py",
           "weights = {str(name): w for name, w in ctx.cfg.distill.weights.items()}",
           'weights = {"dino": 0.5, "clip": 0.5}', "distill.weights ignored: always the published 0.5 each",
           ("tests/test_train_settings.py", "tests/test_train_step.py")),
    Mutant("feature-drop-default", "methods/unimatch_v2.py", "drop.channel_p, drop.pair_fraction, ctx.generator",
           "0.5, 0.5, ctx.generator", "train.feature_drop ignored: always the published 0.5 and 0.5",
           ("tests/test_train_settings.py", "tests/test_train_step.py")),
    Mutant("plan-ignores-cutmix-p", "methods/common.py",
           "if cfg.augment.cutmix_p > 0 and n % 2 and n != cfg.train.batch_size:",
           "if n % 2 and n != cfg.train.batch_size:",
           "odd forwards refused for want of CutMix partners although augment.cutmix_p is 0",
           ("tests/test_train_settings.py", "tests/test_accumulation.py")),
    Mutant("fusion-student-weight-dropped", "model/fusion.py", 'fused = weights.get("student", 0.0) * f',
           "fused = f", "the student's features enter the fusion at weight 1", ("tests/test_model_segmenter.py",)),
    Mutant("dpt-rcu-relu-dropped", "model/dpt.py", "x + self.conv2(F.relu(self.conv1(F.relu(x))))",
           "x + self.conv2(F.relu(self.conv1(x)))", "the residual conv units lose their first ReLU (shapes intact)",
           ("tests/test_model_pinned.py",)),
    Mutant("dpt-fusion-resize-corners", "model/dpt.py",
           'x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)',
           'x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)',
           "the fusion blocks resize unlike the reference", ("tests/test_model_pinned.py",)),
    Mutant("dpt-skip-through-the-unit", "model/dpt.py", "x = x + self.rcu1(skip)", "x = self.rcu1(x + skip)",
           "a fusion block adds its skip before its first residual unit, not after", ("tests/test_model_pinned.py",)),
    Mutant("dpt-output-convs-swapped", "model/dpt.py",
           "nn.Sequential(nn.Conv2d(features, features, 3, padding=1), nn.ReLU(),\n"
           "                                    nn.Conv2d(features, nclass, 1))",
           "nn.Sequential(nn.Conv2d(features, features, 1), nn.ReLU(),\n"
           "                                    nn.Conv2d(features, nclass, 3, padding=1))",
           "the output head's 3x3 and 1x1 convolutions in the other order", ("tests/test_model_pinned.py",)),
    Mutant("dpt-projection-bias-dropped", "model/dpt.py", "nn.Conv2d(in_dim, c, 1) for c in oc",
           "nn.Conv2d(in_dim, c, 1, bias=False) for c in oc", "the head's 1x1 projections lose their bias",
           ("tests/test_model_pinned.py",)),
    Mutant("vit-b-head-width", "model/encoder.py", '"base": EncoderSize(768, 12, 12, (2, 5, 8, 11), 128,',
           '"base": EncoderSize(768, 12, 12, (2, 5, 8, 11), 256,', "ViT-B's DPT head at ViT-L's width",
           ("tests/test_model_pinned.py",)),
    Mutant("translator-activation", "model/fusion.py", "nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(",
           "nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(", "translators with GELU, not the reference's ReLU",
           ("tests/test_model_pinned.py", "tests/test_model_segmenter.py")),
    Mutant("token-map-without-transpose", "model/fusion.py",
           "return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)",
           "return tokens.reshape(tokens.shape[0], tokens.shape[2], *grid)",
           "token maps reshaped without a transpose: channels and positions scrambled, shapes intact",
           ("tests/test_model_pinned.py", "tests/test_model_segmenter.py")),
    Mutant("clip-resize-corners", "model/teachers.py",
           'mode="bilinear", align_corners=True)', 'mode="bilinear", align_corners=False)',
           "CLIP sees another resize than the reference's", ("tests/test_model_teachers.py",)),
    Mutant("logits-resize-corners", "model/segmenter.py",
           'logits = F.interpolate(logits, size=img.shape[-2:], mode="bilinear", align_corners=True)',
           'logits = F.interpolate(logits, size=img.shape[-2:], mode="bilinear", align_corners=False)',
           "logits resized unlike the reference", ("tests/test_model_segmenter.py",)),
    Mutant("unimatch-masks-not-complementary", "methods/unimatch_v2.py", "mask2 = (1.0 - keep) / max(channel_p, 1e-6)",
           "mask2 = keep / max(channel_p, 1e-6)", "both views drop the same channels",
           ("tests/test_unimatch_v2.py", "tests/test_train_step.py")),
    Mutant("cutmix-never-at-the-border", "dataset/transforms.py", "if left + w <= size and top + h <= size:",
           "if left + w < size and top + h < size:", "CutMix boxes never reach the crop's right or bottom edge",
           ("tests/test_dataset_transforms.py",)),
    Mutant("flip-image-only", "dataset/transforms.py",
           "image, target = F.horizontal_flip(image), F.horizontal_flip(target)",
           "image = F.horizontal_flip(image)", "image and mask out of step", ("tests/test_dataset_transforms.py",)),
    Mutant("mask-resized-nearest", "dataset/transforms.py",
           "target = F.resize(target, size, interpolation=InterpolationMode.NEAREST_EXACT)",
           "target = F.resize(target, size, interpolation=InterpolationMode.NEAREST)",
           "labels sampled at pixel corners: shifted against the image", ("tests/test_dataset_transforms.py",)),
    Mutant("resume-forgets-the-iteration", "util/run.py",
           'state.iteration, state.skipped_steps = ckpt["iteration"], ckpt["skipped_steps"]',
           'state.iteration, state.skipped_steps = 0, ckpt["skipped_steps"]', "a resumed run restarts its schedule",
           ("tests/test_train_run.py",)),
    Mutant("best-tie-goes-earlier", "util/run.py", 'scores[w] >= self.best[w]["miou"]',
           'scores[w] > self.best[w]["miou"]', "ties keep the earlier epoch, unlike the reference",
           ("tests/test_run_folder.py",)),
    Mutant("best-by-ignored", "util/run.py", "if improved[self.best_by]:", 'if improved["student"]:',
           "best.pth follows the student whatever train.best_by says", ("tests/test_run_folder.py",)),
    Mutant("accumulation-without-mean", "methods/step.py", 'losses["loss"] / k if k > 1 else losses["loss"]',
           'losses["loss"]', "accumulated gradients summed, not averaged", ("tests/test_accumulation.py",)),
    Mutant("accumulation-draws-by-rank", "methods/step.py", "draws(cfg, state.iteration, rank * k + j)",
           "draws(cfg, state.iteration, rank)", "every forward of a step draws the same",
           ("tests/test_accumulation.py",)),
    Mutant("sampler-shards-by-process", "dataset/sampler.py", "order[v::self.shards].tolist()",
           "order[v::self.world_size].tolist()", "accumulated forwards see overlapping crops",
           ("tests/test_dataset_sampler.py", "tests/test_accumulation.py")),
    Mutant("confusion-transposed", "eval/metrics.py", "index = torch.where(valid, target * n + pred, n * n)",
           "index = torch.where(valid, pred * n + target, n * n)", "rows are predictions, not ground truth",
           ("tests/test_metrics.py",)),
    Mutant("excluded-prediction-forgiven", "eval/metrics.py", "gt, pred = scored.sum(1), scored[:, keep].sum(0)",
           "gt, pred = scored[:, keep].sum(1), scored[:, keep].sum(0)",
           "a pixel predicted as an excluded class is no error", ("tests/test_metrics.py",)),
    Mutant("stride-half-window", "eval/inference.py", "return max(1, int(window * 2 / 3))",
           "return max(1, window // 2)", "sliding windows overlap unlike the reference",
           ("tests/test_eval_inference.py",)),
    Mutant("loveda-labels-not-shifted", "dataset/loveda.py", "raw.astype(np.int16) - 1",
           "raw.astype(np.int16)", "LoveDA classes one off", ("tests/test_prepare.py",)),
    Mutant("supervised-epoch-fixed", "methods/supervised.py",
           "return max(n_labeled, cfg.train.supervised_epoch_samples)",
           "return cfg.train.supervised_epoch_samples", "a long labelled list cut to 3,000 draws",
           ("tests/test_accumulation.py",)),
    Mutant("selection-on-scored-classes", "train.py",
           'excluded = () if cfg.train.best_on == "all_classes" else None', "excluded = None",
           "best.pth chosen on the test's classes, unlike the authors", ("tests/test_accumulation.py",)),
)


def copy_tree(dest: Path) -> None:
    """The working tree's files (what git tracks, and untracked ones it does not ignore) into `dest`."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        source = REPO / rel
        if source.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / rel)


def pytest(tree: Path, args: list[str], timeout: int) -> bool:
    """Whether the tests pass in `tree`."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *IGNORED, *args],
                          cwd=tree, capture_output=True, text=True, timeout=timeout, env=env)
    return done.returncode == 0


def stale(mutant: Mutant, tree: Path = REPO) -> str | None:
    """Why `mutant` cannot be applied to `tree` as written (None: its text is there exactly once, its tests exist)."""
    path = tree / mutant.file
    count = path.read_text().count(mutant.before) if path.is_file() else 0
    if count != 1:
        return f"mutant {mutant.name}: {mutant.file} holds its text {count} times, not once"
    missing = [t for t in mutant.tests if not (tree / t).is_file()]
    if missing:
        return f"mutant {mutant.name}: no test file {', '.join(missing)}"
    return None


def try_mutant(tree: Path, mutant: Mutant, slow: bool, timeout: int) -> dict:
    path = tree / mutant.file
    original = path.read_text()
    problem = stale(mutant, tree)
    if problem:
        raise ConfigError(f"{problem}; update scripts/mutants.py")
    started = time.perf_counter()
    path.write_text(original.replace(mutant.before, mutant.after))
    try:
        if not pytest(tree, ["-m", "not slow", *mutant.tests], timeout):
            killed_by = "its tests"
        elif not pytest(tree, ["-m", "not slow"], timeout):
            killed_by = "the quick suite"
        elif slow and not pytest(tree, [], timeout):
            killed_by = "the whole suite"
        else:
            killed_by = None
    finally:
        path.write_text(original)
    return {"name": mutant.name, "file": mutant.file, "why": mutant.why, "killed": killed_by is not None,
            "killed_by": killed_by, "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated parts of mutant names to run")
    parser.add_argument("--slow", action="store_true", help="also the slow tests, for mutants the quick suite misses")
    parser.add_argument("--out", type=user_path, help="write the results as JSON here")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per pytest run")
    args = parser.parse_args(argv)
    wanted = [m for m in MUTANTS if not args.only or any(part in m.name for part in args.only.split(","))]
    if not wanted:
        raise ConfigError(f"--only {args.only}: no mutant's name contains it")
    # Every mutant is checked before the first test runs: a stale one stops the run in seconds, not after minutes.
    problems = [p for p in map(stale, wanted) if p]
    if problems:
        raise ConfigError(f"{'; '.join(problems)}; update scripts/mutants.py")
    results = []
    with tempfile.TemporaryDirectory(prefix="mutants_") as folder:
        tree = Path(folder)
        copy_tree(tree)
        if not pytest(tree, ["-m", "not slow"], args.timeout):
            raise ConfigError("the quick suite fails without any mutant: fix it first")
        for mutant in wanted:
            result = try_mutant(tree, mutant, args.slow, args.timeout)
            results.append(result)
            verdict = f"killed by {result['killed_by']}" if result["killed"] else "SURVIVED"
            print(f"{mutant.name:<34} {verdict:<28} {result['seconds']:>6} s  ({mutant.why})", flush=True)
    survivors = [r["name"] for r in results if not r["killed"]]
    print(f"{len(results) - len(survivors)} of {len(results)} mutants killed"
          + (f"; survived: {', '.join(survivors)}" if survivors else ""))
    if args.out:
        write_text(args.out, json.dumps({"results": results, "survivors": survivors}, indent=2) + "\n")
    return 1 if survivors else 0


if __name__ == "__main__":
    run_main(main)
