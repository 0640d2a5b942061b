"""A run's folder and its bookkeeping, in one place: what train.py writes beside its checkpoints, and what tells
where a score came from.

    <run>/config.yaml     the resolved config (absolute paths), rewritten atomically at every start
    <run>/progress.json   where the run stands: iterations, best validation scores, every evaluation, and
                          which checkpoint best.pth holds (the run's id and the iteration it was saved at)
    <run>/latest.pth      everything needed to continue exactly; best.pth: the weights chosen by train.best_by
    <run>/.lock           held for the run's life (util.io.FolderLock)
    <run>/train.log, tb/  what users watch

Every checkpoint carries the run's id (made once, at the run's first start), the iteration and epoch it was
saved at, and the config. eval/eval.py copies that identity, the file's SHA-256 and the digest of the list it
scored into metrics.json, so a score can always be matched to what produced it
(`evaluation_problem`): a table never shows a score of a checkpoint that best.pth no longer is.
"""

from __future__ import annotations

import copy
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from util.checkpoint import atomic_save, load_own_checkpoint
from util.config import (
    MODEL_KEYS,
    RUN_CONFIG,
    RUN_PROGRESS,
    Config,
    config_differences,
    describe_differences,
    model_differences,
    read_run_config,
    save_config,
    setting_differences,
    under,
    upgrade_saved,
)
from util.errors import WeightsError
from util.io import FolderLock, check_output_folder, file_sha256, remove_stale_temporaries, write_text
from util.logging import code_version

CONFIG, PROGRESS, LATEST, BEST, LOCK = RUN_CONFIG, RUN_PROGRESS, "latest.pth", "best.pth", ".lock"
# Resuming under other values of these is refused outright: the saved weights or optimizer state would not
# fit (another model, another set of trained parameters).
ARCHITECTURE_KEYS = (*MODEL_KEYS, "model.lock_backbone")
WEIGHT_SETS = ("student", "ema")


def new_run_id() -> str:
    """A run's id: random, so that two runs (or a run and its re-creation in the same folder) never share one."""
    return uuid.uuid4().hex[:12]


# ----------------------------------------------------------------------------------------------------------
# Progress: best scores, history, and which checkpoint best.pth is


