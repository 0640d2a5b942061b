"""Training and evaluation speed, FLOPs and memory of our pipeline, and of the reference way of computing.

    python scripts/benchmark.py --config configs/loveda.yaml --what train --both          # real sizes (GPU)
    python scripts/benchmark.py --config configs/loveda.yaml --what eval --both
    python scripts/benchmark.py --config configs/loveda.yaml --what both --both --tiny    # CPU-sized
    python scripts/benchmark.py --config configs/loveda.yaml --what eval --both --onnxruntime  # and ONNX Runtime
    python scripts/benchmark.py --config configs/loveda.yaml --flops --memory            # no GPU needed

The real pipeline is built with random weights (no files needed) and fed synthetic batches: the numbers
are the cost of computing, not of reading data. `--reference` measures the reference's way (fp32, unfused
attention, one window per forward; see scripts/costs.py), `--both` measures both in one run and prints the
ratios; `--onnxruntime` adds our evaluation with the model run by ONNX Runtime (eval/backends.py), its
graphs exported into a temporary cache before the timing. On a GPU the training figures include the model
FLOP utilisation (MFU) against the card's dense bf16 peak. `--flops` counts the FLOPs of one training step
per component and `--memory` computes the expected peak GPU memory of a step (ours and the reference's),
both on fake tensors: any machine, seconds, real sizes. Without --what, only those are reported. Results are
printed as JSON (and written to --out) with a one-line summary each.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: the repository root, not scripts/, first
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import functools
import json
import tempfile
import time
from collections.abc import Callable
from typing import Any, Literal, NotRequired, TypedDict

import torch

from eval.backends import OnnxRuntimeModel, graph_identity
from eval.inference import Model, nearest_patch_multiple, predict_logits, resolve_window
from methods.common import pseudo_label
from scripts.costs import (
    REFERENCE_OVERRIDES,
    adamw_like,
    step_batch,
    step_flops,
    step_memory,
    step_of,
    student_input,
    use_unfused_attention,
)
from util.cli import add_config_args, run_main, user_path
from util.config import Config, load_config
from util.dist import init_distributed
from util.ema import ema_update
from util.flops import model_flops_utilisation, peak_bf16_tflops
from util.io import check_output_file, write_text
from util.precision import autocast_dtype
from util.schedule import ema_ratio

# Weights are random: the benchmark must run without pretrained/ files. A step is one forward of
# train.batch_size crops (a GPU's share), whatever global batch the config accumulates to.
RANDOM_WEIGHTS = ["model.pretrained=null", "teachers.dino.weights=null", "teachers.clip.weights=null",
                  "train.global_batch=null"]
# The tiny architecture of the tests and the demo, for CPUs.
TINY = ["model.backbone=tiny", "teachers.dino.arch=tiny", "teachers.clip.arch=tiny", "teachers.clip.input_size=56",
        "distill.translator_hidden=128", "dataset.crop_size=112", "train.batch_size=4"]
# Card sizes (GiB) the memory estimate is checked against, and the rule: the estimate counts tensors only, as
# torch.cuda.max_memory_allocated does; the CUDA context, cuBLAS/cuDNN workspaces and the caching allocator's
# fragmentation come on top (measured on the first GPU by scripts/gpu_smoke.sh, until then a guess).
CARDS_GIB = (16, 24, 40, 48, 80)
OVERHEAD_GIB, FRAGMENTATION = 0.75, 1.10
GIB = 2 ** 30

EvalMode = Literal["original", "sliding_window"]
EVAL_MODES: tuple[EvalMode, ...] = ("original", "sliding_window")
Variant = Literal["ours", "reference"]


class TrainResult(TypedDict):
    """bench_train's figures; the keys not required are there only for ours, or given FLOPs / an estimate."""

    what: Literal["train"]
    reference: bool
    method: str
    precision: str
    gpu_like_on_cpu: bool
    batch: str
    crop: int
    images_per_s: float
    ms_per_step: float
    ms_breakdown: dict[str, float]
    peak_memory_gb: float | None
    peak_reserved_gb: float | None
    fused_adamw_error: NotRequired[str]
    adamw_ms: NotRequired[dict[str, float | None]]
    peak_memory_estimate_gb: NotRequired[float]
    tflop_per_step: NotRequired[float]
    achieved_tflops: NotRequired[float]
    peak_bf16_tflops: NotRequired[float | None]
    mfu: NotRequired[float | None]
    achieved_tflops_by_part: NotRequired[dict[str, float | None]]


