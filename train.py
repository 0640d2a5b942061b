"""Train a segmenter semi-supervised: supervised, FixMatch, UniMatch V2 or RS-MTDF, one loop for all.

    python train.py --config configs/loveda.yaml [--split 1|5|10] [--save-path DIR] [key.sub=value ...]
    torchrun --nproc_per_node 4 train.py --config ...        # or: sh scripts/train.sh 4 29500

A run writes into its save path (util/run.py lists what): config.yaml, progress.json, train.log, tb/
(TensorBoard), latest.pth (every epoch, and every train.checkpoint_interval iterations) and best.pth. Started
again with the same save path, it resumes from latest.pth where it stopped. SIGTERM saves latest.pth and ends
the run with status 0 (at the next iteration; with several processes, at the next log point, where they all
agree to stop at the same iteration).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from dataset.sampler import SeededSampler
from dataset.semi import SemiDataset, check_disjoint
from dataset.splits import PER_PERCENT, SHARED, read_list, split_file, training_list_digests
from eval.evaluate import build_eval_loader, evaluate
from eval.visualize import sample_panel
from methods import METHODS, Method
from methods.common import StepContext, StepSettings
from model.segmenter import Segmenter, build_segmenter
from model.teachers import build_teachers
from model.weights import check_weight_files
from util.catalog import DATASETS
from util.checkpoint import atomic_save, load_own_checkpoint
from util.cli import add_config_args, config_from_args, run_main
from util.config import Config
from util.dist import (
    DistInfo,
    all_reduce_max,
    barrier,
    cleanup,
    init_distributed,
    is_distributed,
    worker_init,
)
from util.ema import ema_update, make_ema
from util.errors import ConfigError, DataError, UserError, WeightsError
from util.flops import device_peak_tflops, flop_counter, model_flops_utilisation
from util.logging import code_version, setup_logger
from util.precision import autocast_dtype
from util.run import Progress, RunFolder, resume_differences
from util.schedule import ema_ratio, poly_lr, set_lr


class NonFiniteLoss(UserError):
    """A loss term became NaN or inf."""


class TrainForward(nn.Module):
    """Calls the segmenter's training forward through __call__, so DDP sees and synchronises it."""

    def __init__(self, segmenter: Segmenter) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, img: torch.Tensor, feature_mask: torch.Tensor | None = None) -> Any:
        return self.segmenter.forward_train(img, feature_mask)


def gpu_like(cfg: Config, device: torch.device) -> bool:
    """Whether to take the GPU's code paths: on a GPU, or on a CPU that exercises them (train.cpu_autocast)."""
    return device.type == "cuda" or cfg.train.cpu_autocast


def build_optimizer(model: Segmenter, cfg: Config) -> torch.optim.AdamW:
    """AdamW over trainable parameters only: the encoder at lr, everything else at lr * lr_multi."""
    groups = [{"params": list(model.encoder_parameters()), "lr_scale": 1.0},
              {"params": list(model.head_parameters()), "lr_scale": cfg.train.lr_multi}]
    groups = [g for g in groups if g["params"]]
    t = cfg.train
    # Fused AdamW on GPUs: one kernel for every parameter instead of several per tensor.
    fused = gpu_like(cfg, next(model.parameters()).device)
    return torch.optim.AdamW(groups, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay, fused=fused)


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


@dataclass(frozen=True)
class BatchPlan:
    """How an optimizer step's global batch is made: processes x crops per forward x forwards accumulated."""

    processes: int
    micro_batch: int
    accumulation: int
    # What the config asks for (train.global_batch, doubled for the reference supervised protocol); None: no target.
    wanted: int | None

    @property
    def global_batch(self) -> int:
        return self.processes * self.micro_batch * self.accumulation

    def describe(self) -> str:
        """'global batch 32 = 1 process(es) x 8 crops x 4 accumulated', and why where it is not the config's."""
        text = (f"global batch {self.global_batch} = {self.processes} process(es) x {self.micro_batch} crops x "
                f"{self.accumulation} accumulated")
        if self.wanted is not None and self.global_batch != self.wanted:
            text += (f", NOT train.global_batch {self.wanted}: {self.wanted} crops do not split over "
                     f"{self.processes} processes")
        return text


