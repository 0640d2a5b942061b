"""Segment image files with a checkpoint: a class-index mask, a palette picture and an overlay per image.

    python eval/predict.py --config configs/potsdam.yaml --checkpoint best.pth tiles/ extra.tif --out pred/
        [--mode sliding_window|original] [--window 518 --stride 345] [--weights ema] [key=value ...]

Positional arguments of the form section.key=value (not naming an existing file) are config overrides;
the others are inputs.

Inputs are image files (PNG, JPEG, TIFF) or folders of them (not recursive), any size: a whole 6000x6000
Potsdam tile goes through sliding windows. Per image <stem>_mask.png (class indices, one channel),
<stem>_color.png (dataset palette) and <stem>_overlay.png are written. An unreadable image stops the run
with its name before anything is written for it; images before it keep their complete outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python eval/predict.py`, Python puts eval/ first on the path, where eval/eval.py would shadow the
# `eval` package; the repository root must come first so that the project's packages import.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import re  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dataset.info import DATASETS, IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from eval.eval import load_model  # noqa: E402
from eval.inference import Model, autocast_dtype, predict_logits, resolve_window  # noqa: E402
from util.cli import add_config_args, config_from_args, run_main  # noqa: E402
from util.config import Config  # noqa: E402
from util.errors import DataError  # noqa: E402
from util.visualize import colorize, overlay, save_png  # noqa: E402

OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
# A 6000x6000 tile (36 M pixels) is under PIL's default guard (~89 M), but larger orthophotos are not.
# The guard protects against hostile files; these are the user's own, so allow up to ~12000x12000
# (PIL warns above this and refuses above twice this). Memory, not PIL, is the real limit beyond that.
Image.MAX_IMAGE_PIXELS = 150_000_000


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Image files named directly or found in the named folders, in order; one output stem each."""
    paths: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            paths.append(path)
        else:
            raise DataError(f"input not found: {path}")
    if not paths:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {' '.join(inputs)}")
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise DataError(f"{path} and {seen[path.stem]} would write the same outputs ({path.stem}_*.png)")
        seen[path.stem] = path
    return paths


def read_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; an unreadable file is a DataError naming it."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def to_input(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) ImageNet-normalised float on `device`."""
    x = torch.from_numpy(rgb).to(device).permute(2, 0, 1).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def predict_files(model: Model, paths: list[Path], out: Path, cfg: Config, device: torch.device,
                  mode: str, alpha: float = 0.5) -> None:
    """Write <stem>_mask.png, <stem>_color.png and <stem>_overlay.png into `out` for every image."""
    palette = DATASETS[cfg.dataset.name].palette
    window, stride = resolve_window(cfg)
    amp_dtype = autocast_dtype(cfg.train.precision, device)
    with tqdm(paths, desc="predict", unit="img") as bar:
        for path in bar:
            rgb = read_rgb(path)
            probs = predict_logits(model, to_input(rgb, device), mode, window, stride, cfg.eval.batch_size,
                                   amp_dtype)
            pred = probs[0].argmax(0).to(torch.uint8).cpu().numpy()
            color = colorize(pred, palette)
            # Created only once there is something to put in it: a failure on the first image leaves nothing.
            out.mkdir(parents=True, exist_ok=True)
            save_png(pred, out / f"{path.stem}_mask.png")
            save_png(color, out / f"{path.stem}_color.png")
            save_png(overlay(rgb, color, alpha), out / f"{path.stem}_overlay.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        usage="%(prog)s --config CFG --checkpoint CKPT --out DIR [options] INPUT... [key.sub=value ...]")
    add_config_args(parser)
    parser.add_argument("--checkpoint", required=True, help="checkpoint file (.pth) written by train.py")
    parser.add_argument("--out", required=True, help="output folder")
    # Sliding windows by default: `original` is one forward over the whole image, too big for large tiles.
    parser.add_argument("--mode", choices=("original", "sliding_window"), default="sliding_window")
    parser.add_argument("--window", type=int, help="eval.window: sliding window size (multiple of 14)")
    parser.add_argument("--stride", type=int, help="eval.stride: sliding window stride")
    parser.add_argument("--weights", choices=("student", "ema"),
                        help="eval.weights: which weights to use (default: those the checkpoint was selected by)")
    parser.add_argument("--batch-size", type=int, help="eval.batch_size: windows per forward")
    parser.add_argument("--alpha", type=float, default=0.5, help="opacity of the mask in the overlay")
    args = parser.parse_intermixed_args(argv)
    positional = list(args.overrides)
    args.overrides = [a for a in positional if OVERRIDE.match(a) and not Path(a).exists()]
    inputs = [a for a in positional if a not in args.overrides]
    if not inputs:
        parser.error("no INPUT images or folders given")
    flags = {"eval.window": args.window, "eval.stride": args.stride, "eval.weights": args.weights,
             "eval.batch_size": args.batch_size}
    cfg = config_from_args(args, [f"{k}={v}" for k, v in flags.items() if v is not None])
    paths = collect_inputs(inputs)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = load_model(cfg, args.checkpoint, cfg.eval.weights, device)
    predict_files(model, paths, Path(args.out), cfg, device, args.mode, args.alpha)
    print(f"{len(paths)} image(s) written to {args.out}")
    return 0


if __name__ == "__main__":
    run_main(main)
