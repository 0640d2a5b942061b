"""Score a checkpoint on the val or test subset: per-class IoU/F1, mIoU, mean F1, OA, kappa, confusion matrix.

    python eval/eval.py --config configs/potsdam.yaml --checkpoint exp/.../best.pth [--subset test]
        [--mode sliding_window --window 518 --stride 345] [--weights ema] [--backend auto|torch|onnxruntime]
        [--threads N] [--out DIR] [key=value ...]
    torchrun --nproc_per_node 4 eval/eval.py ...      # each process scores a quarter of the subset

Only the checkpoint is read: the student's pretrained weights and the teachers are not needed (the teachers
never enter a checkpoint). Prints the scores, then writes metrics.json, metrics.md and confusion_matrix.png into
--out (default <checkpoint dir>/eval_<checkpoint name>_<subset>_<mode>_<weights>), together and atomically: a
full disk or a quota is one line after the scores, and no file is written.
metrics.json says what produced the scores: the checkpoint (path, SHA-256, run id, iteration, epoch), the
subset, its list and the list's SHA-256, mode, window, stride, blend, weights and excluded classes;
scripts/report.py and scripts/reproduce.py use a score only for the checkpoint and list it names.

`--backend`: PyTorch, or the same model exported to ONNX Runtime (eval/backends.py; `auto`, the default, picks
ONNX Runtime on a machine without a GPU where it is faster, PyTorch on a GPU). `--threads`: PyTorch's and ONNX
Runtime's threads (default: OMP_NUM_THREADS, else one per physical core).

`--subset` is val or test: which list is scored. ("Split" is the labelled share a run trained on: train.py's
--split, dataset.split; eval.py refuses --split with a pointer to --subset.)
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: Python put eval/ first, where this file
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # would shadow the package; the repository root instead

import argparse
import io
import json
import os
from typing import TYPE_CHECKING, Literal

import torch

import methods  # noqa: F401  (registers the training methods a config may name)
from dataset.splits import split_file
from eval.backends import add_backend_args, backend_device, backend_model, set_threads
from eval.evaluate import build_eval_loader, evaluate, metrics_table
from eval.inference import resolve_window
from eval.visualize import plot_confusion_matrix
from util.catalog import DATASETS
from util.cli import add_config_args, config_from_args, run_main, user_path
from util.config import Config
from util.dist import cleanup, init_distributed
from util.errors import ConfigError, DataError, OutputError, WeightsError
from util.io import check_output_folder, file_sha256, write_files

if TYPE_CHECKING:
    from model.convert import LoadedWeights


def load_model(cfg: Config, checkpoint: str | os.PathLike, which: Literal["student", "ema"] | None,
               device: torch.device) -> tuple[torch.nn.Module, LoadedWeights]:
    """The segmenter of `cfg` with the `which` weights of `checkpoint` in eval mode, and what was loaded.

    `which` is 'student', 'ema', or None for the weights the checkpoint was selected by (train.best_by).
    """
    if not Path(checkpoint).is_file():
        raise WeightsError(f"checkpoint not found: {checkpoint}")
    from model.convert import load_segmenter_weights
    from model.segmenter import build_segmenter

    # The checkpoint holds every weight: the DINOv2 file named by model.pretrained is not read.
    model = build_segmenter(cfg.replace({"model.pretrained": None}))
    loaded = load_segmenter_weights(model, checkpoint, which, cfg)
    return model.to(device).eval(), loaded


def flag_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The eval.* keys that the command-line flags stand for (None: not given)."""
    return {"eval.mode": args.mode, "eval.window": args.window, "eval.stride": args.stride,
            "eval.weights": args.weights, "eval.batch_size": args.batch_size}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # No abbreviations: `--sub` must not quietly pass for --subset, nor `--spl` reach the refused --split.
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    add_config_args(parser)
    parser.add_argument("--checkpoint", required=True, type=user_path,
                        help="checkpoint file (.pth) written by train.py")
    parser.add_argument("--subset", choices=("val", "test"), default="val",
                        help="the list scored: val or test (default val)")
    parser.add_argument("--split", nargs="?", const="", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("original", "sliding_window"), help="eval.mode")
    parser.add_argument("--window", type=int, help="eval.window: sliding window size (multiple of 14)")
    parser.add_argument("--stride", type=int, help="eval.stride: sliding window stride")
    parser.add_argument("--weights", choices=("student", "ema"),
                        help="eval.weights: which weights to score (default: those best.pth was selected by)")
    parser.add_argument("--batch-size", type=int, help="eval.batch_size: images or windows per forward")
    add_backend_args(parser)
    parser.add_argument("--out", type=user_path,
                        help="output folder (default: <checkpoint dir>/eval_<checkpoint name>_<subset>_<mode>_"
                             "<weights>)")
    args = parser.parse_intermixed_args(argv)
    if args.split is not None:
        subset = args.split if args.split in ("val", "test") else "val|test"
        raise ConfigError(f"--split is the labelled share a run trains on (train.py's); did you mean --subset "
                          f"{subset}?")
    return args