def plan_batches(wanted: int | None, limit: int, processes: int) -> BatchPlan:
    """Reach `wanted` crops a step with at most `limit` per forward: the fewest forwards whose equal share fits.

    Where `wanted` does not split evenly over the processes it cannot be reached exactly: the nearest global
    batch of equal forwards is taken (forwards of `limit` crops, or fewer crops where even one forward of
    `limit` on every process is too many), and BatchPlan.describe says so.
    """
    if wanted is None:
        return BatchPlan(processes, limit, 1, None)
    if wanted % processes and processes * limit > wanted:
        return BatchPlan(processes, max(1, round(wanted / processes)), 1, wanted)
    if wanted % processes:
        return BatchPlan(processes, limit, max(1, round(wanted / (processes * limit))), wanted)
    share = wanted // processes
    accumulation = next(k for k in range(1, share + 1) if share % k == 0 and share // k <= limit)
    return BatchPlan(processes, share // accumulation, accumulation, wanted)


def split_path(cfg: Config, kind: str) -> str:
    """The run's list of `kind` (labeled, unlabeled, val, test) under dataset.splits."""
    return str(split_file(cfg.dataset.splits, kind, cfg.dataset.split))


def count_lines(path: str, cfg: Config) -> int:
    if not Path(path).is_file():
        raise DataError(f"split file not found: {path} (dataset.splits={cfg.dataset.splits}, "
                        f"dataset.split={cfg.dataset.split}); run python -m dataset.prepare first")
    return sum(1 for line in read_list(path) if line.strip())


def train_loader(dataset: SemiDataset, length: int, plan: BatchPlan, seed: int, cfg: Config,
                 info: DistInfo) -> DataLoader:
    """A loader of micro-batches that draws `length` items per epoch (repeating a short list), sharded over
    processes and the forwards each accumulates (SeededSampler's virtual ranks)."""
    sampler = SeededSampler(len(dataset), length, seed, info.rank, info.world_size, batch_size=plan.micro_batch,
                            accumulation=plan.accumulation)
    workers = cfg.train.num_workers
    return DataLoader(dataset, batch_size=plan.micro_batch, sampler=sampler, num_workers=workers, drop_last=True,
                      pin_memory=info.device.type == "cuda", persistent_workers=workers > 0,
                      worker_init_fn=worker_init())


class Trainer:
    """One training run: model, EMA, teachers, optimizer and data, and the loop that trains them.

    Without data (`with_data=False`) it is a single process that trains on the batches it is given (the
    tools and tests do: scripts/costs.py, scripts/benchmark.py); an "epoch" is then one iteration.
    """

    def __init__(self, cfg: Config, info: DistInfo, with_data: bool = True, run: RunFolder | None = None) -> None:
        self.cfg, self.info, self.device, self.run_folder = cfg, info, info.device, run
        self.method: Method = METHODS[cfg.train.method]
        # The numbers the method's step computes with (threshold, loss and distillation weights, dropout).
        self.step_settings = StepSettings.from_config(cfg)
        # Every missing weight file in one message, before any data is read or worker started.
        check_weight_files(cfg.weight_files)
        # The authors' supervised.py doubles the batch and draws a fixed number of labelled samples per epoch.
        self.reference_supervised = not self.method.unlabeled and cfg.train.supervised_protocol == "reference"
        double = 2 if self.reference_supervised else 1
        wanted = cfg.train.global_batch * double if cfg.train.global_batch is not None else None
        self.plan = plan_batches(wanted, cfg.train.batch_size * double, info.world_size)
        torch.manual_seed(cfg.train.seed)
        # {kind: SHA-256} of the lists it trains and validates on (none without data): kept in every checkpoint.
        self.split_lists: dict[str, str] = {}
        self.loaders = self._build_data() if with_data else ()
        # Counted in optimizer steps: each takes `accumulation` micro-batches from every loader.
        self.iters_per_epoch = len(self.loaders[0]) // self.plan.accumulation if with_data else 1
        if self.iters_per_epoch == 0:
            raise ConfigError(f"train.global_batch: {self.plan.global_batch} crops a step are more than the "
                              f"{self.epoch_length} items of one epoch")
        self.total_iters = cfg.train.epochs * self.iters_per_epoch

        self.model = build_segmenter(cfg).to(self.device)
        # Only a method that distils gets teachers (cfg.distill_teachers is empty otherwise).
        self.teachers = build_teachers(cfg, self.device)
        if cfg.train.channels_last and gpu_like(cfg, self.device):
            self.model.to(memory_format=torch.channels_last)
        self.ema = make_ema(self.model)
        self.optimizer = build_optimizer(self.model, cfg)
        self.amp_dtype = autocast_dtype(cfg.train.precision, self.device, allow_cpu=cfg.train.cpu_autocast)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        forward: nn.Module = TrainForward(self.model)
        self.ddp: DistributedDataParallel | None = None
        if is_distributed() and self.device.type != "meta":
            self.ddp = forward = DistributedDataParallel(
                forward, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.forward = torch.compile(forward) if cfg.train.compile else forward

        self.iteration = 0
        self.progress = Progress(cfg.train.best_by, cfg.train.best_on)
        # Training wall time of earlier processes of this run (restored on resume) and this one's start.
        self.wall_before, self.started = 0.0, time.perf_counter()
        self.skipped_steps = 0
        self.stop_requested = False
        # Per-step non-finite flags of each loss term, checked (one host sync) at log and save points.
        self.nonfinite: list[torch.Tensor] = []
        self.loss_names: list[str] = []
        # MFU in the log: the FLOPs of this process's first step are counted where the GPU's peak is known.
        self.peak_tflops = device_peak_tflops(self.device) if with_data and not cfg.train.compile else None
        self.flops_per_step: int | None = None
        self.log = setup_logger(None, info.is_main)
        self.writer: SummaryWriter | None = None

    # ------------------------------------------------------------------------------------------------
    # Build

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
            # The authors' SemiDataset repeats the labelled list to that many samples where it is shorter.
            self.epoch_length = max(len(labeled), cfg.train.supervised_epoch_samples)
        if cfg.train.epoch_samples is not None:
            self.epoch_length = cfg.train.epoch_samples
        loaders = [train_loader(labeled, self.epoch_length, self.plan, cfg.train.seed, cfg, info)]
        if self.method.unlabeled:
            unlabeled = SemiDataset(cfg, "train_u", unlabeled_file, n_strong=self.method.n_strong)
            loaders.append(train_loader(unlabeled, self.epoch_length, self.plan, cfg.train.seed + 1, cfg, info))
        val = SemiDataset(cfg, "val", split_path(cfg, "val"))
        # Training on a val or test tile, or one tile both labelled and unlabelled, is a list mistake.
        check_disjoint([split_path(cfg, kind) for kind in (*PER_PERCENT, *SHARED)], cfg.dataset.root)
        self.split_lists = training_list_digests(cfg.dataset.splits, cfg.dataset.split)
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
    # Checkpoints and resume

    def state(self, epoch: int) -> dict[str, Any]:
        """Everything needed to continue exactly: no teacher weights (they are rebuilt from pretrained/)."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"model": self.model.state_dict(), "model_ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": epoch, "iteration": self.iteration, "iters_per_epoch": self.iters_per_epoch,
                **self.progress.state(), "wall_seconds": self.wall_seconds(), "skipped_steps": self.skipped_steps,
                "rng": rng, "config": self.cfg.to_dict(), "split_lists": self.split_lists, "version": code_version()}

    def resume(self, path: Any, allow_changed: bool = False) -> dict[str, tuple]:
        """Continue from checkpoint `path`; returns the settings that changed since (see resume_differences)."""
        ckpt = load_own_checkpoint(path)
        if not {"config", "iteration", "optimizer", "run_id"} <= set(ckpt):
            raise WeightsError(f"{path} is not a checkpoint of this trainer (no training state: the authors' "
                               f"release?); evaluate it with eval/eval.py, and use another save_path for a new run")
        changed = resume_differences(ckpt["config"], self.cfg, path, allow_changed, ckpt.get("split_lists"),
                                     self.split_lists)
        if ckpt["iters_per_epoch"] != self.iters_per_epoch:
            raise WeightsError(f"{path} was written with {ckpt['iters_per_epoch']} iterations per epoch, this "
                               f"run has {self.iters_per_epoch} (batch size, split or process count changed)")
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["model_ema"])
        # load_state_dict restores every group setting, `fused` too: keep this run's choice.
        fused, saved = self.optimizer.param_groups[0]["fused"], ckpt["optimizer"]
        groups = [{**g, "fused": fused} for g in saved["param_groups"]]
        self.optimizer.load_state_dict({**saved, "param_groups": groups})
        match_parameter_layout(self.optimizer)
        self.scaler.load_state_dict(ckpt["scaler"])
        self.iteration = ckpt["iteration"]
        self.progress.load_state(ckpt)
        self.wall_before = ckpt["wall_seconds"]
        self.skipped_steps = ckpt["skipped_steps"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        if "cuda" in ckpt["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        return changed

    def wall_seconds(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def save(self, which: str, epoch: int) -> None:
        """Write latest.pth or best.pth (rank 0), after checking that no loss went non-finite since the last save."""
        self.check_finite()
        if self.info.is_main and self.run_folder is not None:
            atomic_save(self.state(epoch), getattr(self.run_folder, which))

    def write_progress(self, epoch: int) -> None:
        """progress.json: where the run stands and its best scores, for people and scripts/report.py (rank 0)."""
        if not self.info.is_main or self.run_folder is None:
            return
        cfg = self.cfg
        self.run_folder.write_progress({
            "dataset": cfg.dataset.name, "method": cfg.train.method, "split": cfg.dataset.split,
            "seed": cfg.train.seed, "epoch": epoch, "epochs": cfg.train.epochs, "iteration": self.iteration,
            "total_iters": self.total_iters, "finished": self.iteration >= self.total_iters,
            "wall_seconds": round(self.wall_seconds(), 1), "unit": "percent", "batch": self.plan.describe(),
            "split_lists": self.split_lists, **self.progress.state()})

    # ------------------------------------------------------------------------------------------------
    # The step

    def step(self, batches: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """One optimizer step at self.iteration on its micro-batches (one per accumulated forward; a dict for
        one); its FLOPs are counted the first time, where MFU is logged."""
        micro = [batches] if isinstance(batches, dict) else list(batches)
        if len(micro) != self.plan.accumulation:
            raise ValueError(f"a step takes {self.plan.accumulation} micro-batches, got {len(micro)}")
        if self.peak_tflops is None or self.flops_per_step is not None:
            return self._step(micro)
        with flop_counter() as counter:
            losses = self._step(micro)
        self.flops_per_step = counter.get_total_flops()
        return losses

    def _step(self, micro: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """lr; forward, losses and backward of each micro-batch, gradients summed; AdamW; EMA."""
        cfg, k = self.cfg, self.plan.accumulation
        set_lr(self.optimizer, poly_lr(cfg.train.lr, self.iteration, self.total_iters, cfg.train.poly_power))
        self.optimizer.zero_grad(set_to_none=True)
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype
                    else contextlib.nullcontext())
        steps: list[dict[str, torch.Tensor]] = []
        for j, batch in enumerate(micro):
            # The draws of a forward depend only on (seed, iteration, virtual rank): resuming needs no generator
            # state, and forward j of a process draws what process rank * k + j would draw without accumulation.
            virtual_rank = self.info.rank * k + j
            generator = torch.Generator().manual_seed(
                (cfg.train.seed * 1_000_003 + self.iteration) * 1_009 + virtual_rank)
            ctx = StepContext(settings=self.step_settings, student=self.forward, ema=self.ema,
                              teachers=self.teachers, generator=generator, embed_dim=self.model.embed_dim)
            # DDP averages gradients over processes at the last forward's backward only.
            sync = contextlib.nullcontext() if self.ddp is None or j == k - 1 else self.ddp.no_sync()
            with sync:
                with autocast:
                    losses = self.method.step(ctx, batch)
                # Each forward's loss is a mean over its own pixels, as on a process of its own: the step's
                # gradient is the mean over forwards, as DDP's is the mean over processes.
                self.scaler.scale(losses["loss"] / k if k > 1 else losses["loss"]).backward()
            steps.append(losses)
        losses = {key: torch.stack([s[key].detach() for s in steps]).mean(0) if k > 1 else steps[0][key].detach()
                  for key in steps[0]}
        if cfg.train.skip_nonfinite and not torch.isfinite(losses["loss"]).item():
            # Opt-in: one host sync per step buys skipping the poisoned update instead of stopping.
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            return {key: torch.zeros_like(v) for key, v in losses.items() if key != "loss"}
        self.scaler.step(self.optimizer)
        self.scaler.update()
        ema_update(self.ema, self.model, ema_ratio(self.iteration, cfg.train.ema_cap))
        self.loss_names = list(losses)
        self.nonfinite.append(torch.stack([v.float() for v in losses.values()]).isfinite().logical_not())
        return losses

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
            latest = self.run_folder.latest if self.run_folder is not None else None
            last_good = (f"{latest} is the last good checkpoint" if latest is not None and latest.is_file()
                         else "no checkpoint was written yet")
            raise NonFiniteLoss(f"loss is not finite at iteration {first + row} ({', '.join(terms) or 'loss'}); "
                                f"stopped without saving, {last_good} (train.skip_nonfinite: true skips such "
                                f"steps instead)")

    # ------------------------------------------------------------------------------------------------
    # The loop

    def request_stop(self, *_: Any) -> None:
        self.stop_requested = True

    def should_stop(self) -> bool:
        """Whether to stop at this iteration because SIGTERM reached a process.

        One process stops at the next iteration. Several must stop at the same one to save one consistent
        state: they agree at log points (every train.log_interval iterations, which every process reaches
        together), so that no step waits on a collective of its own.
        """
        if self.ddp is None:
            return self.stop_requested
        if self.iteration % self.cfg.train.log_interval:
            return False
        flag = torch.tensor([float(self.stop_requested)], device=self.device)
        return bool(all_reduce_max(flag).item())

    def run(self) -> bool:
        """Train to the last epoch, evaluating and saving; False if stopped by SIGTERM (latest.pth saved)."""
        cfg, log = self.cfg, self.log
        for epoch in range(self.iteration // self.iters_per_epoch, cfg.train.epochs):
            if not self.train_epoch(epoch, self.iteration - epoch * self.iters_per_epoch):
                self.write_progress(epoch)
                log.info(f"stopped by SIGTERM at iteration {self.iteration}; saved {cfg.run_dir / 'latest.pth'}. "
                         f"Run the same command to resume.")
                return False
            if (epoch + 1) % cfg.train.eval_interval == 0 or epoch + 1 == cfg.train.epochs:
                self.evaluate(epoch + 1)
            self.save("latest", epoch + 1)
            self.write_progress(epoch + 1)
        log.info(f"finished: {self.progress.describe_best()}; best.pth holds the best {cfg.train.best_by} "
                 f"(train.best_by); checkpoints in {cfg.run_dir}")
        return True

    def train_epoch(self, epoch: int, start: int) -> bool:
        """Train from iteration `start` of `epoch` to its end; False if stopped by SIGTERM."""
        cfg = self.cfg
        for loader in self.loaders:
            sampler = cast(SeededSampler, loader.sampler)
            sampler.set_epoch(epoch)
            sampler.set_start(start * self.plan.micro_batch * self.plan.accumulation)
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        tick, ticked_at = time.perf_counter(), self.iteration
        # A context manager, so that an error mid-epoch closes the bar before its one-line message.
        with tqdm(total=self.iters_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                  disable=not self.info.is_main, dynamic_ncols=True) as bar:
            micro: list[dict[str, torch.Tensor]] = []
            for items in zip(*self.loaders):
                micro.append(self._batch(items))
                if len(micro) < self.plan.accumulation:
                    continue
                losses, micro = self.step(micro), []
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0) + v
                self.iteration += 1
                bar.update(1)
                if self.iteration % cfg.train.log_interval == 0:
                    tick, ticked_at = self.log_interval(sums, tick, ticked_at, bar)
                    sums = {}
                if cfg.train.checkpoint_interval and self.iteration % cfg.train.checkpoint_interval == 0 \
                        and self.iteration % self.iters_per_epoch:
                    self.save("latest", epoch)
                if self.should_stop():
                    bar.close()
                    self.save("latest", epoch)
                    return False
        self.check_finite()
        return True

    def log_interval(self, sums: dict[str, torch.Tensor], tick: float, ticked_at: int, bar: tqdm) -> tuple[float, int]:
        """Loss means, lr, throughput, MFU and memory to the bar and TensorBoard (the only host syncs)."""
        self.check_finite()
        steps = max(self.iteration - ticked_at, 1)
        now = time.perf_counter()
        seconds_per_step = max(now - tick, 1e-9) / steps
        scalars = {f"train/{k}": float(v) / steps for k, v in sums.items()}
        scalars["train/lr"] = self.optimizer.param_groups[0]["lr"]
        scalars["train/images_per_s"] = self.plan.global_batch * len(self.loaders) / seconds_per_step
        if self.flops_per_step is not None:
            mfu = model_flops_utilisation(self.flops_per_step, seconds_per_step, self.peak_tflops)
            if mfu is not None:
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

    def evaluate(self, epoch: int) -> None:
        """Score student and EMA on val.txt after `epoch` (1-based); keep best.pth by train.best_by."""
        cfg, names = self.cfg, DATASETS[self.cfg.dataset.name].class_names
        scores: dict[str, float] = {}
        # The authors choose best.pth on the val mIoU over every class (train.best_on: all_classes).
        excluded = () if cfg.train.best_on == "all_classes" else None
        for which, model in (("student", self.model), ("ema", self.ema)):
            result = evaluate(model, self.val_loader, cfg, self.device, self.info,
                              max_visualize=cfg.eval.num_visualize, excluded=excluded)
            scores[which] = result["miou"] or 0.0
            ious = ", ".join(f"{n} {'-' if v is None else f'{v:.1f}'}" for n, v in zip(names, result["iou"]))
            self.log.info(f"epoch {epoch} {which}: mIoU {scores[which]:.2f} over classes "
                          f"{result['classes_in_mean']} | {ious}")
            self.write_eval_to_tensorboard(which, result, scores[which])
        self.model.train()
        if self.progress.record(epoch, self.iteration, scores):
            self.save("best", epoch)
            self.log.info(f"new best {cfg.train.best_by} mIoU {scores[cfg.train.best_by]:.2f}: saved "
                          f"{cfg.run_dir / 'best.pth'}")
        if self.writer:
            for which, best in self.progress.best.items():
                self.writer.add_scalar(f"val/best_{which}_miou", best["miou"], self.iteration)
        self.log.info(self.progress.describe_best())

    def write_eval_to_tensorboard(self, which: str, result: dict[str, Any], miou: float) -> None:
        if self.writer is None:
            return
        info = DATASETS[self.cfg.dataset.name]
        self.writer.add_scalar(f"val/{which}_miou", miou, self.iteration)
        for n, v in zip(info.class_names, result["iou"]):
            if v is not None:
                self.writer.add_scalar(f"val_iou_{which}/{n}", v, self.iteration)
        for i, s in enumerate(result["samples"]):
            panel = sample_panel(s["img"], s["mask"], s["pred"], info.palette)
            self.writer.add_image(f"val_{which}/{i}_{s['name']}", panel, self.iteration, dataformats="HWC")


# ----------------------------------------------------------------------------------------------------------
# Command line


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
    cfg = config_from_args(args, {"dataset.split": args.split, "save_path": args.save_path})
    run = RunFolder(cfg.run_dir)
    run.check(cfg)
    info = init_distributed()
    opened = False
    try:
        # Everything that reads user files comes first: a bad input leaves no run folder behind.
        trainer = Trainer(cfg, info, run=run)
        if info.is_main:
            run.open()
        # A checkpoint of another run is refused before config.yaml or logs of this one are written.
        changed = trainer.resume(run.latest, args.resume_changed) if run.latest.is_file() else None
        if info.is_main:
            run.write_config(cfg, f"trained with {trainer.plan.describe()}")
            trainer.writer = SummaryWriter(str(run.path / "tb"))
        trainer.log = setup_logger(run.path, info.is_main)
        opened = True
        if changed is not None:
            trainer.log.info(f"resumed from {run.latest} at iteration {trainer.iteration}")
            for key, (before, now) in changed.items():
                trainer.log.info(f"--resume-changed: {key} was {before}, is now {now}")
        trainer.log.info(f"{cfg.train.method} on {cfg.dataset.name} split {cfg.dataset.split}: "
                         f"{trainer.iters_per_epoch} steps/epoch x {cfg.train.epochs} epochs, "
                         f"{trainer.plan.describe()}, on {info.device}, precision "
                         f"{trainer.amp_dtype or torch.float32}; writing to {run.path}")
        with sigterm_calls(trainer.request_stop):
            trainer.run()
        if trainer.writer:
            trainer.writer.close()
        # No process leaves before rank 0 has written its last checkpoint (after SIGTERM too).
        barrier()
    finally:
        if info.is_main:
            run.close(keep=opened)
        cleanup()
    return 0


if __name__ == "__main__":
    run_main(main)
