"""Scene throughput, time and peak memory of deploy/predict.py, each backend side by side with the reference way.

    python scripts/bench_predict.py                                  # 2000 px, tiny random model, every variant
    python scripts/bench_predict.py --size 2000 --size 6000 --threads 2 --repeat 3
    python scripts/bench_predict.py --config configs/loveda.yaml --size 1500 -- --window 518

Each scene is a synthetic 3-band uint8 GeoTIFF (EPSG:32633, 0.5 m pixels, tiled) written under --work.
Without --checkpoint the model is the config's student (by default the tiny one of configs/demo.yaml),
randomly initialised and saved in this project's checkpoint format: the numbers measure the pipeline, not a
trained model. Every variant maps the same scene with the same windows:

- `reference`: the reference way, one window per forward, fp32 PyTorch eager, windows averaged uniformly
  (no Gaussian weights): `--backend torch --batch-size 1 --blend uniform train.precision=fp32`;
- `torch`: predict.py's PyTorch path (eval.batch_size windows per forward, Gaussian blending);
- `onnxruntime`: the same with the model run by ONNX Runtime (`--backend onnxruntime`), its graph exported
  beforehand into --work's cache by a first run on a small scene (that run's time is printed: the cost of the
  first use of a checkpoint and window).

predict.py runs as its own process; time is the wall-clock time of the whole command (model loading and the
COG outputs included), megapixels per second the scene's pixels over it, peak memory the kernel's account of
that process (os.wait4's ru_maxrss, what /usr/bin/time -v reports). With --repeat N the variants take turns N
times and each keeps its fastest run (other jobs on a shared machine only ever slow a run down). Arguments
after `--` go to predict.py.

Scenes and the checkpoint are made by child processes, so that this one stays small: Linux carries a
process's peak over fork and exec into its child's ru_maxrss, and a parent that had held a scene in memory
would inflate the child's figure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: the repository root, not scripts/, first
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import methods  # noqa: F401  (registers the training methods a config may name)
from util.cli import run_main, user_path

REPO = Path(__file__).resolve().parents[1]


def write_scene(path: Path, size: int) -> None:
    """A size x size RGB GeoTIFF, written by strips of rows (this process stays small)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
               "crs": "EPSG:32633", "transform": from_origin(389_000.0, 5_819_000.0, 0.5, 0.5),
               "tiled": True, "blockxsize": 256, "blockysize": 256, "BIGTIFF": "IF_SAFER"}
    rng = np.random.default_rng(0)
    xx = np.arange(size)[None, :]
    with rasterio.open(path, "w", **profile) as dst:
        for top in range(0, size, 1024):
            rows = min(1024, size - top)
            yy = np.arange(top, top + rows)[:, None]
            fields = [np.sin(xx / 97.0) * np.cos(yy / 131.0), np.sin((xx + yy) / 211.0), np.cos(xx / 53.0 - yy / 71.0)]
            data = np.stack([(f + 1) * 110 + rng.integers(0, 30, (rows, size)) for f in fields]).astype(np.uint8)
            dst.write(data, window=((top, top + rows), (0, size)))