def write_outputs(out: Path, result: dict, cfg: Config, report: dict) -> None:
    """metrics.json, metrics.md and confusion_matrix.png, rendered first and written together
    (util.io.write_files: all or none; a failure is one OutputError)."""
    names = DATASETS[cfg.dataset.name].class_names
    per_class = {name: {"iou": result["iou"][c], "f1": result["f1"][c], "included": result["included"][c]}
                 for c, name in enumerate(names)}
    summary = {"unit": "percent", **report, "classes": per_class, "classes_in_mean": result["classes_in_mean"],
               **{k: result[k] for k in ("miou", "mean_f1", "oa", "kappa", "pixels", "confusion_matrix")}}
    title = f"# {report['checkpoint']['path']} ({report['subset']}, {report['mode']}, {report['weights']})"
    png = io.BytesIO()
    plot_confusion_matrix(result["confusion_matrix"], names, png, excluded=cfg.dataset.excluded_classes)
    write_files(out, {"metrics.json": (json.dumps(summary, indent=2) + "\n").encode("utf-8"),
                      "metrics.md": f"{title}\n\n{metrics_table(result, names)}\n".encode(),
                      "confusion_matrix.png": png.getvalue()})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_from_args(args, flag_overrides(args))
    threads = set_threads(args.threads)
    list_path = split_file(cfg.dataset.lists, args.subset)
    if not list_path.is_file():
        raise DataError(f"split file not found: {list_path} (dataset.lists={cfg.dataset.lists})")
    window, stride = resolve_window(cfg) if cfg.eval.mode == "sliding_window" else (None, None)

    dist_info = init_distributed()
    try:
        device = backend_device(args.backend, dist_info.device)
        model, loaded = load_model(cfg, args.checkpoint, cfg.eval.weights, device)
        checkpoint = Path(args.checkpoint).resolve()
        checkpoint_sha256 = file_sha256(checkpoint)
        backend, runner = backend_model(args.backend, model, device, cfg.eval.mode, cfg, checkpoint_sha256,
                                        loaded.which, threads)
        out = Path(args.out) if args.out else (
            checkpoint.parent / f"eval_{checkpoint.stem}_{args.subset}_{cfg.eval.mode}_{loaded.which}")
        # A bad output folder is found before the evaluation, not after it.
        check_output_folder(out, "--out" if args.out else "the output folder beside the checkpoint (--out)")
        from dataset.semi import SemiDataset

        dataset = SemiDataset(cfg, args.subset, list_path)
        loader = build_eval_loader(dataset, cfg, dist_info)
        result = evaluate(runner, loader, cfg, device, dist_info, progress=True)
        if dist_info.is_main:
            mode = cfg.eval.mode
            report = {"checkpoint": {"path": str(checkpoint), "sha256": checkpoint_sha256, **loaded.source},
                      "subset": args.subset, "subset_list": str(Path(list_path).resolve()),
                      "subset_list_sha256": file_sha256(list_path), "mode": mode, "window": window,
                      "stride": stride, "blend": cfg.eval.blend if mode == "sliding_window" else None,
                      "weights": loaded.which, "backend": backend, "images": len(dataset),
                      "excluded_classes": list(cfg.dataset.excluded_classes)}
            # Shown before the files are written: a full disk loses the files, not the scores.
            print(metrics_table(result, DATASETS[cfg.dataset.name].class_names))
            try:
                write_outputs(out, result, cfg, report)
            except OutputError as e:
                raise OutputError(f"{e}; the scores above are what was computed") from None
            print(f"written to {out}")
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    run_main(main)
