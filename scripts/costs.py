"""The reference way of computing, and what a training step costs without running it on a GPU.

The authors' release runs the student and the DINO teacher in fp32 with naive (unfused) attention and
sends one window per forward in sliding-window evaluation. `REFERENCE_OVERRIDES` and
`use_unfused_attention` switch our pipeline to that; everything else (model, losses, data) is the same.

Costs without a GPU (scripts/benchmark.py --flops / --memory): the real training state (train.build_state) is
built on the meta device and its tensors turned into fake tensors (shapes, dtypes and strides, no data), so a
real-size step runs on any machine in seconds. `step_flops` counts its matmul/conv/attention FLOPs per component with
`torch.utils.flop_counter.FlopCounterMode`; `step_memory` follows every tensor storage that is alive during
the step (`LiveTensorBytes`) and reports the peak, i.e. what `torch.cuda.max_memory_allocated` would show.
Both run GPU-like (train.cpu_autocast): the autocast dtype a GPU would use (`train.precision: auto` -> bf16),
the teachers in their `teachers.*.precision`, channels-last convolutions and fused AdamW.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import methods  # noqa: F401  (registers the training methods a config may name)
from util.flops import count_flops
from util.precision import autocast_dtype

if TYPE_CHECKING:
    from methods.plan import BatchPlan
    from model.segmenter import Segmenter
    from util.config import Config
    from util.run import TrainState

# Config overrides that undo our speed-ups: fp32 autocast off, no channels-last, no compilation, and
# eval batches of one window. The teachers keep teachers.precision (the reference runs CLIP in fp16),
# which makes the reference faster than it was, so the measured ratios understate ours.
REFERENCE_OVERRIDES = ["train.precision=fp32", "train.channels_last=false", "train.compile=false",
                       "eval.batch_size=1"]

# Bytes the CUDA caching allocator hands out are multiples of this; small tensors round up to it.
CUDA_ALLOCATION_UNIT = 512


def use_unfused_attention(*modules: nn.Module | None) -> int:
    """Make every timm attention layer compute softmax(QK^T)V explicitly; returns how many were switched."""
    switched = 0
    for module in modules:
        if module is None:
            continue
        for m in module.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False  # type: ignore[assignment]  # timm's flag, set in its __init__
                switched += 1
    return switched


# ----------------------------------------------------------------------------------------------------------
# Synthetic batches and GPU-like precision on any device


def synthetic_batch(cfg: Config, n_strong: int, device: torch.device | str,
                    batch_size: int | None = None) -> dict[str, torch.Tensor]:
    """A labelled and an unlabelled batch of the configured size, with CutMix boxes on half the samples."""
    g = torch.Generator().manual_seed(0)
    b, s, n = batch_size or cfg.train.batch_size, cfg.dataset.crop_size, cfg.dataset.nclass
    box = torch.zeros(b, max(n_strong, 1), s, s, dtype=torch.long)
    box[::2, :, s // 4:3 * s // 4, s // 4:3 * s // 4] = 1
    batch = {"img_x": torch.randn(b, 3, s, s, generator=g), "mask_x": torch.randint(0, n, (b, s, s), generator=g),
             "img_u_w": torch.randn(b, 3, s, s, generator=g),
             "img_u_s": torch.randn(b, max(n_strong, 1), 3, s, s, generator=g),
             "ignore_mask": torch.zeros(b, s, s, dtype=torch.long), "cutmix_box": box}
    return {k: v.to(device) for k, v in batch.items()}


def adamw_like(optimizer: torch.optim.Optimizer, fused: bool) -> torch.optim.AdamW:
    """A second AdamW over the same parameters, groups and hyperparameters: fused, or multi-tensor (foreach)."""
    defaults = {k: optimizer.defaults[k] for k in ("lr", "betas", "eps", "weight_decay")}
    groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in optimizer.param_groups]
    return torch.optim.AdamW(groups, **defaults, fused=fused, foreach=None if fused else True)


# ----------------------------------------------------------------------------------------------------------
# Training states without data, and fake ones


def fakeify(module: nn.Module, mode: Any, device: torch.device) -> None:
    """Replace the meta parameters and buffers of `module` by fake tensors on `device` (same shapes/strides)."""
    from torch._subclasses.fake_tensor import FakeTensor

    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[name] = nn.Parameter(FakeTensor(mode, p.detach(), device), requires_grad=p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = FakeTensor(mode, b, device)


@dataclasses.dataclass
class Step:
    """A training state of a config without data, to which a tool feeds batches: the state, its method's batch plan
    on one process, and the config it computes with (`run` is methods/step.py's train_step on it)."""

    cfg: Config
    state: TrainState
    plan: BatchPlan
    rank: int = 0

    @property
    def method(self) -> Any:
        from methods import METHODS

        return METHODS[self.cfg.train.method]

    @property
    def device(self) -> torch.device:
        return next(self.state.model.parameters()).device

    # What the state holds, read through the step (a tool reads them; it never assigns them).
    model = property(lambda self: self.state.model)
    ema = property(lambda self: self.state.ema)
    optimizer = property(lambda self: self.state.optimizer)
    scaler = property(lambda self: self.state.scaler)
    teachers = property(lambda self: self.state.teachers)
    amp_dtype = property(lambda self: self.state.amp_dtype)
    iteration = property(lambda self: self.state.iteration)

    def run(self, *micro_batches: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from methods.step import train_step

        return train_step(self.state, self.cfg, list(micro_batches), self.rank)


def step_of(cfg: Config, device: torch.device | str, total_iters: int = 100, rank: int = 0,
            processes: int = 1) -> Step:
    """The training state of `cfg` on `device` (train.build_state), as process `rank` of `processes` plans it:
    what benchmark and the tests step through."""
    from methods import METHODS
    from methods.plan import plan_batches
    from train import build_state

    plan = plan_batches(METHODS[cfg.train.method], cfg, processes)
    return Step(cfg, build_state(cfg, torch.device(device), total_iters), plan, rank)


@contextlib.contextmanager
def fake_step(cfg: Config, reference: bool = False) -> Iterator[tuple[Step, Any]]:
    """A Step of `cfg` whose model, EMA, teachers and optimizer hold fake tensors, and its FakeTensorMode.

    Run steps inside `with mode:`, on batches made there. Built on the meta device (no memory, no init
    cost, so ViT-L teachers take a second) with random weights, then moved to fake CPU tensors: fake CUDA
    tensors would lose autocast (it checks for a real GPU) and fused attention. It computes as on a GPU
    (train.cpu_autocast: the autocast dtype of train.precision, the teachers in theirs, channels-last, fused
    AdamW); `reference` switches attention to unfused as the reference way does. fp16's GradScaler is left
    out (its skip test reads a value), which changes no memory or FLOPs.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from train import build_optimizer

    # skip_nonfinite's check reads the loss value, which fake tensors do not have.
    cfg = cfg.replace({"model.pretrained": None, "teachers.dino.weights": None, "teachers.clip.weights": None,
                       "train.compile": False, "train.skip_nonfinite": False, "train.cpu_autocast": True,
                       "train.global_batch": None})
    meta, cpu = torch.device("meta"), torch.device("cpu")
    # Building seeds nothing here, but random init draws: the caller's generator must not move.
    with torch.random.fork_rng(devices=[]), torch.device(meta):
        step = step_of(cfg, meta, 1_000)
    state = step.state
    if reference:
        use_unfused_attention(state.model, state.ema, *(state.teachers.modules() if state.teachers else []))
    mode = FakeTensorMode()
    for module in (state.model, state.ema, *(state.teachers.modules() if state.teachers else [])):
        fakeify(module, mode, cpu)
    # AdamW over the fake parameters, autocast as on a GPU but on the CPU, no GradScaler.
    fake = dataclasses.replace(state, optimizer=build_optimizer(cast("Segmenter", state.model), cfg),
                               amp_dtype=autocast_dtype(cfg.train.precision, cpu, allow_cpu=True),
                               scaler=torch.amp.GradScaler("cpu", enabled=False))
    yield dataclasses.replace(step, state=fake), mode


def step_batch(step: Step) -> dict[str, torch.Tensor]:
    """A synthetic micro-batch of the step's size (supervised's reference protocol doubles it) on its device."""
    return synthetic_batch(step.cfg, step.method.n_strong, step.device, step.plan.micro_batch)


def autocast_for(step: Step) -> contextlib.AbstractContextManager:
    """The autocast context of the step (none in fp32)."""
    dtype = step.state.amp_dtype
    return torch.autocast(step.device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def student_input(step: Step, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The images of the step's student forward: labelled, then each strong view (none for supervised)."""
    views = [batch["img_u_s"][:, v] for v in range(step.method.n_strong)] if step.method.unlabeled else []
    return torch.cat([batch["img_x"], *views])


# ----------------------------------------------------------------------------------------------------------
# FLOPs


def step_flops(cfg: Config) -> dict[str, Any]:
    """FLOPs of one training step of `cfg`, per component, computed on fake tensors (any device, seconds).

    'student_forward' is the student's forward on the step's images (labelled + strong views, and the
    second pass at the CLIP resolution); 'student_backward' is the rest of the step after the EMA
    pseudo-labels and the teachers, i.e. its backward pass. Elementwise work (losses, EMA, AdamW) has no
    FLOPs in this count: it is memory-bound.
    """
    from methods.common import pseudo_label

    with fake_step(cfg) as (step, mode), mode:
        batch = step_batch(step)
        total = count_flops(lambda: step.run(dict(batch)))
        state = step.state
        with autocast_for(step):
            ema = count_flops(lambda: pseudo_label(state.ema, batch["img_u_w"])) if step.method.unlabeled else 0
            images = student_input(step, batch)
            forward = count_flops(lambda: state.forward(images))
        teachers: dict[str, int] = {}
        if state.teachers is not None:
            for name, model in state.teachers.models.items():
                dtype = state.teachers.autocast_dtype[name]
                with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                    teachers[name] = count_flops(functools.partial(model, images))
    parts = {"student_forward": forward, "student_backward": total - ema - forward - sum(teachers.values()),
             "ema_pseudo_labels": ema, **{f"teacher_{name}": v for name, v in teachers.items()}}
    b, crop = step.plan.micro_batch, cfg.dataset.crop_size
    return {"method": cfg.train.method, "batch": f"{b}+{b}" if step.method.unlabeled else f"{b}",
            "crop": crop, "total": total, "parts": parts,
            "share": {k: v / total for k, v in parts.items()} if total else {}}


# ----------------------------------------------------------------------------------------------------------
# Memory


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of tensor storage alive while the mode is active, and their peak, as a GPU allocator counts them.

    Every storage an operator returns is counted (rounded up to `rounding` bytes) until it is freed; storages
    that exist before are added with `add` under a label (parameters, optimizer states...), so that the
    peak can be broken down. Views share their base's storage and count once.
    """

    def __init__(self, rounding: int = CUDA_ALLOCATION_UNIT) -> None:
        super().__init__()
        self.rounding = rounding
        self.refs: dict[int, weakref.ref] = {}
        self.by_label: dict[str, int] = {}
        self.current = 0
        self.peak = 0
        self.at_peak: dict[str, int] = {}

    def add(self, tensor: object, label: str = "activations_and_temporaries") -> None:
        if not isinstance(tensor, torch.Tensor):
            return
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self.refs:
            return
        size = -(-storage.nbytes() // self.rounding) * self.rounding

        def freed(_: object, key: int = key, size: int = size, label: str = label) -> None:
            self.refs.pop(key, None)
            self.current -= size
            self.by_label[label] -= size

        self.refs[key] = weakref.ref(storage, freed)
        self.current += size
        self.by_label[label] = self.by_label.get(label, 0) + size
        if self.current > self.peak:
            self.peak = self.current
            self.at_peak = dict(self.by_label)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self.add(t)
        return out


def track_training_state(tracker: LiveTensorBytes, state: TrainState, batch: dict[str, torch.Tensor]) -> None:
    """Add what lives across steps, labelled: student, its gradients, AdamW states, EMA, teachers, batch."""
    params = list(state.model.parameters())
    groups = {
        "student_parameters": params + list(state.model.buffers()),
        "gradients": [p.grad for p in params if p.grad is not None],
        "adamw_states": [v for moments in state.optimizer.state.values() for v in moments.values()],
        "ema_model": list(state.ema.parameters()) + list(state.ema.buffers()),
        "teachers": [t for m in (state.teachers.modules() if state.teachers else [])
                     for t in [*m.parameters(), *m.buffers()]],
        "batch": list(batch.values()),
    }
    for label, tensors in groups.items():
        for t in tensors:
            tracker.add(t, label)


def measure_step_memory(step: Step, batch: dict[str, torch.Tensor], rounding: int = CUDA_ALLOCATION_UNIT
                        ) -> LiveTensorBytes:
    """One step after a first one (AdamW states exist, gradients of the last step are alive), with every live
    storage tracked: the steady-state peak of training."""
    step.run(dict(batch))
    tracker = LiveTensorBytes(rounding)
    track_training_state(tracker, step.state, batch)
    with tracker:
        step.run(dict(batch))
    return tracker


def step_memory(cfg: Config, reference: bool = False) -> dict[str, Any]:
    """The expected peak GPU memory (GiB, as torch.cuda.max_memory_allocated reports it) of a training step,
    computed on fake tensors: ours, or with `reference` the reference way (give REFERENCE_OVERRIDES in cfg)."""
    with fake_step(cfg, reference) as (step, mode), mode:
        tracker = measure_step_memory(step, step_batch(step))
    b = step.plan.micro_batch
    gib = 2 ** 30
    return {"reference": reference, "method": cfg.train.method,
            "precision": str(step.state.amp_dtype or torch.float32),
            "batch": f"{b}+{b}" if step.method.unlabeled else f"{b}", "crop": cfg.dataset.crop_size,
            "grad_checkpointing": cfg.model.grad_checkpointing,
            "peak_gib": tracker.peak / gib, "at_peak_gib": {k: v / gib for k, v in tracker.at_peak.items()},
            "between_steps_gib": tracker.current / gib}
