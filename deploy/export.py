"""Export a checkpoint as one ONNX file that QGIS's Deepness plugin and ONNX Runtime run: the deployed student.

    python -m deploy.export --config exp/loveda/rs_mtdf/10/config.yaml --checkpoint exp/loveda/rs_mtdf/10/best.pth \\
        --out loveda_rs_mtdf.onnx [--weights student|ema] [--resolution CM] [key.sub=value ...]

The graph is what deploy/predict.py runs on each window, and nothing else: the student (encoder, DPT head), the
translators and the second pass on the window resized to CLIP's input size that feed the fusion, the fusion;
no teacher (the checkpoint never holds one). Around it, the conventions of Deepness (docs/qgis.md):

- input `image`: (batch, 3, tile, tile) float32, RGB in 0..1, what Deepness feeds (a tile's 8-bit bands divided
  by 255, channels first). The ImageNet normalisation the model was trained with is inside the graph.
- output `probabilities`: (batch, classes, tile, tile), the softmax over the classes (Deepness takes the argmax).
- tile = the sliding window of deploy/predict.py (eval.window, else dataset.crop_size); the batch is dynamic.
- metadata Deepness reads: model_type Segmentor, class_names, resolution (cm/px: the dataset's, or
  --resolution), tile_size, tiles_overlap (percent: predict.py's stride), seg_thresh 0 and seg_small_segment 0
  (plain argmax, as predict.py; no small-area filter); plus rs_mtdf_* keys saying where the file came from.

Opset 17 and IR version 8, so that every onnxruntime Deepness' requirements allow (1.12.1 to 1.17.0; its
installer takes 1.17.0, an onnxruntime already there is used as it is) runs it (the graph is built by
model/onnx_graph.py, which eval/backends.py also uses to run the student in ONNX Runtime). The file is checked
(onnx.checker; ONNX Runtime against PyTorch on one tile) before it is written, atomically: a failure leaves no
file.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: the repository root, not deploy/, first
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

import methods  # noqa: F401  (registers the training methods a config may name)
from deploy.deepness import overlap_percent, overlap_px
from eval.inference import resolve_window
from model.onnx_graph import MAX_WEIGHT_BYTES, OPSET, require_exporter, to_onnx, weight_bytes
from util.catalog import DATASETS, IMAGENET_MEAN, IMAGENET_STD
from util.cli import add_config_args, config_from_args, path_arg, run_main
from util.config import Config
from util.errors import ConfigError, OutputError
from util.io import atomic_path, check_name_lengths, check_output_folder, file_sha256, is_temporary

if TYPE_CHECKING:
    import onnx

INPUT, OUTPUT = "image", "probabilities"
# How close ONNX Runtime's probabilities must be to PyTorch's on the check tile before the file is written.
CHECK_TOLERANCE = 1e-4


class DeployedSegmenter(nn.Module):
    """The segmenter as Deepness calls it: RGB in 0..1 -> ImageNet-normalised -> Segmenter.forward -> softmax.

    The normalisation is inside the graph rather than in Deepness' standardization_mean/std metadata: those are
    read by recent Deepness versions only (older ones feed the plain 0..1 tile, silently wrong), and a graph
    that takes 0..1 RGB is the same model in every Deepness version and in any ONNX Runtime script.
    (x - mean) / std on x = pixels / 255 is what dataset.transforms.normalize computes for predict.py.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, segmenter: nn.Module) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.segmenter((image - self.mean) / self.std)
        return logits.float().softmax(1)


# ----------------------------------------------------------------------------------------------------------
# Deepness' conventions


def deepness_metadata(cfg: Config, tile: int, percent: int, resolution_cm: float) -> dict[str, Any]:
    """The metadata Deepness reads (ModelBase.get_metadata_*; its docs' "Adding metadata to ONNX model"), as values.

    Deepness reads the tile size under `tile_size` while its documentation's table names it `tiles_size`: both are
    written. seg_thresh 0 unchecks its probability threshold and seg_small_segment 0 its small-area removal, so
    that a pixel's class is the argmax of its tile's probabilities, as in predict.py.
    """
    names = DATASETS[cfg.dataset.name].class_names
    return {"model_type": "Segmentor", "class_names": {str(c): name for c, name in enumerate(names)},
            "resolution": resolution_cm, "tile_size": tile, "tiles_size": tile, "tiles_overlap": percent,
            "seg_thresh": 0.0, "seg_small_segment": 0}


def set_metadata(proto: onnx.ModelProto, values: dict[str, Any]) -> None:
    """Write `values` into the model's metadata_props, each JSON-encoded (Deepness json.loads every value);
    entries already there under other keys are kept."""
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    for key, text in [*kept, *((k, json.dumps(v)) for k, v in values.items())]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, text


# ----------------------------------------------------------------------------------------------------------
# Export


def check_against_torch(proto: onnx.ModelProto, model: nn.Module, tile: int) -> float:
    """ONNX Runtime's probabilities for one random tile against PyTorch's: the largest difference (a file that
    differs by more than CHECK_TOLERANCE is not written)."""
    import onnxruntime as ort

    tiles = np.random.default_rng(0).integers(0, 256, (1, 3, tile, tile)).astype(np.float32) / 255
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ours = session.run([OUTPUT], {INPUT: tiles})[0]
    with torch.no_grad():
        reference = model(torch.from_numpy(tiles)).numpy()
    diff = float(np.abs(ours - reference).max())
    if not diff <= CHECK_TOLERANCE:
        raise RuntimeError(f"the exported graph gives probabilities {diff:.2g} away from PyTorch's on a test tile "
                           f"(at most {CHECK_TOLERANCE} expected): an exporter problem, nothing was written")
    return diff