@dataclass
class Progress:
    """A run's evaluations so far: the best val mIoU (percent) of each weight set with its 1-based epoch, every
    evaluation's scores, and the iteration and epoch of the weights in best.pth (chosen by `best_by`)."""

    best_by: str
    # The classes of the val mIoU that chooses best.pth (train.best_on).
    best_on: str = "all_classes"
    run_id: str = field(default_factory=new_run_id)
    best: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {w: {"miou": None, "epoch": None} for w in WEIGHT_SETS})
    history: list[dict[str, Any]] = field(default_factory=list)
    best_checkpoint: dict[str, int] | None = None
    # Settings changed on a resume (--resume-changed): [{"iteration": the first step under them, "changes":
    # {key: [before, after]}}], so that config.yaml (the current settings) never hides what earlier steps used.
    settings_changes: list[dict[str, Any]] = field(default_factory=list)

    def record(self, epoch: int, iteration: int, scores: dict[str, float]) -> bool:
        """Add the evaluation after `epoch` (1-based); True when best.pth must now hold these weights.

        Each weight set's best is the maximum over epochs, ties going to the later epoch as in the reference's
        semi-supervised scripts (is_best = mIoU >= previous best; its supervised.py keeps the earlier one).
        """
        self.history.append({"epoch": epoch, **scores})
        improved = {w: self.best[w]["miou"] is None or scores[w] >= self.best[w]["miou"] for w in scores}
        for which, better in improved.items():
            if better:
                self.best[which] = {"miou": scores[which], "epoch": epoch}
        if improved[self.best_by]:
            self.best_checkpoint = {"iteration": iteration, "epoch": epoch}
        return improved[self.best_by]

    def describe_best(self) -> str:
        """'best val mIoU student 61.20 (epoch 7), ema 60.85 (epoch 9)': each the maximum over epochs."""
        def one(which: str) -> str:
            b = self.best[which]
            return f"{which} -" if b["miou"] is None else f"{which} {b['miou']:.2f} (epoch {b['epoch']})"
        return "best val mIoU " + ", ".join(one(w) for w in WEIGHT_SETS)

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of it (the keys progress.json shows too)."""
        return {"run_id": self.run_id, "selected_by": self.best_by, "selected_on": self.best_on,
                "best": copy.deepcopy(self.best), "history": list(self.history),
                "best_checkpoint": self.best_checkpoint, "settings_changes": copy.deepcopy(self.settings_changes)}

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.run_id, self.best, self.history = ckpt["run_id"], ckpt["best"], ckpt["history"]
        self.best_checkpoint = ckpt["best_checkpoint"]
        self.settings_changes = list(ckpt.get("settings_changes", []))

    def record_changes(self, iteration: int, changes: dict[str, tuple[Any, Any]]) -> None:
        """Settings that change from step `iteration` on (a resume under --resume-changed)."""
        if changes:
            self.settings_changes.append({"iteration": iteration,
                                          "changes": {key: list(pair) for key, pair in changes.items()}})

    def describe_changes(self) -> str:
        """'settings changed at iteration 3000: train.epochs 60 -> 80' per resume that changed them."""
        return "\n".join(f"settings changed at iteration {entry['iteration']}: "
                         + ", ".join(f"{key} {before} -> {after}" for key, (before, after) in entry["changes"].items())
                         for entry in self.settings_changes)


# ----------------------------------------------------------------------------------------------------------
# The folder


class RunFolder:
    """The folder of one training run (cfg.run_dir): checked before any work, locked while the run lives."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.latest, self.best = self.path / LATEST, self.path / BEST
        self.lock: FolderLock | None = None
        self.created = False

    def check(self, cfg: Config) -> None:
        """Before any work: the folder can be written, and holds no checkpoint this run did not write.

        Without latest.pth to resume from, a best.pth may only be this very run's (same resolved config), killed
        between its first best.pth and its first latest.pth: starting again rewrites the same file.
        """
        check_output_folder(self.path, "save_path")
        for path in (self.latest, self.best):
            if path.exists() and not path.is_file():
                raise WeightsError(f"{path} is not a file; move it away or use another save_path (or --save-path)")
        if self.latest.exists() or not self.best.exists():
            return
        try:
            saved = load_own_checkpoint(self.best).get("config")
            same_run = isinstance(saved, dict) and not config_differences(upgrade_saved(saved), cfg.to_dict())
        except WeightsError:
            same_run = False
        if not same_run:
            raise WeightsError(f"{self.path} holds a best.pth of another run and no latest.pth to resume from: a "
                               f"new run would overwrite it; move best.pth away, or use another save_path (or "
                               f"--save-path)")

    def open(self) -> None:
        """Create and lock the folder for this process's life; delete what a killed save left behind."""
        self.created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock = FolderLock(self.path, LOCK, lambda pid: (
            f"{self.path} is in use by another training run (pid {pid}); wait for it to finish, or use another "
            f"save_path (or --save-path)"))
        remove_stale_temporaries(self.path)

    def close(self) -> None:
        """Unlock; a folder this run made and left empty (a run refused before it wrote anything) goes too."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.created:
            try:
                self.path.rmdir()
            except OSError:
                pass

    def write_config(self, cfg: Config, note: str) -> None:
        """config.yaml: the resolved config, with `note` (how the run trains it) as a comment on top."""
        save_config(cfg, self.path / CONFIG, note)

    def write_progress(self, progress: dict[str, Any]) -> None:
        write_text(self.path / PROGRESS, json.dumps(progress, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------------------
# The training state, and the checkpoint that keeps it


@dataclass
class TrainState:
    """What one optimizer step reads and updates (methods/step.py), and what latest.pth keeps of it."""

    model: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    # The frozen teachers, model.teachers.Teachers (None where the method does not distil): called on the student's
    # batch, they give {name: features}; built from their files, never saved.
    teachers: Any
    # What the step trains through: the model's training forward, wrapped by DDP (`ddp`, for its no_sync) and
    # torch.compile where they are used.
    forward: Callable[..., Any]
    ddp: DistributedDataParallel | None
    # Autocast's dtype (None: fp32), and the optimizer steps of the whole run (the schedules' T).
    amp_dtype: torch.dtype | None
    total_iters: int
    iteration: int = 0
    skipped_steps: int = 0


def training_checkpoint(state: TrainState, epoch: int, iters_per_epoch: int, progress: Progress, wall_seconds: float,
                        cfg: Config, split_lists: dict[str, str]) -> dict[str, Any]:
    """Everything needed to continue exactly, and which run and moment it is; no teacher weights."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"model": state.model.state_dict(), "model_ema": state.ema.state_dict(),
            "optimizer": state.optimizer.state_dict(), "scaler": state.scaler.state_dict(),
            "epoch": epoch, "iteration": state.iteration, "iters_per_epoch": iters_per_epoch, **progress.state(),
            "wall_seconds": wall_seconds, "skipped_steps": state.skipped_steps, "rng": rng, "config": cfg.to_dict(),
            "split_lists": split_lists, "version": code_version()}


