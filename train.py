"""Train a segmenter semi-supervised: supervised, FixMatch, UniMatch V2 or RS-MTDF, one loop for all.

    python train.py --config configs/loveda.yaml [--split 1|5|10] [--save-path DIR] [--resume-changed] [key=value ...]
    sh scripts/train.sh 4 29500 ...          # 4 processes (torchrun's launcher); on SLURM: scripts/slurm_train.sh
    python train.py --config ... --get KEY   # what a run would use (a dotted key, run_dir or all), without training

The loop below reads top to bottom: build, resume, then for each step (step, log, evaluate, save), finish. One
optimizer step is methods/step.py's train_step, the same for every method and tool; what a run folder holds, and
saving and resuming it, is util/run.py's.

SIGTERM (a scheduler's stop, requeue or preemption), SIGUSR1 (SLURM's warning before the time limit) and Ctrl-C
stop the run at the end of the current step, or of the current evaluation, on every process at the same step:
latest.pth is saved, and the same command resumes exactly. After SIGTERM or SIGUSR1 the exit status is 0; after
Ctrl-C it is 130 (a second Ctrl-C, a second or more later, stops at once without saving; nothing is half-written).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from dataset.loaders import TrainData, build_train_data
from eval.evaluate import build_eval_loader, evaluate
from eval.visualize import sample_panel
from methods import METHODS
from methods.plan import plan_batches
from methods.step import train_step
from model.segmenter import Segmenter, build_segmenter
from model.teachers import build_teachers
from model.weights import check_weight_files
from util.catalog import DATASETS
from util.cli import add_config_args, config_from_args, print_config_value, run_main
from util.config import Config, describe_differences
from util.dist import DistInfo, StopAgreement, barrier, cleanup, init_distributed, is_distributed, mean_over_processes
from util.ema import make_ema
from util.errors import ConfigError, UserError
from util.flops import device_peak_tflops, flop_counter, model_flops_utilisation
from util.logging import setup_logger
from util.precision import autocast_dtype, gpu_paths
from util.run import Progress, RunFolder, TrainState, resume_training, save_checkpoint


class NonFiniteLoss(UserError):
    """A loss term became NaN or inf."""


class Interrupted(Exception):
    """Ctrl-C stopped the run after saving latest.pth (exit status 130)."""


# ----------------------------------------------------------------------------------------------------------
# Build


class TrainForward(nn.Module):
    """Calls the segmenter's training forward through __call__, so DDP sees and synchronises it."""

    def __init__(self, segmenter: Segmenter) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, img: torch.Tensor, feature_mask: torch.Tensor | None = None) -> Any:
        return self.segmenter.forward_train(img, feature_mask)


def build_optimizer(model: Segmenter, cfg: Config) -> torch.optim.AdamW:
    """AdamW over trainable parameters only: the encoder at train.lr, everything else at train.lr x train.lr_multi
    (each group's base lr, which the poly schedule scales)."""
    lr = cfg.train.lr
    groups = [{"params": list(model.encoder_parameters()), "lr": lr, "initial_lr": lr},
              {"params": list(model.head_parameters()), "lr": lr * cfg.train.lr_multi,
               "initial_lr": lr * cfg.train.lr_multi}]
    # Fused AdamW on GPUs: one kernel for every parameter instead of several per tensor.
    fused = gpu_paths(next(model.parameters()).device, cfg.train.cpu_autocast)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=cfg.train.betas,
                             weight_decay=cfg.train.weight_decay, fused=fused)


