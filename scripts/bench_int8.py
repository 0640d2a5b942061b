"""int8 dynamic quantization of the exported student: its speed and its scores against fp32 ONNX Runtime and PyTorch.

    python scripts/bench_int8.py --config configs/loveda.yaml --iters 5                 # speed, random ViT-S, 518 px
    python scripts/bench_int8.py --config configs/demo.yaml --checkpoint exp/demo/best.pth --subset val   # + scores

The student's graph (eval/backends.py, the graph `--backend onnxruntime` runs) is quantized by
onnxruntime.quantization.quantize_dynamic (int8 weights, activations quantized on the fly). Speed: seconds per
window of the config's window size, for PyTorch eager, ONNX Runtime fp32 and ONNX Runtime int8, taking turns
--iters times (medians); with --checkpoint its weights, else random ones. Scores: with --checkpoint, eval.py's
scoring of --subset in the config's eval.mode by each of the three (mIoU, and the share of pixels whose class
differs from PyTorch's). Graphs go to a temporary folder. This measured whether to offer int8 at all:
docs/performance.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: the repository root, not scripts/, first
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import statistics
import tempfile
import time
from typing import Any, Literal

import torch

import methods  # noqa: F401  (registers the training methods a config may name)
from eval.backends import OnnxRuntimeModel, graph_identity
from eval.inference import Model, resolve_window
from util.cli import add_config_args, config_from_args, run_main, user_path
from util.config import Config
from util.io import file_sha256


class Int8Model:
    """A `Model` running the int8 quantization of `runner`'s graph of each input size (`runner` exports it first)."""

    def __init__(self, runner: OnnxRuntimeModel, folder: Path) -> None:
        self.runner, self.folder = runner, folder
        self.sessions: dict[tuple[int, int], Any] = {}

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic

        height, width = batch.shape[-2:]
        if (height, width) not in self.sessions:
            self.runner(batch[:1])
            target = self.folder / f"int8_{height}x{width}.onnx"
            quantize_dynamic(str(self.runner.path(height, width)), str(target), weight_type=QuantType.QInt8)
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = self.runner.threads, 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.sessions[height, width] = ort.InferenceSession(str(target), options,
                                                                providers=["CPUExecutionProvider"])
        logits = self.sessions[height, width].run(None, {"image": batch.contiguous().numpy()})[0]
        return torch.from_numpy(logits)


def seconds_per_window(models: dict[str, Model], window: int, batch: int, iters: int) -> dict[str, float]:
    """Median seconds per window of each model on random batches, the models taking turns."""
    x = torch.randn(batch, 3, window, window)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model(x)
        for _ in range(iters):
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                times[name].append((time.perf_counter() - start) / batch)
    return {name: statistics.median(values) for name, values in times.items()}


def scores(models: dict[str, Model], cfg: Config, subset: Literal["val", "test"]) -> dict[str, dict[str, float]]:
    """mIoU of each model on `subset`, and the share of pixels whose class differs from the first model's."""
    from dataset.semi import SemiDataset
    from dataset.splits import split_file
    from eval.evaluate import build_eval_loader
    from eval.inference import predict_logits
    from eval.metrics import ConfusionMatrix

    loader = build_eval_loader(SemiDataset(cfg, subset, split_file(cfg.dataset.lists, subset)), cfg)
    window, stride = resolve_window(cfg)
    matrices = {name: ConfusionMatrix(cfg.dataset.nclass, torch.device("cpu")) for name in models}
    differing, total = dict.fromkeys(models, 0), 0
    for groups in loader:
        for batch in groups:
            preds = {name: predict_logits(model, batch["img"], cfg.eval.mode, window, stride, cfg.eval.batch_size,
                                          blend=cfg.eval.blend).argmax(1) for name, model in models.items()}
            first = next(iter(preds.values()))
            total += first.numel()
            for name, pred in preds.items():
                matrices[name].update(pred, batch["mask"])
                differing[name] += int((pred != first).sum())
    return {name: {"miou": cm.compute(cfg.dataset.excluded_classes)["miou"],
                   "pixels_differing": differing[name] / total} for name, cm in matrices.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_args(parser)
    parser.add_argument("--checkpoint", type=user_path, help="a checkpoint (default: random weights, speed only)")
    parser.add_argument("--subset", choices=("val", "test"), help="with --checkpoint: score this list")
    parser.add_argument("--iters", type=int, default=5, help="timed turns (default 5)")
    parser.add_argument("--batch", type=int, default=1, help="windows per forward (default 1)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads of every backend")
    args = parser.parse_intermixed_args(argv)
    overrides = [] if args.checkpoint else ["model.pretrained=null", "teachers.dino.weights=null",
                                            "teachers.clip.weights=null"]
    args.overrides = overrides + args.overrides
    cfg = config_from_args(args)
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        from eval.eval import load_model

        model, loaded = load_model(cfg, args.checkpoint, cfg.eval.weights, torch.device("cpu"))
        identity = graph_identity(cfg, file_sha256(args.checkpoint), loaded.which)
    else:
        from model.segmenter import build_segmenter

        torch.manual_seed(0)
        model, identity = build_segmenter(cfg).eval(), graph_identity(cfg, "random weights", "student")
    window = resolve_window(cfg)[0]
    report: dict[str, object] = {"threads": args.threads, "window": window}
    with tempfile.TemporaryDirectory() as folder:
        runner = OnnxRuntimeModel(model, identity, args.threads, Path(folder))
        models: dict[str, Model] = {"torch": model, "onnxruntime": runner,
                                    "onnxruntime_int8": Int8Model(runner, Path(folder))}
        report["seconds_per_window"] = seconds_per_window(models, window, args.batch, args.iters)
        if args.checkpoint and args.subset:
            report["scores"] = scores(models, cfg, args.subset)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    run_main(main)
