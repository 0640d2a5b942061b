"""Training and evaluation speed and memory of our pipeline, and of the reference way of computing, side by side.

    python scripts/benchmark.py --config configs/loveda.yaml --what train --both          # real sizes (GPU)
    python scripts/benchmark.py --config configs/loveda.yaml --what eval --both
    python scripts/benchmark.py --config configs/loveda.yaml --what both --both --tiny    # CPU-sized

The real pipeline is built with random weights (no files needed) and fed synthetic batches: the numbers
are the cost of computing, not of reading data. `--reference` measures the reference's way (fp32, unfused
attention, one window per forward; see util/speed.py), `--both` measures both in one run and prints the
ratios. Results are printed as JSON (and written to --out) with a one-line summary each.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402

from eval.inference import autocast_dtype, predict_logits, resolve_window  # noqa: E402
from methods.common import pseudo_label  # noqa: E402
from util.cli import add_config_args, config_from_args, run_main  # noqa: E402
from util.config import Config  # noqa: E402
from util.dist import init_distributed  # noqa: E402
from util.ema import ema_update  # noqa: E402
from util.schedule import ema_ratio  # noqa: E402
from util.speed import REFERENCE_OVERRIDES, use_unfused_attention  # noqa: E402

# Weights are random: the benchmark must run without pretrained/ files.
RANDOM_WEIGHTS = ["model.pretrained=null", "teachers.dino.weights=null", "teachers.clip.weights=null"]
# The tiny architecture of the tests and the demo, for CPUs.
TINY = ["model.backbone=tiny", "teachers.dino.arch=tiny", "teachers.clip.arch=tiny", "teachers.clip.input_size=56",
        "distill.translator_hidden=128", "dataset.crop_size=112", "train.batch_size=4"]


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


def peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def synthetic_batch(cfg: Config, n_strong: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A labelled and an unlabelled batch of the configured size, with CutMix boxes on half the samples."""
    g = torch.Generator().manual_seed(0)
    b, s, n = cfg.train.batch_size, cfg.dataset.crop_size, cfg.dataset.nclass
    box = torch.zeros(b, max(n_strong, 1), s, s, dtype=torch.long)
    box[::2, :, s // 4:3 * s // 4, s // 4:3 * s // 4] = 1
    batch = {"img_x": torch.randn(b, 3, s, s, generator=g), "mask_x": torch.randint(0, n, (b, s, s), generator=g),
             "img_u_w": torch.randn(b, 3, s, s, generator=g),
             "img_u_s": torch.randn(b, max(n_strong, 1), 3, s, s, generator=g),
             "ignore_mask": torch.zeros(b, s, s, dtype=torch.long), "cutmix_box": box}
    return {k: v.to(device) for k, v in batch.items()}


def bench_train(cfg: Config, iters: int, warmup: int, reference: bool) -> dict[str, object]:
    """Images/s of full training steps, the step broken into its parts, and peak memory."""
    from train import Trainer

    info = init_distributed()
    device = info.device
    trainer = Trainer(cfg, info, with_data=False)
    trainer.total_iters = 10 * (iters + warmup) + 10
    if reference:
        use_unfused_attention(trainer.model, trainer.ema, *(trainer.teachers.modules() if trainer.teachers else []))
    batch = synthetic_batch(cfg, trainer.method.n_strong, device)

    def step() -> None:
        trainer.step(dict(batch))
        trainer.iteration += 1

    reset_peak(device)
    seconds = timed(step, iters, warmup, device)
    trainer.check_finite()
    memory = peak_memory_gb(device)
    amp = trainer.amp_dtype
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else None

    def under_autocast(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            if autocast is None:
                return fn()
            with autocast():
                return fn()
        return run

    parts = {"ema_pseudo_labels": timed(under_autocast(lambda: pseudo_label(trainer.ema, batch["img_u_w"])),
                                        iters, 1, device)}
    if trainer.teachers is not None:
        student_in = torch.cat((batch["img_x"], batch["img_u_s"][:, 0]))
        parts["teachers"] = timed(lambda: trainer.teachers(student_in), iters, 1, device)

    def optimizer_and_ema() -> None:
        trainer.optimizer.step()
        ema_update(trainer.ema, trainer.model, ema_ratio(1000, cfg.train.ema_cap))

    parts["optimizer_and_ema"] = timed(optimizer_and_ema, iters, 1, device)
    parts["student_forward_backward"] = max(0.0, seconds - sum(parts.values()))
    images = cfg.train.batch_size * (2 if trainer.method.unlabeled else 1)
    return {"what": "train", "reference": reference, "method": cfg.train.method,
            "precision": str(amp or torch.float32), "batch": f"{cfg.train.batch_size}+{cfg.train.batch_size}",
            "crop": cfg.dataset.crop_size, "images_per_s": images / seconds, "ms_per_step": 1000 * seconds,
            "ms_breakdown": {k: round(1000 * v, 2) for k, v in parts.items()}, "peak_memory_gb": memory}


def bench_eval(cfg: Config, iters: int, warmup: int, reference: bool, size: int) -> dict[str, object]:
    """Images/s (and windows/s) of whole-image inference in both modes on `size` x `size` tiles."""
    from model.segmenter import build_segmenter

    device = init_distributed().device
    model = build_segmenter(cfg).to(device).eval()
    if reference:
        use_unfused_attention(model)
    amp = autocast_dtype(cfg.train.precision, device)
    n_images = cfg.eval.batch_size if not reference else 1
    img = torch.randn(n_images, 3, size, size, device=device)
    window, stride = resolve_window(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"mode": "sliding_window"})}))
    result: dict[str, object] = {"what": "eval", "reference": reference, "precision": str(amp or torch.float32),
                                 "tile": size, "window": window, "stride": stride}
    for mode in ("original", "sliding_window"):
        reset_peak(device)
        seconds = timed(lambda: predict_logits(model, img, mode, window, stride, cfg.eval.batch_size, amp),
                        iters, warmup, device)
        n_windows = len(range(0, max(size - window, 0), stride)) + 1
        per_image = n_windows ** 2 if mode == "sliding_window" else 1
        result[mode] = {"images_per_s": n_images / seconds, "windows_per_s": n_images * per_image / seconds,
                        "forwards_batched": cfg.eval.batch_size, "peak_memory_gb": peak_memory_gb(device)}
    return result