def build_state(cfg: Config, device: torch.device, total_iters: int) -> TrainState:
    """The student, its EMA, AdamW, the grad scaler and the frozen teachers of `cfg` on `device`, wrapped by DDP
    where a process group runs (and by torch.compile where train.compile asks). The random initial weights are
    those of train.seed."""
    torch.manual_seed(cfg.train.seed)
    model = build_segmenter(cfg).to(device)
    # Only a method that distils gets teachers (cfg.distill_teachers is empty otherwise).
    teachers = build_teachers(cfg, device)
    if cfg.train.channels_last and gpu_paths(device, cfg.train.cpu_autocast):
        model.to(memory_format=torch.channels_last)
    ema = make_ema(model)
    optimizer = build_optimizer(model, cfg)
    amp_dtype = autocast_dtype(cfg.train.precision, device, allow_cpu=cfg.train.cpu_autocast)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    forward: nn.Module = TrainForward(model)
    ddp = None
    if is_distributed() and device.type != "meta":
        ddp = forward = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None)
    return TrainState(model, ema, optimizer, scaler, teachers, torch.compile(forward) if cfg.train.compile else forward,
                      ddp, amp_dtype, total_iters)


# ----------------------------------------------------------------------------------------------------------
# Stopping


class StopSignals:
    """SIGTERM, SIGUSR1 and SIGINT (Ctrl-C) ask for a clean stop; the handlers before them are back afterwards.

    A launcher may pass one Ctrl-C on while the terminal delivers it too: signals within a second of the first
    count once. A second Ctrl-C after that interrupts at once (KeyboardInterrupt).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self.at = 0.0

    def handle(self, signum: int, _: Any) -> None:
        now = time.monotonic()
        if signum == signal.SIGINT and self.received == signal.SIGINT and now - self.at > 1.0:
            raise KeyboardInterrupt
        if self.received is None or (signum == signal.SIGINT and now - self.at > 1.0):
            self.received, self.at = signum, now

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str:
        """The signal that asked for the stop (SIGTERM where another process's did: the stop was agreed)."""
        return signal.Signals(self.received or signal.SIGTERM).name

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        previous = {sig: signal.signal(sig, self.handle) for sig in self.SIGNALS}
        try:
            yield self
        finally:
            # None: the previous handler was not installed from Python and cannot be put back; the default is.
            for sig, handler in previous.items():
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)


class FiniteWatch:
    """Per-step non-finite flags of each loss term, checked (one host sync) at log and save points."""

    def __init__(self) -> None:
        self.flags: list[torch.Tensor] = []
        self.names: list[str] = []

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        if "loss" in losses:  # a step skipped by train.skip_nonfinite has none
            self.names = list(losses)
            self.flags.append(torch.stack([v.float() for v in losses.values()]).isfinite().logical_not())

    def check(self, iteration: int, run: RunFolder) -> None:
        """Stop before anything is saved if a loss since the last check was NaN or inf."""
        if not self.flags:
            return
        flags, self.flags = torch.stack(self.flags).cpu(), []
        if flags.any():
            row = int(flags.any(dim=1).nonzero()[0, 0])
            terms = [name for name, bad in zip(self.names, flags[row].tolist()) if bad and name != "loss"]
            last_good = (f"{run.latest} is the last good checkpoint" if run.latest.is_file()
                         else "no checkpoint was written yet")
            raise NonFiniteLoss(f"loss is not finite at iteration {iteration - len(flags) + row} "
                                f"({', '.join(terms) or 'loss'}); stopped without saving, {last_good} "
                                f"(train.skip_nonfinite: true skips such steps instead)")


# ----------------------------------------------------------------------------------------------------------
# What users watch