def save_checkpoint(path: Path, *args: Any) -> None:
    """Write `training_checkpoint(*args)` to `path` atomically."""
    atomic_save(training_checkpoint(*args), path)


def resume_training(path: Path, state: TrainState, cfg: Config, iters_per_epoch: int, progress: Progress,
                    split_lists: dict[str, str], allow_changed: bool = False) -> tuple[dict[str, tuple], float]:
    """Continue `state` and `progress` from the checkpoint at `path`: the settings that changed since it was
    written (see resume_differences), and the training seconds it had run."""
    ckpt = load_own_checkpoint(path)
    if not {"config", "iteration", "optimizer", "run_id"} <= set(ckpt):
        raise WeightsError(f"{path} is not a checkpoint of this trainer (no training state: the authors' "
                           f"release?); evaluate it with eval/eval.py, and use another save_path for a new run")
    changed = resume_differences(ckpt["config"], cfg, path, allow_changed, ckpt.get("split_lists"), split_lists)
    if ckpt["iters_per_epoch"] != iters_per_epoch:
        raise WeightsError(f"{path} was written with {ckpt['iters_per_epoch']} iterations per epoch, this "
                           f"run has {iters_per_epoch} (batch size, split or process count changed)")
    state.model.load_state_dict(ckpt["model"])
    state.ema.load_state_dict(ckpt["model_ema"])
    load_optimizer_state(state.optimizer, ckpt["optimizer"])
    state.scaler.load_state_dict(ckpt["scaler"])
    state.iteration, state.skipped_steps = ckpt["iteration"], ckpt["skipped_steps"]
    progress.load_state(ckpt)
    torch.set_rng_state(ckpt["rng"]["torch"])
    if "cuda" in ckpt["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    return changed, ckpt["wall_seconds"]


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """AdamW's moments and step counts from a checkpoint; the group settings that this run decides stay its own.

    load_state_dict restores every group setting: `fused` (this device's choice) and `initial_lr` (this config's
    base lr of the group) are kept, and a checkpoint written before `initial_lr` existed (its groups carried an
    `lr_scale`) loads the same way.
    """
    current = optimizer.param_groups
    groups = [{**{k: v for k, v in g.items() if k != "lr_scale"}, "fused": now["fused"],
               "initial_lr": now["initial_lr"]} for g, now in zip(saved["param_groups"], current)]
    optimizer.load_state_dict({**saved, "param_groups": groups})
    match_parameter_layout(optimizer)


def match_parameter_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every optimizer state tensor its parameter's memory layout.

    A checkpoint keeps the layout its run had: contiguous moments from a run without channels-last (or from a
    CPU) meet channels-last convolution weights when resumed on a GPU. Fused AdamW walks parameter and
    moments as flat memory, so mismatched layouts pair the wrong elements (measured: updates off by 1.6e-3
    after one step); the multi-tensor AdamW is unaffected.
    """
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def split_list_differences(recorded: Any, current: dict[str, str]) -> dict[str, tuple[str, str]]:
    """{"<kind>.txt": (recorded SHA-256, current one), 12 hex digits each} for each training list whose content
    differs from the one a run recorded (dataset.splits.training_list_digests); empty where they agree or
    nothing was recorded."""
    if not isinstance(recorded, dict):
        return {}
    kinds = sorted(set(recorded) | set(current))
    return {f"{kind}.txt": (str(recorded.get(kind, "none"))[:12], str(current.get(kind, "none"))[:12])
            for kind in kinds if recorded.get(kind) != current.get(kind)}


def resume_differences(saved: dict[str, Any], cfg: Config, path: Path, allow_changed: bool,
                       saved_lists: Any = None, lists: dict[str, str] | None = None) -> dict[str, tuple]:
    """The settings that changed since the checkpoint at `path` was written (FREE_KEYS aside), and the training
    lists whose content changed (`split_list_differences` of the checkpoint's `saved_lists` and `lists`).

    Another model is refused; other settings or lists need `allow_changed` (--resume-changed), and are then
    returned so that the caller logs them.
    """
    saved = upgrade_saved(saved)
    model = model_differences(saved, cfg.to_dict(), ARCHITECTURE_KEYS)
    if model:
        raise WeightsError(f"{path} belongs to a run of another model ({describe_differences(model)}); use another "
                           f"save_path (or --save-path) for a new run")
    diffs = {k: v for k, v in setting_differences(saved, cfg.to_dict()).items() if not under(k, ARCHITECTURE_KEYS)}
    diffs.update(split_list_differences(saved_lists, lists or {}))
    if diffs and not allow_changed:
        raise WeightsError(f"{path} was written with other settings ({describe_differences(diffs)}); to go on with "
                           f"the new values pass --resume-changed, or use another save_path for a new run")
    return diffs


# ----------------------------------------------------------------------------------------------------------
# Provenance of scores


def checkpoint_identity(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Which run and moment a checkpoint is: its run id, iteration, epoch and selection rule (None where the
    file does not say, as in the authors' checkpoints)."""
    return {key: ckpt.get(key) for key in ("run_id", "iteration", "epoch", "selected_by")}


def read_progress(folder: str | os.PathLike) -> dict[str, Any] | None:
    """A run folder's progress.json, or None where there is none or it cannot be read."""
    try:
        data = json.loads((Path(folder) / PROGRESS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def scored_subset(metrics: dict[str, Any]) -> Any:
    """Which subset (val, test) a metrics.json scored: its 'subset', or 'split' in files written before the rename."""
    return metrics.get("subset", metrics.get("split"))


def evaluation_problem(progress: dict[str, Any], metrics: dict[str, Any], test_list: Path | None) -> str | None:
    """Why `metrics` (an eval/eval.py metrics.json) is not a score of this run's current best.pth, in a few
    words; None when it is.

    It must name the run's id and the iteration best.pth was saved at (progress.json), and, given the run's
    current test list, have scored a list with the same content.
    """
    source = metrics.get("checkpoint")
    if not isinstance(source, dict):
        return "metrics.json does not say which checkpoint it scored"
    if source.get("run_id") != progress.get("run_id"):
        return f"scored {source.get('path', 'a checkpoint')} of another run"
    best = progress.get("best_checkpoint") or {}
    if source.get("iteration") != best.get("iteration"):
        return (f"scored {Path(str(source.get('path'))).name} at iteration {source.get('iteration')}, but best.pth "
                f"is the one of iteration {best.get('iteration')}")
    if test_list is not None and scored_subset(metrics) == "test":
        recorded = metrics.get("subset_list_sha256", metrics.get("split_list_sha256"))
        if not test_list.is_file():
            return f"the run's test list {test_list} is gone"
        if recorded != file_sha256(test_list):
            return f"scored another {test_list.name} than the run's {test_list} holds now"
    return None


def saved_setting_differences(folder: str | os.PathLike, cfg: Config,
                              split_lists: dict[str, str] | None = None) -> dict[str, tuple[Any, Any]]:
    """How the run saved in `folder` differs from `cfg` in what it trains (FREE_KEYS aside): {dotted key: (saved,
    cfg's)} from its config.yaml, and, given the digests of the lists `cfg` would train on (`split_lists`),
    {"<kind>.txt": (recorded, current)} for each list whose content changed since the run recorded it
    (progress.json). Empty where they agree or where no run is saved there. Tools that skip finished work ask
    this first: a run of other settings or other lists is neither reused nor silently trained over."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        return {}
    diffs: dict[str, tuple[Any, Any]] = setting_differences(read_run_config(path), cfg.to_dict())
    if split_lists is not None:
        diffs.update(split_list_differences((read_progress(folder) or {}).get("split_lists"), split_lists))
    return diffs


def protocol_evaluation(folder: str | os.PathLike, test_list: Path, mode: str = "original") -> Path | None:
    """The folder (beside best.pth) of a test evaluation in `mode` of the weights best.pth was selected by, of the
    run's current best.pth on `test_list` as it is now; None if there is none."""
    progress = read_progress(folder)
    if progress is None:
        return None
    for metrics_file in sorted(Path(folder).glob("*/metrics.json")):
        try:
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (isinstance(metrics, dict) and scored_subset(metrics) == "test" and metrics.get("mode") == mode
                and metrics.get("weights") == progress.get("selected_by")
                and evaluation_problem(progress, metrics, test_list) is None):
            return metrics_file.parent
    return None
