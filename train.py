"""Train a segmenter semi-supervised: supervised, FixMatch, UniMatch V2 or RS-MTDF, one loop for all.

    python train.py --config configs/loveda.yaml [--split 1|5|10] [--save-path DIR] [key.sub=value ...]
    torchrun --nproc_per_node 4 train.py --config ...        # or: sh scripts/train.sh 4 29500

A run writes into its save path: config.yaml (the resolved configuration), train.log, tb/ (TensorBoard),
latest.pth (every epoch, and every train.checkpoint_interval iterations) and best.pth. Started again with
the same save path, it resumes from latest.pth where it stopped. SIGTERM saves and exits at the next
iteration boundary.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from dataset.info import DATASETS
from dataset.sampler import SeededSampler
from dataset.semi import SemiDataset, check_disjoint
from dataset.splits import PER_PERCENT, SHARED, read_list, split_file
from eval.evaluate import build_eval_loader, evaluate
from methods import METHODS, Method
from methods.common import StepContext, StepSettings
from model.segmenter import Segmenter, build_segmenter
from model.teachers import build_teachers
from model.weights import check_weight_files
from util.checkpoint import RunLock, atomic_save, atomic_write_text, load_own_checkpoint
from util.cli import add_config_args, config_from_args, run_main
from util.config import (
    MODEL_KEYS,
    Config,
    config_differences,
    describe_differences,
    model_differences,
    save_config,
    under,
)
from util.dist import DistInfo, cleanup, init_distributed, is_distributed
from util.ema import ema_update, make_ema
from util.errors import ConfigError, DataError, UserError, WeightsError
from util.io import check_output_folder, is_temporary
from util.logging import code_version, setup_logger
from util.precision import autocast_dtype
from util.schedule import ema_ratio, poly_lr, set_lr
from util.speed import model_flops_utilisation, peak_bf16_tflops, step_flops
from util.visualize import sample_panel

# Resuming under other values of these is refused outright: the saved weights or optimizer state would not
# fit (another model, another set of trained parameters).
ARCHITECTURE_KEYS = (*MODEL_KEYS, "model.lock_backbone")
# These may change between a run and its resumption without a word: they change neither the model nor what
# it is trained on (where files are written, speed switches, logging).
FREE_KEYS = ("save_path", "model.pretrained", "model.grad_checkpointing", "train.num_workers", "train.log_interval",
             "train.checkpoint_interval", "train.compile", "train.channels_last", "train.skip_nonfinite",
             "eval.batch_size", "eval.num_visualize")


class NonFiniteLoss(UserError):
    """A loss term became NaN or inf."""


class TrainForward(nn.Module):
    """Calls the segmenter's training forward through __call__, so DDP sees and synchronises it."""

    def __init__(self, segmenter: Segmenter) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, img: torch.Tensor, feature_mask: torch.Tensor | None = None) -> Any:
        return self.segmenter.forward_train(img, feature_mask)


def build_optimizer(model: Segmenter, cfg: Config) -> torch.optim.AdamW:
    """AdamW over trainable parameters only: the encoder at lr, everything else at lr * lr_multi."""
    groups = [{"params": list(model.encoder_parameters()), "lr_scale": 1.0},
              {"params": list(model.head_parameters()), "lr_scale": cfg.train.lr_multi}]
    groups = [g for g in groups if g["params"]]
    t = cfg.train
    # Fused AdamW on GPUs: one kernel for every parameter instead of several per tensor.
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(groups, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay, fused=fused)


def split_path(cfg: Config, kind: str) -> Path:
    """The run's list of `kind` (labeled, unlabeled, val, test) under dataset.splits."""
    return split_file(cfg.dataset.splits, kind, cfg.dataset.split)


def count_lines(path: Path, cfg: Config) -> int:
    if not path.is_file():
        raise DataError(f"split file not found: {path} (dataset.splits={cfg.dataset.splits}, "
                        f"dataset.split={cfg.dataset.split}); run python -m dataset.prepare first")
    return sum(1 for line in read_list(path) if line.strip())


def train_loader(dataset: SemiDataset, length: int, batch_size: int, seed: int, cfg: Config,
                 info: DistInfo) -> DataLoader:
    """A loader that draws `length` items per epoch (repeating a short list), sharded over processes."""
    sampler = SeededSampler(len(dataset), length, seed, info.rank, info.world_size)
    workers = cfg.train.num_workers
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      drop_last=True, pin_memory=info.device.type == "cuda", persistent_workers=workers > 0)