class Meter:
    """Loss sums since the last log point and the time they took; the log line, TensorBoard and the bar."""

    def __init__(self, state: TrainState, data: TrainData, info: DistInfo, writer: SummaryWriter | None,
                 log: logging.Logger, compiled: bool = False) -> None:
        self.state, self.data, self.writer, self.log = state, data, writer, log
        self.device = info.device
        self.sums: dict[str, torch.Tensor] = {}
        self.tick, self.ticked_at = time.perf_counter(), state.iteration
        # MFU in the log: the FLOPs of this process's first step are counted where the GPU's peak is known.
        self.peak_tflops = None if compiled else device_peak_tflops(info.device)
        self.flops_per_step: int | None = None

    def counting_flops(self) -> contextlib.AbstractContextManager:
        """Around a step: count its FLOPs once, where MFU can be logged."""
        return flop_counter() if self.peak_tflops is not None and self.flops_per_step is None \
            else contextlib.nullcontext()

    def new_epoch(self) -> None:
        """Start the sums and the clock again: the first log line of an epoch holds its own steps only, and no
        evaluation time counts as training time."""
        self.sums, self.tick, self.ticked_at = {}, time.perf_counter(), self.state.iteration

    def add(self, losses: dict[str, torch.Tensor], counter: Any = None) -> None:
        if counter is not None:
            self.flops_per_step = counter.get_total_flops()
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0) + v

    def write(self, bar: tqdm) -> None:
        """Loss means over the steps since the last call and over all processes, lr, throughput, MFU, memory."""
        state = self.state
        steps = max(state.iteration - self.ticked_at, 1)
        now = time.perf_counter()
        seconds_per_step = max(now - self.tick, 1e-9) / steps
        # Every process logs the mean of all: a 1- and a 2-process run of one global batch log the same curves.
        means = mean_over_processes({f"train/{k}": float(v) / steps for k, v in self.sums.items()})
        scalars = {**means, "train/lr": state.optimizer.param_groups[0]["lr"],
                   "train/images_per_s": self.data.plan.global_batch * len(self.data.loaders) / seconds_per_step}
        if self.flops_per_step is not None:
            mfu = model_flops_utilisation(self.flops_per_step, seconds_per_step, self.peak_tflops)
            if mfu is not None:
                scalars["train/mfu"] = mfu
        if self.device.type == "cuda":
            scalars["train/gpu_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if self.writer:
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, state.iteration)
        bar.set_postfix({k.split("/")[1]: f"{v:.3g}" for k, v in scalars.items()}, refresh=False)
        logging.getLogger(f"{self.log.name}.metrics").info(
            f"iteration {state.iteration}/{state.total_iters}: "
            + ", ".join(f"{k.split('/')[1]} {v:.4g}" for k, v in scalars.items()))
        self.sums, self.tick, self.ticked_at = {}, now, state.iteration


def validate(state: TrainState, cfg: Config, val_loader: Any, info: DistInfo, progress: Progress, epoch: int,
             writer: SummaryWriter | None, log: logging.Logger) -> bool:
    """Score student and EMA on val.txt after `epoch` (1-based); True where best.pth must now hold these weights."""
    names = DATASETS[cfg.dataset.name].class_names
    scores: dict[str, float] = {}
    # The authors choose best.pth on the val mIoU over every class (train.best_on: all_classes).
    excluded = () if cfg.train.best_on == "all_classes" else None
    for which, model in (("student", state.model), ("ema", state.ema)):
        result = evaluate(model, val_loader, cfg, info.device, info, max_visualize=cfg.eval.num_visualize,
                          excluded=excluded)
        scores[which] = result["miou"] or 0.0
        ious = ", ".join(f"{n} {'-' if v is None else f'{v:.1f}'}" for n, v in zip(names, result["iou"]))
        log.info(f"epoch {epoch} {which}: mIoU {scores[which]:.2f} over classes {result['classes_in_mean']} | {ious}")
        if writer:
            write_evaluation(writer, cfg, which, result, scores[which], state.iteration)
    state.model.train()
    better = progress.record(epoch, state.iteration, scores)
    if writer:
        for which, best in progress.best.items():
            writer.add_scalar(f"val/best_{which}_miou", best["miou"], state.iteration)
    return better


def write_evaluation(writer: SummaryWriter, cfg: Config, which: str, result: dict[str, Any], miou: float,
                     iteration: int) -> None:
    info = DATASETS[cfg.dataset.name]
    writer.add_scalar(f"val/{which}_miou", miou, iteration)
    for n, v in zip(info.class_names, result["iou"]):
        if v is not None:
            writer.add_scalar(f"val_iou_{which}/{n}", v, iteration)
    for i, s in enumerate(result["samples"]):
        writer.add_image(f"val_{which}/{i}_{s['name']}", sample_panel(s["img"], s["mask"], s["pred"], info.palette),
                         iteration, dataformats="HWC")