def save(proto: onnx.ModelProto, out: Path) -> None:
    """Write `proto` to `out` as one file, atomically, making its folder if needed; a failure is one OutputError
    and leaves nothing (neither the file nor a folder made for it)."""
    import onnx

    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for path in out.parent.iterdir():  # what a killed export to this name left; never another file
            if path.name.startswith(f".{out.name}.") and is_temporary(path) and not process_alive(path):
                path.unlink(missing_ok=True)
        with atomic_path(out) as tmp:
            onnx.save_model(proto, str(tmp))
    except OSError as e:
        for folder in made:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break
        raise OutputError(f"could not write {out}: {e.strerror or e}; nothing was written") from None


def process_alive(temporary: Path) -> bool:
    """Whether the process a temporary file is named after (util.io.temporary_path) still runs."""
    try:
        os.kill(int(temporary.name.split(".")[-2]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_args(parser)
    parser.add_argument("--checkpoint", required=True, type=path_arg, help="checkpoint file (.pth) written by train.py")
    parser.add_argument("--out", required=True, type=path_arg, help="the ONNX file to write (FILE.onnx)")
    parser.add_argument("--weights", choices=("student", "ema"),
                        help="eval.weights: which weights to export (default: those the checkpoint was selected by)")
    parser.add_argument("--resolution", type=float, metavar="CM",
                        help="ground resolution of the imagery in cm per pixel, for Deepness (default: the dataset's: "
                             "LoveDA 30, Potsdam 5, DeepGlobe 50); give it for a model trained on own imagery")
    args = parser.parse_intermixed_args(argv)
    if args.resolution is not None and not args.resolution > 0:
        parser.error(f"--resolution {args.resolution} must be a positive number of cm per pixel")
    return args


def check_out(out: Path) -> None:
    """--out must name a .onnx file in a folder that exists or can be made and is writable, in names the file
    system allows; checked before work."""
    check_name_lengths(out, "--out", file=True)
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder; name the file to write, e.g. {out / 'model.onnx'}")
    if out.suffix.lower() != ".onnx":
        raise OutputError(f"--out {out}: name the file *.onnx (the file Deepness and ONNX Runtime open)")
    check_output_folder(out.parent, "--out's folder")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_from_args(args, {"eval.weights": args.weights})
    out = Path(args.out)
    require_exporter("deploy.export")
    check_out(out)
    tile, stride = resolve_window(cfg)
    info = DATASETS[cfg.dataset.name]
    resolution = args.resolution if args.resolution is not None else info.resolution_cm
    if resolution is None:
        raise ConfigError(f"no ground resolution is known for dataset {info.name}; give --resolution CM")
    percent = overlap_percent(tile, stride)

    from eval.eval import load_model

    segmenter, loaded = load_model(cfg, args.checkpoint, cfg.eval.weights, torch.device("cpu"))
    size = weight_bytes(segmenter)
    if size > MAX_WEIGHT_BYTES:
        raise ConfigError(f"model.backbone={cfg.model.backbone}: {size / 2**30:.1f} GiB of weights, more than "
                          "one ONNX file can hold (2 GiB)")
    model = DeployedSegmenter(segmenter.float()).eval()
    proto = to_onnx(model, tile, tile, INPUT, OUTPUT)
    diff = check_against_torch(proto, model, tile)

    checkpoint = Path(args.checkpoint).resolve()
    set_metadata(proto, {**deepness_metadata(cfg, tile, percent, resolution),
                         "rs_mtdf_dataset": info.name, "rs_mtdf_checkpoint": checkpoint.name,
                         "rs_mtdf_checkpoint_sha256": file_sha256(checkpoint), "rs_mtdf_weights": loaded.which,
                         **{f"rs_mtdf_checkpoint_{key}": loaded.source[key] for key in ("run_id", "iteration", "epoch")
                            if loaded.source.get(key) is not None},
                         "rs_mtdf_window": tile, "rs_mtdf_stride": stride,
                         "rs_mtdf_input": "RGB float32 in 0..1, (batch, 3, tile, tile); ImageNet normalisation inside",
                         "rs_mtdf_output": "class probabilities (softmax inside), (batch, classes, tile, tile)"})
    proto.doc_string = (f"RS-MTDF segmenter ({cfg.model.backbone} student, {cfg.train.method}, {loaded.which} weights) "
                        f"for {info.name}: input '{INPUT}' RGB 0..1 (batch, 3, {tile}, {tile}), output '{OUTPUT}' "
                        f"class probabilities (batch, {info.nclass}, {tile}, {tile})")
    save(proto, out)
    overlap = overlap_px(tile, percent)
    print(f"written {out}: ONNX opset {OPSET}, {INPUT} (batch, 3, {tile}, {tile}) RGB 0..1 -> {OUTPUT} "
          f"(batch, {info.nclass}, {tile}, {tile}); ONNX Runtime matches PyTorch within {diff:.1e}")
    print(f"Deepness: Segmentor, tile {tile} px, overlap {percent} % ({overlap} px, stride {tile - overlap}; "
          f"predict.py's stride is {stride}), resolution {resolution:g} cm/px"
          + ("" if args.resolution is not None else f" ({info.name}'s; --resolution for other imagery)"))
    return 0


if __name__ == "__main__":
    run_main(main)