def upgrade_best(best: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Best scores of a checkpoint in today's form; earlier versions kept one epoch and fractions."""
    if all(isinstance(best.get(w), dict) for w in ("student", "ema")):
        return best
    epoch = best.get("epoch") if best.get("epoch", -1) >= 0 else None
    return {w: {"miou": None if epoch is None else 100 * best[w], "epoch": epoch} for w in ("student", "ema")}


class Trainer:
    """One training run: model, EMA, teachers, optimizer, data, and the state that a checkpoint restores."""

    def __init__(self, cfg: Config, info: DistInfo, with_data: bool = True) -> None:
        self.cfg, self.info, self.device = cfg, info, info.device
        self.method: Method = METHODS[cfg.train.method]
        # The numbers the method's step computes with (threshold, loss and distillation weights, dropout).
        self.step_settings = StepSettings.from_config(cfg)
        # Every missing weight file in one message, before any data is read or worker started.
        check_weight_files(cfg.weight_files)
        # The authors' supervised.py doubles the batch and draws a fixed number of labelled samples per epoch.
        self.reference_supervised = not self.method.unlabeled and cfg.train.supervised_protocol == "reference"
        self.batch_size = cfg.train.batch_size * (2 if self.reference_supervised else 1)
        torch.manual_seed(cfg.train.seed)
        # Without data (the benchmark feeds its own batches) an "epoch" is a single iteration.
        self.loaders = self._build_data() if with_data else ()
        self.iters_per_epoch = len(self.loaders[0]) if with_data else 1
        if self.iters_per_epoch == 0:
            raise ConfigError(f"train.batch_size: {self.batch_size} per process is more than the "
                              f"{self.epoch_length} items of one epoch")
        self.total_iters = cfg.train.epochs * self.iters_per_epoch

        self.model = build_segmenter(cfg).to(self.device)
        # Only a method that distils gets teachers (cfg.distill_teachers is empty otherwise).
        self.teachers = build_teachers(cfg, self.device)
        gpu_like = self.device.type == "cuda" or cfg.train.cpu_autocast
        if cfg.train.channels_last and gpu_like:
            self.model.to(memory_format=torch.channels_last)
        self.ema = make_ema(self.model)
        self.optimizer = build_optimizer(self.model, cfg)
        self.amp_dtype = autocast_dtype(cfg.train.precision, self.device, allow_cpu=cfg.train.cpu_autocast)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        forward: nn.Module = TrainForward(self.model)
        # Without data (the benchmark and the FLOP count build a Trainer to feed it their own batches) the
        # trainer stays a single process even under torchrun.
        self.distributed = is_distributed() and with_data
        if self.distributed:
            forward = DistributedDataParallel(forward, device_ids=[self.device.index] if self.device.type == "cuda"
                                              else None)
        self.forward = torch.compile(forward) if cfg.train.compile else forward

        self.iteration = 0
        # Best val mIoU (percent) of each weight set and its 1-based epoch, each the maximum over epochs;
        # best.pth holds the epoch that is best by train.best_by. history: every evaluation's scores.
        self.best: dict[str, dict[str, Any]] = {w: {"miou": None, "epoch": None} for w in ("student", "ema")}
        self.history: list[dict[str, Any]] = []
        # Training wall time of earlier processes of this run (restored on resume) and this one's start.
        self.wall_before, self.started = 0.0, time.perf_counter()
        self.skipped_steps = 0
        self.stop_requested = False
        # Settings that differ from the resumed checkpoint's, allowed by --resume-changed.
        self.resume_changed = False
        self.changed_on_resume: dict[str, tuple[Any, Any]] = {}
        # Per-step non-finite flags of each loss term, checked (one host sync) at log and save points.
        self.nonfinite: list[torch.Tensor] = []
        self.loss_names: list[str] = []
        self.log = setup_logger(None, info.is_main)
        self.writer: SummaryWriter | None = None
        # A CPU group for the stop flag, so that agreeing on SIGTERM never waits on the GPU stream.
        self.flag_group = (cast(dist.ProcessGroup, dist.new_group(backend="gloo")) if self.distributed
                           else None)
        self.flops_per_step, self.peak_tflops = self._flops_for_mfu() if with_data else (None, None)

    def _flops_for_mfu(self) -> tuple[int | None, float | None]:
        """FLOPs of one step of this process and the GPU's dense bf16 peak, for MFU in the log (GPUs only).

        Counted once on fake tensors (seconds, no GPU memory). A counting failure costs the MFU column, never
        the run: it is logged and training goes on.
        """
        if self.device.type != "cuda":
            return None, None
        peak = peak_bf16_tflops(torch.cuda.get_device_name(self.device))
        if peak is None:
            return None, None
        try:
            return step_flops(self.cfg)["total"], peak
        except Exception as e:  # noqa: BLE001 - a diagnostic must not stop a training run
            self.log.warning(f"no MFU in the log: counting the step's FLOPs failed ({type(e).__name__}: {e})")
            return None, None

    # ------------------------------------------------------------------------------------------------
    # Data

    def _build_data(self) -> tuple[DataLoader, ...]:
        cfg, info = self.cfg, self.info
        # An epoch is one pass over the unlabelled list for every method, so iteration counts compare; where
        # every image is labelled (DeepGlobe 100 %) the list is empty and an epoch is the labelled list.
        unlabeled_file = split_path(cfg, "unlabeled")
        n_unlabeled = count_lines(unlabeled_file, cfg)
        if n_unlabeled == 0 and self.method.unlabeled:
            raise DataError(f"{unlabeled_file} is empty (dataset.split={cfg.dataset.split} labels every image): "
                            f"train.method={cfg.train.method} needs unlabelled images; use train.method=supervised")
        labeled = SemiDataset(cfg, "train_l", split_path(cfg, "labeled"))
        self.epoch_length = n_unlabeled or len(labeled)
        if self.reference_supervised:
            self.epoch_length = cfg.train.supervised_epoch_samples
        loaders = [train_loader(labeled, self.epoch_length, self.batch_size, cfg.train.seed, cfg, info)]
        if self.method.unlabeled:
            unlabeled = SemiDataset(cfg, "train_u", unlabeled_file, n_strong=self.method.n_strong)
            loaders.append(train_loader(unlabeled, self.epoch_length, self.batch_size, cfg.train.seed + 1, cfg, info))
        val = SemiDataset(cfg, "val", split_path(cfg, "val"))
        # Training on a val or test tile, or one tile both labelled and unlabelled, is a list mistake.
        check_disjoint([split_path(cfg, kind) for kind in (*PER_PERCENT, *SHARED)],
                       cfg.dataset.root)
        self.val_loader = build_eval_loader(val, cfg, info)
        return tuple(loaders)

    def _batch(self, items: tuple[dict, ...]) -> dict[str, torch.Tensor]:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(self.device, non_blocking=True)

        batch = {"img_x": move(items[0]["img"]), "mask_x": move(items[0]["mask"])}
        if len(items) > 1:
            u = items[1]
            batch.update(img_u_w=move(u["img_w"]), img_u_s=move(u["img_s"]), ignore_mask=move(u["ignore_mask"]),
                         cutmix_box=move(u["cutmix_box"]))
        return batch

    # ------------------------------------------------------------------------------------------------
    # Checkpoints

    def open_run_dir(self) -> None:
        """Create the run folder with the resolved config, the log file and TensorBoard (rank 0)."""
        run_dir = self.cfg.run_dir
        if self.info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, run_dir / "config.yaml")
            self.writer = SummaryWriter(str(run_dir / "tb"))
        self.log = setup_logger(run_dir, self.info.is_main)

    def state(self, epoch: int) -> dict[str, Any]:
        """Everything needed to continue exactly: no teacher weights (they are rebuilt from pretrained/)."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"model": self.model.state_dict(), "model_ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": epoch, "iteration": self.iteration, "iters_per_epoch": self.iters_per_epoch,
                "best": copy.deepcopy(self.best), "selected_by": self.cfg.train.best_by,
                "history": list(self.history), "wall_seconds": self.wall_seconds(),
                "skipped_steps": self.skipped_steps, "rng": rng,
                "config": self.cfg.to_dict(), "version": code_version()}

    def wall_seconds(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def save(self, name: str, epoch: int) -> None:
        self.check_finite()
        if self.info.is_main:
            atomic_save(self.state(epoch), self.cfg.run_dir / name)

    def write_progress(self, epoch: int) -> None:
        """progress.json: where the run stands and its best scores, for people and eval/report.py (rank 0)."""
        if not self.info.is_main:
            return
        cfg = self.cfg
        progress = {"dataset": cfg.dataset.name, "method": cfg.train.method, "split": cfg.dataset.split,
                    "seed": cfg.train.seed, "epoch": epoch, "epochs": cfg.train.epochs,
                    "iteration": self.iteration, "total_iters": self.total_iters,
                    "finished": self.iteration >= self.total_iters, "wall_seconds": round(self.wall_seconds(), 1),
                    "unit": "percent", "selected_by": cfg.train.best_by, "best": self.best, "history": self.history}
        atomic_write_text(cfg.run_dir / "progress.json", json.dumps(progress, indent=2) + "\n")

    def check_resumable(self, path: Path, saved: dict[str, Any]) -> None:
        """Refuse another model; refuse other settings unless the user said --resume-changed (then log them)."""
        diffs = {k: v for k, v in config_differences(saved, self.cfg.to_dict()).items()
                 if not under(k, FREE_KEYS) and not under(k, ARCHITECTURE_KEYS)}
        model = model_differences(saved, self.cfg.to_dict(), ARCHITECTURE_KEYS)
        if model:
            raise WeightsError(f"{path} belongs to a run of another model ({describe_differences(model)}); use "
                               f"another save_path (or --save-path) for a new run")
        if diffs and not self.resume_changed:
            raise WeightsError(f"{path} was written with other settings ({describe_differences(diffs)}); to go on "
                               f"with the new values pass --resume-changed, or use another save_path for a new run")
        self.changed_on_resume = diffs

    def resume(self, path: Path) -> None:
        ckpt = load_own_checkpoint(path)
        if not {"config", "iteration", "optimizer"} <= set(ckpt):
            raise WeightsError(f"{path} is not a checkpoint of this trainer (no training state: the authors' "
                               f"release?); evaluate it with eval/eval.py, and use another save_path for a new run")
        self.check_resumable(path, ckpt["config"])
        if ckpt["iters_per_epoch"] != self.iters_per_epoch:
            raise WeightsError(f"{path} was written with {ckpt['iters_per_epoch']} iterations per epoch, this "
                               f"run has {self.iters_per_epoch} (batch size, split or process count changed)")
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["model_ema"])
        # load_state_dict restores every group setting, `fused` too: keep this run's choice.
        fused, saved = self.optimizer.param_groups[0]["fused"], ckpt["optimizer"]
        groups = [{**g, "fused": fused} for g in saved["param_groups"]]
        self.optimizer.load_state_dict({**saved, "param_groups": groups})
        self.scaler.load_state_dict(ckpt["scaler"])
        self.iteration = ckpt["iteration"]
        self.best, self.history = upgrade_best(ckpt["best"]), ckpt.get("history", [])
        self.wall_before = ckpt.get("wall_seconds", 0.0)
        self.skipped_steps = ckpt["skipped_steps"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        if "cuda" in ckpt["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])

    # ------------------------------------------------------------------------------------------------
    # The step

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimisation step at self.iteration: lr, forward, losses, backward, AdamW, EMA."""
        cfg = self.cfg
        set_lr(self.optimizer, poly_lr(cfg.train.lr, self.iteration, self.total_iters, cfg.train.poly_power))
        # The step's random draws depend only on (seed, iteration, rank): resuming needs no generator state.
        generator = torch.Generator().manual_seed(
            (cfg.train.seed * 1_000_003 + self.iteration) * 1_009 + self.info.rank)
        ctx = StepContext(settings=self.step_settings, student=self.forward, ema=self.ema, teachers=self.teachers,
                          generator=generator, embed_dim=self.model.embed_dim)
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype
                    else contextlib.nullcontext())
        with autocast:
            losses = self.method.step(ctx, batch)
        loss = losses["loss"]
        if cfg.train.skip_nonfinite and not torch.isfinite(loss).item():
            # Opt-in: one host sync per step buys skipping the poisoned update instead of stopping.
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            return {k: torch.zeros_like(v) for k, v in losses.items() if k != "loss"}
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        ema_update(self.ema, self.model, ema_ratio(self.iteration, cfg.train.ema_cap))
        self.loss_names = list(losses)
        self.nonfinite.append(torch.stack([v.detach().float() for v in losses.values()]).isfinite().logical_not())
        return {k: v.detach() for k, v in losses.items()}

    def check_finite(self) -> None:
        """Stop before anything is saved if a loss since the last check was NaN or inf (one host sync)."""
        if not self.nonfinite:
            return
        flags = torch.stack(self.nonfinite).cpu()
        first = self.iteration - len(flags)
        self.nonfinite = []
        if flags.any():
            row = int(flags.any(dim=1).nonzero()[0, 0])
            terms = [name for name, bad in zip(self.loss_names, flags[row].tolist()) if bad and name != "loss"]
            at = first + row
            latest = self.cfg.run_dir / "latest.pth"
            last_good = (f"{latest} is the last good checkpoint" if latest.is_file()
                         else "no checkpoint was written yet")
            raise NonFiniteLoss(f"loss is not finite at iteration {at} ({', '.join(terms) or 'loss'}); "
                                f"stopped without saving, {last_good} (train.skip_nonfinite: true skips such "
                                f"steps instead)")

    def check_replicas(self) -> None:
        """Fail loudly if the processes' students have drifted apart (DDP keeps them equal bit for bit)."""
        if not self.distributed:
            return
        sums = torch.stack([p.detach().double().sum() for p in self.model.parameters()])
        low, high = sums.clone(), sums.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise RuntimeError(f"student parameters differ between processes at iteration {self.iteration}")
        self.log.info(f"parameters identical on all {self.info.world_size} processes")

    # ------------------------------------------------------------------------------------------------
    # The loop

    def request_stop(self, *_: Any) -> None:
        self.stop_requested = True

    def should_stop(self) -> bool:
        """Whether any process got SIGTERM: all must stop at the same iteration to save one state."""
        if self.flag_group is None:
            return self.stop_requested
        flag = torch.tensor([int(self.stop_requested)])
        dist.all_reduce(flag, group=self.flag_group)
        return bool(flag.item())

    def run(self) -> dict[str, Any]:
        cfg, log = self.cfg, self.log
        start_epoch = self.iteration // self.iters_per_epoch
        for epoch in range(start_epoch, cfg.train.epochs):
            done_in_epoch = self.iteration - epoch * self.iters_per_epoch
            if not self.train_epoch(epoch, done_in_epoch):
                self.write_progress(epoch)
                log.info(f"stopped by SIGTERM at iteration {self.iteration}; saved {cfg.run_dir / 'latest.pth'}. "
                         f"Run the same command to resume.")
                return {"stopped": True, "best": self.best}
            last = epoch + 1 == cfg.train.epochs
            if (epoch + 1) % cfg.train.eval_interval == 0 or last:
                self.evaluate_and_log(epoch)
            self.check_replicas()
            self.save("latest.pth", epoch + 1)
            self.write_progress(epoch + 1)
        log.info(f"finished: {self.describe_best()}; best.pth holds the best {cfg.train.best_by} "
                 f"(train.best_by); checkpoints in {cfg.run_dir}")
        return {"stopped": False, "best": self.best}

    def describe_best(self) -> str:
        """'best val mIoU student 61.20 (epoch 7), ema 60.85 (epoch 9)': each the maximum over epochs."""
        def one(which: str) -> str:
            b = self.best[which]
            return f"{which} -" if b["miou"] is None else f"{which} {b['miou']:.2f} (epoch {b['epoch']})"
        return "best val mIoU " + ", ".join(one(w) for w in self.best)

    def train_epoch(self, epoch: int, start: int) -> bool:
        """Train from iteration `start` of `epoch` to its end; False if stopped by SIGTERM."""
        cfg = self.cfg
        for loader in self.loaders:
            sampler = cast(SeededSampler, loader.sampler)
            sampler.set_epoch(epoch)
            sampler.set_start(start * self.batch_size)
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        tick, ticked_at = time.perf_counter(), self.iteration
        # A context manager, so that an error mid-epoch closes the bar before its one-line message.
        with tqdm(total=self.iters_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                  disable=not self.info.is_main, dynamic_ncols=True) as bar:
            for items in zip(*self.loaders):
                losses = self.step(self._batch(items))
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0) + v
                self.iteration += 1
                bar.update(1)
                if self.iteration % cfg.train.log_interval == 0:
                    tick, ticked_at = self.log_interval(sums, tick, ticked_at, bar)
                    sums = {}
                if cfg.train.checkpoint_interval and self.iteration % cfg.train.checkpoint_interval == 0 \
                        and self.iteration % self.iters_per_epoch:
                    self.save("latest.pth", epoch)
                if self.should_stop():
                    bar.close()
                    self.save("latest.pth", epoch)
                    return False
        self.check_finite()
        return True

    def log_interval(self, sums: dict[str, torch.Tensor], tick: float, ticked_at: int, bar: tqdm) -> tuple[float, int]:
        """Loss means, lr, throughput and memory to the bar and TensorBoard (the only host syncs)."""
        self.check_finite()
        steps = self.iteration - ticked_at
        now = time.perf_counter()
        per_step = self.batch_size * len(self.loaders) * self.info.world_size
        scalars = {f"train/{k}": float(v) / max(steps, 1) for k, v in sums.items()}
        scalars["train/lr"] = self.optimizer.param_groups[0]["lr"]
        scalars["train/images_per_s"] = per_step * steps / max(now - tick, 1e-9)
        mfu = (model_flops_utilisation(self.flops_per_step, max(now - tick, 1e-9) / max(steps, 1), self.peak_tflops)
               if self.flops_per_step is not None else None)
        if mfu is not None:  # always, given FLOPs: they are only counted where the GPU's peak is known
            scalars["train/mfu"] = mfu
        if self.device.type == "cuda":
            scalars["train/gpu_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if self.writer:
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, self.iteration)
        bar.set_postfix({k.split("/")[1]: f"{v:.3g}" for k, v in scalars.items()}, refresh=False)
        logging.getLogger(f"{self.log.name}.metrics").info(f"iteration {self.iteration}/{self.total_iters}: "
                      + ", ".join(f"{k.split('/')[1]} {v:.4g}" for k, v in scalars.items()))
        return now, self.iteration

    def evaluate_and_log(self, epoch: int) -> None:
        """Score student and EMA on val.txt; log per-class IoU; keep best.pth by train.best_by."""
        cfg, names = self.cfg, DATASETS[self.cfg.dataset.name].class_names
        scores: dict[str, float] = {}
        for which, model in (("student", self.model), ("ema", self.ema)):
            result = evaluate(model, self.val_loader, cfg, self.device, self.info,
                              max_visualize=cfg.eval.num_visualize)
            scores[which] = result["miou"] or 0.0
            ious = ", ".join(f"{n} {'-' if v is None else f'{v:.1f}'}" for n, v in zip(names, result["iou"]))
            self.log.info(f"epoch {epoch + 1} {which}: mIoU {scores[which]:.2f} over classes "
                          f"{result['classes_in_mean']} | {ious}")
            if self.writer:
                self.write_eval_to_tensorboard(which, result, scores[which])
        self.model.train()
        self.history.append({"epoch": epoch + 1, **scores})
        improved = {w: self.best[w]["miou"] is None or scores[w] >= self.best[w]["miou"] for w in scores}
        for which, better in improved.items():
            # Ties go to the later epoch, as in the reference (is_best = mIoU >= previous_best).
            if better:
                self.best[which] = {"miou": scores[which], "epoch": epoch + 1}
        if self.writer:
            for which in scores:
                self.writer.add_scalar(f"val/best_{which}_miou", self.best[which]["miou"], self.iteration)
        key = cfg.train.best_by
        if improved[key]:
            self.save("best.pth", epoch + 1)
            self.log.info(f"new best {key} mIoU {scores[key]:.2f}: saved {cfg.run_dir / 'best.pth'}")
        self.log.info(self.describe_best())

    def write_eval_to_tensorboard(self, which: str, result: dict[str, Any], miou: float) -> None:
        names, palette = DATASETS[self.cfg.dataset.name].class_names, DATASETS[self.cfg.dataset.name].palette
        assert self.writer is not None
        self.writer.add_scalar(f"val/{which}_miou", miou, self.iteration)
        for n, v in zip(names, result["iou"]):
            if v is not None:
                self.writer.add_scalar(f"val_iou_{which}/{n}", v, self.iteration)
        for i, s in enumerate(result["samples"]):
            panel = sample_panel(s["img"], s["mask"], s["pred"], palette)
            self.writer.add_image(f"val_{which}/{i}_{s['name']}", panel, self.iteration, dataformats="HWC")