# ----------------------------------------------------------------------------------------------------------
# The loop


def train(cfg: Config, info: DistInfo, run: RunFolder, resume_changed: bool = False) -> bool:
    """Build, resume, train to the last epoch (evaluating and saving), finish. False where a signal stopped it
    (latest.pth saved); raises Interrupted after a Ctrl-C stop."""
    # Build: everything that reads user files comes first, so that a bad input leaves no run folder behind.
    method = METHODS[cfg.train.method]
    plan = plan_batches(method, cfg, info.world_size)
    check_weight_files(cfg.weight_files)
    data = build_train_data(cfg, method, plan, info)
    state = build_state(cfg, info.device, cfg.train.epochs * data.steps_per_epoch)
    val_loader = build_eval_loader(data.val, cfg, info)
    progress = Progress(cfg.train.best_by, cfg.train.best_on)
    if info.is_main:
        run.open()

    # Resume: a checkpoint of another run is refused before config.yaml or logs of this one are written.
    wall_before, started = 0.0, time.perf_counter()
    changed = None
    if run.latest.is_file():
        changed, wall_before = resume_training(run.latest, state, cfg, data.steps_per_epoch, progress,
                                               data.split_lists, resume_changed)
        if changed and state.iteration >= state.total_iters:
            # config.yaml describes the weights beside it: settings no step would train under are not written.
            raise ConfigError(f"{run.latest} has made {state.iteration} steps, all that train.epochs="
                              f"{cfg.train.epochs} makes: the changed settings ({describe_differences(changed)}) "
                              f"would train nothing; raise train.epochs, or use another save_path")
        progress.record_changes(state.iteration, changed)
    writer = None
    if info.is_main:
        run.write_config(cfg, "\n".join(filter(None, [f"trained with {plan.describe()}",
                                                       progress.describe_changes()])))
        writer = SummaryWriter(str(run.path / "tb"))
    log = setup_logger(run.path, info.is_main)
    if changed is not None:
        log.info(f"resumed from {run.latest} at iteration {state.iteration}")
        for key, (before, now) in changed.items():
            log.info(f"--resume-changed: {key} was {before}, is now {now}")
    log.info(f"{cfg.train.method} on {cfg.dataset.name} split {cfg.dataset.split}: {data.steps_per_epoch} "
             f"steps/epoch x {cfg.train.epochs} epochs, {plan.describe()}, on {info.device}, precision "
             f"{state.amp_dtype or torch.float32}; writing to {run.path}")

    def save(which: str, epoch: int) -> None:
        watch.check(state.iteration, run)
        if info.is_main:
            wall = wall_before + time.perf_counter() - started
            save_checkpoint(getattr(run, which), state, epoch, data.steps_per_epoch, progress, wall, cfg,
                            data.split_lists)

    def write_progress(epoch: int, stopped_by: str | None = None) -> None:
        if info.is_main:
            run.write_progress({
                "dataset": cfg.dataset.name, "method": cfg.train.method, "split": cfg.dataset.split,
                "seed": cfg.train.seed, "epoch": epoch, "epochs": cfg.train.epochs, "iteration": state.iteration,
                "total_iters": state.total_iters, "finished": state.iteration >= state.total_iters,
                "wall_seconds": round(wall_before + time.perf_counter() - started, 1), "unit": "percent",
                "batch": plan.describe(), "split_lists": data.split_lists, **progress.state(),
                **({"stopped_by": stopped_by} if stopped_by else {})})

    watch, agreement = FiniteWatch(), StopAgreement()
    meter = Meter(state, data, info, writer, log, cfg.train.compile)
    signals = StopSignals()
    try:
        with signals.installed():
            for epoch in range(state.iteration // data.steps_per_epoch, cfg.train.epochs):
                # Step.
                start = state.iteration - epoch * data.steps_per_epoch
                state.model.train()
                meter.new_epoch()
                with tqdm(total=data.steps_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                          disable=not info.is_main, dynamic_ncols=True) as bar:
                    for micro in data.steps(epoch, start, info.device):
                        with meter.counting_flops() as counter:
                            losses = train_step(state, cfg, micro, info.rank)
                        meter.add(losses, counter)
                        watch.add(losses)
                        bar.update(1)
                        # Log.
                        if state.iteration % cfg.train.log_interval == 0:
                            watch.check(state.iteration, run)
                            meter.write(bar)
                        last_of_epoch = state.iteration % data.steps_per_epoch == 0
                        if cfg.train.checkpoint_interval and state.iteration % cfg.train.checkpoint_interval == 0 \
                                and not last_of_epoch:
                            save("latest", epoch)
                        # A stop agreed at the epoch's last step waits for its evaluation below.
                        if agreement.poll(signals.requested) and not last_of_epoch:
                            bar.close()
                            save("latest", epoch)
                            write_progress(epoch, signals.name)
                            return stopped(signals, state, run, log)
                watch.check(state.iteration, run)
                # Evaluate.
                if (epoch + 1) % cfg.train.eval_interval == 0 or epoch + 1 == cfg.train.epochs:
                    if validate(state, cfg, val_loader, info, progress, epoch + 1, writer, log):
                        save("best", epoch + 1)
                        log.info(f"new best {cfg.train.best_by} mIoU {progress.best[cfg.train.best_by]['miou']:.2f}: "
                                 f"saved {run.best}")
                    log.info(progress.describe_best())
                # Save.
                save("latest", epoch + 1)
                stop = agreement.poll(signals.requested) and epoch + 1 < cfg.train.epochs
                write_progress(epoch + 1, signals.name if stop else None)
                if stop:
                    return stopped(signals, state, run, log)
    finally:
        agreement.close()
        if writer:
            writer.close()
    # Finish.
    log.info(f"finished: {progress.describe_best()}; best.pth holds the best {cfg.train.best_by} (train.best_by); "
             f"checkpoints in {run.path}")
    return True


def stopped(signals: StopSignals, state: TrainState, run: RunFolder, log: logging.Logger) -> bool:
    """Say why the run stopped and how to go on; Ctrl-C ends as Interrupted (status 130), the others with 0."""
    log.info(f"stopped by {signals.name} at iteration {state.iteration}; saved {run.latest}. Run the same command to "
             f"resume.")
    if signals.received == signal.SIGINT:
        raise Interrupted
    return False


# ----------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    add_config_args(parser)
    parser.add_argument("--split", help="labelled percent (dataset.split): 1, 5, 10 (DeepGlobe also 100)")
    parser.add_argument("--save-path", help="output folder of the run (save_path)")
    parser.add_argument("--resume-changed", action="store_true",
                        help="resume latest.pth although settings other than the model changed (they are logged)")
    parser.add_argument("--relative-to", metavar="DIR", help="take relative paths in --config and in overrides from "
                        "DIR instead of the current folder (scripts/train.sh passes the folder it was started from)")
    parser.add_argument("--get", metavar="KEY", help="print what the run would use and exit without training: a "
                        "dotted key, run_dir (the run folder), or 'all' (the whole resolved config as YAML)")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_from_args(args, {"dataset.split": args.split, "save_path": args.save_path}, args.relative_to)
    if args.get is not None:
        print_config_value(cfg, args.get)
        return 0
    run = RunFolder(cfg.run_dir)
    run.check(cfg)
    info = init_distributed()
    try:
        try:
            train(cfg, info, run, args.resume_changed)
            code = 0
        except Interrupted:
            code = 130
        # No process leaves before rank 0 has written its last checkpoint (after a stop too).
        barrier()
        return code
    finally:
        if info.is_main:
            run.close()  # a folder this run made and left empty (refused before writing) goes too
        cleanup()


if __name__ == "__main__":
    run_main(main)
