"""Time and peak memory of deploy/predict.py on synthetic GeoTIFF scenes of growing size.

    python scripts/bench_predict.py                          # 2000 and 20000 px, tiny random model
    python scripts/bench_predict.py --size 2000 --size 6000 --threads 1 -- --window 112 --stride 74

Each scene is a synthetic 3-band uint8 GeoTIFF (EPSG:32633, 0.5 m pixels, tiled) written under --work.
Without --checkpoint the model is the tiny student of configs/demo.yaml, randomly initialised and saved in
this project's checkpoint format (the numbers measure the pipeline, not a trained model). predict.py runs
as its own process; its peak resident memory is the kernel's account of that process (os.wait4's
ru_maxrss, what /usr/bin/time -v reports), its time the wall-clock time of the whole command, model
loading and writing of the GeoTIFFs included. Arguments after `--` go to predict.py.

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
    parser.add_argument("--size", type=int, action="append", help="scene side in pixels (repeatable; "
                                                                    "default 2000 and 20000)")
    parser.add_argument("--config", type=user_path, default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--checkpoint", type=user_path,
                        help="checkpoint to run (default: a random tiny one, see above)")
    parser.add_argument("--work", type=user_path, default="/tmp/bench_predict", help="folder for scenes and outputs")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for predict.py (default: torch's)")
    parser.add_argument("--keep", action="store_true", help="keep the outputs (default: removed after each run)")
    args = parser.parse_args(argv)
    sizes = args.size or [2000, 20000]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint) if args.checkpoint else work / "tiny_random.pth"
    if not args.checkpoint and not checkpoint.exists():
        subprocess.run([sys.executable, __file__, "--write-checkpoint", args.config, str(checkpoint)], check=True)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)

    rows = []
    for size in sizes:
        scene = work / f"scene_{size}.tif"
        if not scene.exists():
            print(f"writing {scene}", file=sys.stderr)
            subprocess.run([sys.executable, __file__, "--write-scene", str(scene), str(size)], check=True)
        out = work / f"pred_{size}"
        cmd = [sys.executable, str(REPO / "deploy" / "predict.py"), "--config", args.config, "--checkpoint",
               str(checkpoint), str(scene), "--out", str(out), *extra]
        print("$ " + " ".join(cmd), file=sys.stderr)
        code, seconds, peak = run_measured(cmd, env)
        if code != 0:
            print(f"predict.py exited with {code}", file=sys.stderr)
            return code
        rows.append((size, seconds, peak))
        if not args.keep:
            for path in out.iterdir():
                path.unlink()
            out.rmdir()

    print("| scene | time | peak RSS |\n|---|---:|---:|")
    for size, seconds, peak in rows:
        print(f"| {size} x {size} | {seconds:.0f} s | {peak:.0f} MB |")
    if len(rows) > 1:
        print(f"peak RSS of the largest against the smallest: {rows[-1][2] / rows[0][2]:.2f}x")
    return 0


if __name__ == "__main__":
    run_main(main)