class EvalModeResult(TypedDict):
    """bench_eval's figures for one inference mode."""

    images_per_s: float
    windows_per_s: float
    forwards_batched: int
    peak_memory_gb: float | None
    # Pages the process touched for the first time, per image: memory the allocator mapped afresh (None off Unix).
    minor_page_faults_per_image: float | None


class EvalResult(TypedDict):
    """bench_eval's figures: the setting, then one entry per mode of EVAL_MODES."""

    what: Literal["eval"]
    reference: bool
    backend: str
    precision: str
    tile: int
    window: int
    stride: int
    original: EvalModeResult
    sliding_window: EvalModeResult


class MemoryReport(TypedDict):
    """memory_report: scripts.costs.step_memory of both ways (with 'fits_card_gib' added) and their ratio."""

    ours: dict[str, Any]
    reference: dict[str, Any]
    ratio: float
    rule: str


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], iters: int, warmup: int, device: torch.device) -> float:
    """Mean seconds per call of `fn` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - start) / max(iters, 1)


def minor_page_faults() -> int | None:
    """This process's minor page faults so far (None where the resource module is missing: Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def reserved_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_reserved(device) / GIB if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def bench_train(cfg: Config, iters: int, warmup: int, reference: bool,
                flops: dict[str, Any] | None = None, peak_tflops: float | None = None,
                memory_estimate: dict[str, Any] | None = None) -> TrainResult:
    """Images/s of full training steps, the step broken into its parts, peak memory, and MFU given `flops`."""
    device = init_distributed().device
    step = step_of(cfg, device, 10 * (iters + warmup) + 10)
    state = step.state
    if reference:
        use_unfused_attention(state.model, state.ema, *(state.teachers.modules() if state.teachers else []))
    batch = step_batch(step)
    losses: list[torch.Tensor] = []
    reset_peak(device)
    seconds = timed(lambda: losses.append(step.run(dict(batch))["loss"]), iters, warmup, device)
    if not torch.isfinite(torch.stack(losses)).all():
        raise RuntimeError("a benchmark step's loss is not finite")
    memory, reserved = peak_memory_gb(device), reserved_memory_gb(device)
    amp = state.amp_dtype
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else None

    def under_autocast(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            if autocast is None:
                return fn()
            with autocast():
                return fn()
        return run

    parts: dict[str, float] = {}
    if step.method.unlabeled:
        parts["ema_pseudo_labels"] = timed(under_autocast(lambda: pseudo_label(state.ema, batch["img_u_w"])),
                                           iters, 1, device)
    if state.teachers is not None:
        images = student_input(step, batch)
        parts["teachers"] = timed(functools.partial(state.teachers, images), iters, 1, device)

    def optimizer_and_ema() -> None:
        state.optimizer.step()
        ema_update(state.ema, state.model, ema_ratio(1000, cfg.train.ema_cap))

    parts["optimizer_and_ema"] = timed(optimizer_and_ema, iters, 1, device)
    parts["student_forward_backward"] = max(0.0, seconds - sum(parts.values()))
    images_per_step = step.plan.micro_batch * (2 if step.method.unlabeled else 1)
    b = step.plan.micro_batch
    result: TrainResult = {
        "what": "train", "reference": reference, "method": cfg.train.method,
        "precision": str(amp or torch.float32), "gpu_like_on_cpu": cfg.train.cpu_autocast and device.type == "cpu",
        "batch": f"{b}+{b}" if step.method.unlabeled else f"{b}", "crop": cfg.dataset.crop_size,
        "images_per_s": images_per_step / seconds, "ms_per_step": 1000 * seconds,
        "ms_breakdown": {k: round(1000 * v, 2) for k, v in parts.items()}, "peak_memory_gb": memory,
        "peak_reserved_gb": reserved}
    if not reference:
        # Today's AdamW (multi-tensor) against fused AdamW on the same gradients: the case for `fused=True`.
        adamw: dict[str, float | None] = {
            "foreach": timed(adamw_like(state.optimizer, fused=False).step, iters, 1, device)}
        try:
            adamw["fused"] = timed(adamw_like(state.optimizer, fused=True).step, iters, 1, device)
        except RuntimeError as e:  # fused AdamW on this device/PyTorch is not supported
            adamw["fused"] = None
            result["fused_adamw_error"] = str(e).splitlines()[0]
        result["adamw_ms"] = {k: None if v is None else round(1000 * v, 3) for k, v in adamw.items()}
    if memory_estimate is not None:
        result["peak_memory_estimate_gb"] = memory_estimate["peak_gib"]
    if flops is not None:
        total = flops["total"]
        result["tflop_per_step"] = total / 1e12
        result["achieved_tflops"] = total / seconds / 1e12
        result["peak_bf16_tflops"] = peak_tflops
        result["mfu"] = model_flops_utilisation(total, seconds, peak_tflops) if device.type == "cuda" else None
        p = flops["parts"]
        part_flops = {"ema_pseudo_labels": p.get("ema_pseudo_labels", 0),
                      "teachers": sum(v for k, v in p.items() if k.startswith("teacher_")),
                      "student_forward_backward": p["student_forward"] + p["student_backward"]}
        result["achieved_tflops_by_part"] = {k: round(part_flops[k] / (ms / 1000) / 1e12, 3) if ms > 0 else None
                                             for k, ms in result["ms_breakdown"].items() if k in part_flops}
    return result


def bench_eval(cfg: Config, iters: int, warmup: int, reference: bool, size: int,
               backend: str = "torch") -> EvalResult:
    """Images/s (and windows/s) of whole-image inference in both modes on `size` x `size` tiles; `backend`
    onnxruntime runs the model in ONNX Runtime (on the CPU), its graphs exported before the timing."""
    from model.segmenter import build_segmenter

    device = init_distributed().device if backend == "torch" else torch.device("cpu")
    segmenter = build_segmenter(cfg).to(device).eval()
    if reference:
        use_unfused_attention(segmenter)
    model: Model = segmenter
    cache = tempfile.TemporaryDirectory()
    if backend == "onnxruntime":
        model = OnnxRuntimeModel(segmenter, graph_identity(cfg, "random weights", "student"), torch.get_num_threads(),
                                 Path(cache.name))
        for side in (nearest_patch_multiple(size), resolve_window(cfg.replace({"eval.mode": "sliding_window"}))[0]):
            model(torch.zeros(1, 3, side, side))  # the graphs exported now, not inside the timing
    amp = autocast_dtype(cfg.train.precision, device, allow_cpu=cfg.train.cpu_autocast)
    n_images = cfg.eval.batch_size if not reference else 1
    img = torch.randn(n_images, 3, size, size, device=device)
    sliding = cfg.replace({"eval.mode": "sliding_window"})
    window, stride = resolve_window(sliding)
    modes: dict[EvalMode, EvalModeResult] = {}
    for mode in EVAL_MODES:
        reset_peak(device)
        faults = minor_page_faults()
        seconds = timed(functools.partial(predict_logits, model, img, mode, window, stride, cfg.eval.batch_size, amp),
                        iters, warmup, device)
        faulted = None if faults is None else (minor_page_faults() or 0) - faults
        n_windows = len(range(0, max(size - window, 0), stride)) + 1
        per_image = n_windows ** 2 if mode == "sliding_window" else 1
        modes[mode] = {"images_per_s": n_images / seconds, "windows_per_s": n_images * per_image / seconds,
                       "forwards_batched": cfg.eval.batch_size, "peak_memory_gb": peak_memory_gb(device),
                       "minor_page_faults_per_image": None if faulted is None
                       else faulted / ((iters + warmup) * n_images)}
    cache.cleanup()
    return {"what": "eval", "reference": reference, "backend": backend, "precision": str(amp or torch.float32),
            "tile": size,
            "window": window, "stride": stride, "original": modes["original"],
            "sliding_window": modes["sliding_window"]}


def fits(peak_gib: float) -> dict[str, bool]:
    """Whether a step with this estimated peak fits cards of CARDS_GIB, with the overheads of OVERHEAD_GIB and
    FRAGMENTATION on top."""
    return {f"{card}": peak_gib * FRAGMENTATION + OVERHEAD_GIB <= card for card in CARDS_GIB}


def memory_report(cfg_ours: Config, cfg_ref: Config) -> MemoryReport:
    """Expected peak GPU memory of a training step, ours and the reference way, and which cards it fits."""
    ours, ref = step_memory(cfg_ours), step_memory(cfg_ref, reference=True)
    for r in (ours, ref):
        r["fits_card_gib"] = fits(r["peak_gib"])
    return {"ours": ours, "reference": ref, "ratio": ours["peak_gib"] / ref["peak_gib"],
            "rule": f"fits a card of C GiB if peak x {FRAGMENTATION} + {OVERHEAD_GIB} <= C (CUDA context, workspaces, "
                    f"allocator fragmentation on top of the tensors)"}


def summary(result: TrainResult | EvalResult) -> str:
    name = "reference" if result["reference"] else "ours"
    if result["what"] == "eval" and result["backend"] != "torch":
        name += f" ({result['backend']})"
    if result["what"] == "train":
        mem = result["peak_memory_gb"]
        mfu = result.get("mfu")
        extra = f", MFU {100 * mfu:.1f} %" if mfu is not None else ""
        return (f"train {name}: {result['images_per_s']:.2f} images/s, {result['ms_per_step']:.1f} ms/step, "
                f"peak {'-' if mem is None else f'{mem:.2f} GiB'} ({result['precision']}){extra}")
    return (f"eval {name}: original {result['original']['images_per_s']:.2f} images/s, sliding window "
            f"{result['sliding_window']['images_per_s']:.2f} images/s "
            f"({result['sliding_window']['windows_per_s']:.1f} windows/s)")


def flops_summary(flops: dict[str, Any]) -> str:
    parts = ", ".join(f"{k} {v / 1e12:.2f} ({100 * flops['share'][k]:.0f} %)" for k, v in flops["parts"].items())
    return (f"flops per training step ({flops['method']}, {flops['batch']} crops of {flops['crop']}): "
            f"{flops['total'] / 1e12:.2f} TFLOP = {parts}")


def memory_summary(memory: MemoryReport) -> str:
    ours, ref = memory["ours"], memory["reference"]

    def cards(r: dict[str, Any]) -> str:
        ok = [c for c, fit in r["fits_card_gib"].items() if fit]
        return f"fits {min(ok, key=int)} GiB cards and up" if ok else f"fits none up to {CARDS_GIB[-1]} GiB"

    return (f"memory per training step ({ours['method']}, {ours['batch']} crops of {ours['crop']}): ours "
            f"{ours['peak_gib']:.2f} GiB ({ours['precision']}, {cards(ours)}), reference {ref['peak_gib']:.2f} GiB "
            f"({ref['precision']}, unfused attention, {cards(ref)})")


def onnxruntime_ratios(ort_result: EvalResult,
                       measured: dict[str, TrainResult | EvalResult]) -> dict[str, float | None]:
    """Speed-up of our evaluation in ONNX Runtime over the reference way and over ours in PyTorch, where measured."""
    found: dict[str, float | None] = {}
    for name, label in (("reference", "speedup"), ("ours", "vs_torch")):
        base = measured.get(name)
        if base is not None and base["what"] == "eval":
            for mode in EVAL_MODES:
                ours, theirs = ort_result[mode]["images_per_s"], base[mode]["images_per_s"]
                found[f"eval_{mode}_onnxruntime_{label}"] = ours / theirs
    return found


def ratios(ours: TrainResult | EvalResult, ref: TrainResult | EvalResult) -> dict[str, float | None]:
    """Speed-up (ours / reference) and memory fraction (ours / reference) of one measured pair."""
    if ours["what"] == "train":
        assert ref["what"] == "train", "a pair is two measurements of the same kind"
        mem = None
        if ref["peak_memory_gb"]:
            assert ours["peak_memory_gb"] is not None, "both measured on the same device"
            mem = ours["peak_memory_gb"] / ref["peak_memory_gb"]
        return {"train_speedup": ours["images_per_s"] / ref["images_per_s"], "train_memory_fraction": mem}
    assert ref["what"] == "eval", "a pair is two measurements of the same kind"
    return {f"eval_{mode}_speedup": ours[mode]["images_per_s"] / ref[mode]["images_per_s"] for mode in EVAL_MODES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_args(parser)
    parser.add_argument("--what", choices=("train", "eval", "both"),
                        help="what to time (default train; nothing when only --flops/--memory are given)")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), help="train.precision")
    parser.add_argument("--compile", action="store_true", help="train.compile=true (torch.compile)")
    parser.add_argument("--tiny", action="store_true", help="tiny student and teachers (CPU-sized)")
    parser.add_argument("--eval-size", type=int, default=512, help="tile size for --what eval")
    parser.add_argument("--onnxruntime", action="store_true",
                        help="with --what eval: also time ours with the model run by ONNX Runtime on the CPU")
    parser.add_argument("--flops", action="store_true", help="FLOPs per training step, per component (fake tensors)")
    parser.add_argument("--memory", action="store_true",
                        help="expected peak GPU memory of a training step, ours and the reference's (fake tensors)")
    parser.add_argument("--cpu-amp", action="store_true",
                        help="on a CPU, time with a GPU's precision (bf16 autocast, teachers in teachers.*.precision, "
                             "channels-last, fused AdamW: train.cpu_autocast) instead of fp32")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak for MFU (default: from its name)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--reference", action="store_true", help="only the reference way of computing")
    group.add_argument("--both", action="store_true", help="ours and the reference, with ratios")
    parser.add_argument("--out", type=user_path, help="also write the JSON here")
    args = parser.parse_intermixed_args(argv)
    if args.out:
        # Checked before minutes of measuring, not after.
        check_output_file(args.out, "--out")

    extra = RANDOM_WEIGHTS + (TINY if args.tiny else [])
    extra += [f"train.precision={args.precision}"] * (args.precision is not None)
    extra += ["train.compile=true"] * args.compile
    extra += ["train.cpu_autocast=true"] * args.cpu_amp
    only: Variant = "reference" if args.reference else "ours"
    variants: dict[Variant, bool] = {"ours": False, "reference": True} if args.both else {only: args.reference}
    cuda = torch.cuda.is_available()
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = args.peak_tflops or (peak_bf16_tflops(device_name) if cuda else None)
    report: dict[str, object] = {"device": device_name, "torch": torch.__version__, "threads": torch.get_num_threads(),
                                 "peak_bf16_tflops": peak}
    whats = {"both": ("train", "eval"), "train": ("train",), "eval": ("eval",),
             None: () if (args.flops or args.memory) else ("train",)}[args.what]
    cfg_ours = load_config(user_path(args.config), args.overrides + extra)
    cfg_ref = load_config(user_path(args.config), args.overrides + extra + REFERENCE_OVERRIDES)

    # FLOPs: asked for, or needed for the MFU of timed training on a GPU. Counted once: the same model
    # FLOPs both ways (the reference's explicit attention does the same multiply-adds).
    flops = step_flops(cfg_ours) if args.flops or ("train" in whats and cuda) else None
    if flops is not None:
        report["flops"] = flops
        print(flops_summary(flops), flush=True)
    memory = memory_report(cfg_ours, cfg_ref) if args.memory else None
    if memory is not None:
        report["memory"] = memory
        print(memory_summary(memory), flush=True)

    for what in whats:
        measured: dict[str, TrainResult | EvalResult] = {}
        results: dict[str, TrainResult | EvalResult | dict[str, float | None]] = {}
        for name, reference in variants.items():
            cfg = cfg_ref if reference else cfg_ours
            torch.manual_seed(0)
            estimate = memory[name] if memory is not None else None
            result = (bench_train(cfg, args.iters, args.warmup, reference, flops, peak, estimate) if what == "train"
                      else bench_eval(cfg, args.iters, args.warmup, reference, args.eval_size))
            measured[name] = results[name] = result
            print(summary(result), flush=True)
        pair: dict[str, float | None] = ratios(measured["ours"], measured["reference"]) if args.both else {}
        if what == "eval" and args.onnxruntime:
            torch.manual_seed(0)
            ort_result = results["onnxruntime"] = bench_eval(cfg_ours, args.iters, args.warmup, False, args.eval_size,
                                                             "onnxruntime")
            print(summary(ort_result), flush=True)
            pair.update(onnxruntime_ratios(ort_result, measured))
        if pair:
            results["ratios"] = pair
            print(f"{what} ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in pair.items() if v is not None))
        report[what] = results
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    run_main(main)