def summary(result: dict[str, object]) -> str:
    name = "reference" if result["reference"] else "ours"
    if result["what"] == "train":
        mem = result["peak_memory_gb"]
        return (f"train {name}: {result['images_per_s']:.2f} images/s, {result['ms_per_step']:.1f} ms/step, "
                f"peak {'-' if mem is None else f'{mem:.2f} GiB'} ({result['precision']})")
    return (f"eval {name}: original {result['original']['images_per_s']:.2f} images/s, sliding window "
            f"{result['sliding_window']['images_per_s']:.2f} images/s "
            f"({result['sliding_window']['windows_per_s']:.1f} windows/s)")


def ratios(ours: dict[str, object], ref: dict[str, object]) -> dict[str, float | None]:
    """Speed-up (ours / reference) and memory fraction (ours / reference) of one measured pair."""
    if ours["what"] == "train":
        mem = (ours["peak_memory_gb"] / ref["peak_memory_gb"]) if ref["peak_memory_gb"] else None
        return {"train_speedup": ours["images_per_s"] / ref["images_per_s"], "train_memory_fraction": mem}
    return {f"eval_{mode}_speedup": ours[mode]["images_per_s"] / ref[mode]["images_per_s"]
            for mode in ("original", "sliding_window")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_args(parser)
    parser.add_argument("--what", choices=("train", "eval", "both"), default="train")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), help="train.precision")
    parser.add_argument("--compile", action="store_true", help="train.compile=true (torch.compile)")
    parser.add_argument("--tiny", action="store_true", help="tiny student and teachers (CPU-sized)")
    parser.add_argument("--eval-size", type=int, default=512, help="tile size for --what eval")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--reference", action="store_true", help="only the reference way of computing")
    group.add_argument("--both", action="store_true", help="ours and the reference, with ratios")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_intermixed_args(argv)

    extra = RANDOM_WEIGHTS + (TINY if args.tiny else [])
    extra += [f"train.precision={args.precision}"] * (args.precision is not None)
    extra += ["train.compile=true"] * args.compile
    variants = {"ours": False, "reference": True} if args.both else {("reference" if args.reference else "ours"): args.reference}
    report: dict[str, object] = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                                 "torch": torch.__version__, "threads": torch.get_num_threads()}
    for what in (("train", "eval") if args.what == "both" else (args.what,)):
        results = {}
        for name, reference in variants.items():
            cfg = config_from_args(args, extra + (REFERENCE_OVERRIDES if reference else []))
            torch.manual_seed(0)
            results[name] = (bench_train(cfg, args.iters, args.warmup, reference) if what == "train"
                             else bench_eval(cfg, args.iters, args.warmup, reference, args.eval_size))
            print(summary(results[name]), flush=True)
        if args.both:
            results["ratios"] = ratios(results["ours"], results["reference"])
            print(f"{what} ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in results["ratios"].items()
                                                 if v is not None))
        report[what] = results
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    run_main(main)