def random_checkpoint(config: str, path: Path) -> None:
    """The config's student, randomly initialised, saved as train.py saves a checkpoint."""
    import torch

    from model.segmenter import build_segmenter
    from util.config import load_config

    cfg = load_config(config, ["model.pretrained=null"])
    torch.manual_seed(0)
    state = build_segmenter(cfg).state_dict()
    torch.save({"model": state, "model_ema": state, "config": cfg.to_dict()}, path)


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[int, float, float]:
    """(exit status, wall seconds, peak RSS in MB) of `cmd` as a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, seconds, usage.ru_maxrss / 1024  # Linux: kilobytes


# The variants, in the order they run and are listed: predict.py's flags for each.
VARIANTS = {"reference": ["--backend", "torch", "--batch-size", "1", "--blend", "uniform", "train.precision=fp32"],
            "torch": ["--backend", "torch"],
            "onnxruntime": ["--backend", "onnxruntime"]}
WARM_UP_SIZE = 256


def ensure_scene(work: Path, size: int) -> Path:
    """The size x size scene under `work`, written by a child process the first time."""
    scene = work / f"scene_{size}.tif"
    if not scene.exists():
        print(f"writing {scene}", file=sys.stderr)
        subprocess.run([sys.executable, __file__, "--write-scene", str(scene), str(size)], check=True)
    return scene


def predict_command(args: argparse.Namespace, checkpoint: Path, scene: Path, out: Path, variant: str,
                    extra: list[str]) -> list[str]:
    return [sys.executable, str(REPO / "deploy" / "predict.py"), "--config", args.config, "--checkpoint",
            str(checkpoint), str(scene), "--out", str(out), *extra, *VARIANTS[variant]]


def remove_outputs(out: Path) -> None:
    if out.is_dir():
        for path in out.iterdir():
            path.unlink()
        out.rmdir()


def table(rows: list[dict[str, float | str]]) -> str:
    """Markdown: per scene and variant the time, megapixels per second, the ratios and peak memory."""
    lines = ["| scene | variant | time | MP/s | vs reference | vs PyTorch | peak RSS |",
             "|---|---|---:|---:|---:|---:|---:|"]
    by_scene: dict[float | str, dict[str, float]] = {}
    for row in rows:
        by_scene.setdefault(row["size"], {})[str(row["variant"])] = float(row["seconds"])
    for row in rows:
        times, seconds = by_scene[row["size"]], float(row["seconds"])
        ratios = [f"{times[base] / seconds:.2f}x" if base in times else "-" for base in ("reference", "torch")]
        lines.append(f"| {row['size']} x {row['size']} | {row['variant']} | {seconds:.1f} s | "
                     f"{float(row['size']) ** 2 / 1e6 / seconds:.2f} | {ratios[0]} | {ratios[1]} | "
                     f"{float(row['peak_mb']):.0f} MB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--write-scene"]:
        write_scene(Path(argv[1]), int(argv[2]))
        return 0
    if argv[:1] == ["--write-checkpoint"]:
        random_checkpoint(argv[1], Path(argv[2]))
        return 0
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, action="append", help="scene side in pixels (repeatable; default 2000)")
    parser.add_argument("--config", type=user_path, default=str(REPO / "configs" / "demo.yaml"),
                        help="config of the model and its windows (default configs/demo.yaml: the tiny student)")
    parser.add_argument("--checkpoint", type=user_path,
                        help="checkpoint to run (default: the config's student with random weights, saved under "
                             "--work)")
    parser.add_argument("--work", type=user_path, default="/tmp/bench_predict",
                        help="folder for scenes, outputs and the ONNX cache (default /tmp/bench_predict)")
    parser.add_argument("--variant", action="append", choices=tuple(VARIANTS),
                        help="what to run (repeatable; default: all of them)")
    parser.add_argument("--threads", type=int, help="predict.py's --threads (default: its own)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each variant; the fastest counts (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the outputs (default: removed after each run)")
    args = parser.parse_args(argv)
    sizes = args.size or [2000]
    variants = [v for v in VARIANTS if v in (args.variant or VARIANTS)]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint) if args.checkpoint else work / f"{Path(args.config).stem}_random.pth"
    if not args.checkpoint and not checkpoint.exists():
        subprocess.run([sys.executable, __file__, "--write-checkpoint", args.config, str(checkpoint)], check=True)
    # The graph goes into --work's cache, never the user's; the first run exports it, outside the timings.
    env = {**os.environ, "RS_MTDF_CACHE": str(work / "cache")}
    extra += ["--threads", str(args.threads)] if args.threads else []
    if "onnxruntime" in variants:
        scene, out = ensure_scene(work, WARM_UP_SIZE), work / "pred_warm_up"
        code, seconds, _ = run_measured(predict_command(args, checkpoint, scene, out, "onnxruntime", extra), env)
        if code != 0:
            print(f"predict.py exited with {code}", file=sys.stderr)
            return code
        remove_outputs(out)
        print(f"first use of ONNX Runtime (graph taken from or exported into {work / 'cache'}, then a "
              f"{WARM_UP_SIZE}-px scene): {seconds:.1f} s", file=sys.stderr)

    rows: list[dict[str, float | str]] = []
    for size in sizes:
        scene = ensure_scene(work, size)
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.repeat):
            for variant in variants:
                out = work / f"pred_{size}_{variant}"
                cmd = predict_command(args, checkpoint, scene, out, variant, extra)
                print("$ " + " ".join(cmd), file=sys.stderr)
                code, seconds, peak = run_measured(cmd, env)
                if code != 0:
                    print(f"predict.py exited with {code}", file=sys.stderr)
                    return code
                if variant not in best or seconds < best[variant][0]:
                    best[variant] = (seconds, peak)
                if not args.keep:
                    remove_outputs(out)
        rows += [{"size": size, "variant": v, "seconds": best[v][0], "peak_mb": best[v][1]} for v in variants]
    print(table(rows))
    return 0


if __name__ == "__main__":
    run_main(main)