def refuse_foreign_files(run_dir: Path, cfg: Config) -> None:
    """A run never overwrites checkpoints it did not write itself.

    Without latest.pth to resume from, a best.pth may only be this very run's (same resolved config), killed
    between its first best.pth and its first latest.pth: starting again rewrites the same file.
    """
    latest, best = run_dir / "latest.pth", run_dir / "best.pth"
    for path in (latest, best):
        if path.exists() and not path.is_file():
            raise WeightsError(f"{path} is not a file; move it away or use another save_path (or --save-path)")
    if latest.exists() or not best.exists():
        return
    try:
        saved = load_own_checkpoint(best).get("config")
        same_run = isinstance(saved, dict) and not config_differences(saved, cfg.to_dict())
    except WeightsError:
        same_run = False
    if not same_run:
        raise WeightsError(f"{run_dir} holds a best.pth of another run and no latest.pth to resume from: a new run "
                           f"would overwrite it; move best.pth away, or use another save_path (or --save-path)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_args(parser)
    parser.add_argument("--split", help="labelled percent (dataset.split): 1, 5, 10 (DeepGlobe also 100)")
    parser.add_argument("--save-path", help="output folder of the run (save_path)")
    parser.add_argument("--resume-changed", action="store_true",
                        help="resume latest.pth although settings other than the model changed (they are logged)")
    return parser.parse_intermixed_args(argv)


@contextlib.contextmanager
def sigterm_calls(handler: Callable[..., Any]) -> Iterator[None]:
    """SIGTERM calls `handler` inside the block; the handler before it is back afterwards, also after an error
    (main may be called in a process that goes on: a test, a notebook)."""
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        # None: the previous handler was not installed from Python and cannot be put back; the default is.
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    extra = [f"dataset.split={args.split}"] * (args.split is not None)
    extra += [f"save_path={args.save_path}"] * (args.save_path is not None)
    cfg = config_from_args(args, extra)
    run_dir = check_output_folder(cfg.run_dir, "save_path")
    latest = run_dir / "latest.pth"
    refuse_foreign_files(run_dir, cfg)
    info = init_distributed()
    lock, opened = None, False
    try:
        # Everything that reads user files comes first: a bad input leaves no run folder behind.
        trainer = Trainer(cfg, info)
        trainer.resume_changed = args.resume_changed
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock = RunLock(run_dir)
            # Temporary files of saves that a kill interrupted (each writer names its own).
            for stale in filter(is_temporary, run_dir.iterdir()):
                stale.unlink()
        # A checkpoint of another run is refused before config.yaml or logs of this one are written.
        resumed = latest.is_file()
        if resumed:
            trainer.resume(latest)
        trainer.open_run_dir()
        opened = True
        if resumed:
            trainer.log.info(f"resumed from {latest} at iteration {trainer.iteration}")
            for key, (before, now) in trainer.changed_on_resume.items():
                trainer.log.info(f"--resume-changed: {key} was {before}, is now {now}")
        trainer.log.info(f"{cfg.train.method} on {cfg.dataset.name} split {cfg.dataset.split}: "
                         f"{trainer.iters_per_epoch} iterations/epoch x {cfg.train.epochs} epochs, "
                         f"{info.world_size} process(es) on {info.device}, precision "
                         f"{trainer.amp_dtype or torch.float32}; writing to {run_dir}")
        with sigterm_calls(trainer.request_stop):
            trainer.run()
            if trainer.writer:
                trainer.writer.close()
            if trainer.flag_group is not None:
                # Every process reaches the end before any tears the groups down: a gloo peer that closes its
                # connections while another still uses them can abort that one at exit.
                dist.barrier(group=trainer.flag_group)
    finally:
        if lock is not None:
            # A run refused before it wrote anything leaves the folder as it found it.
            lock.release(remove=not opened)
        cleanup()
    return 0


if __name__ == "__main__":
    run_main(main)
