"""What users watch: a log file and console lines on rank 0, TensorBoard scalars and images, the code version."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm


class _TqdmHandler(logging.StreamHandler):
    """Console lines that do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def setup_logger(run_dir: Path | None, is_main: bool, name: str = "rs_mtdf") -> logging.Logger:
    """INFO to the console and to `run_dir`/train.log on rank 0; warnings only on the other ranks."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    console = _TqdmHandler()
    console.setFormatter(fmt)
    logger.addHandler(console)
    # Per-interval training statistics go to the file only: the console shows them on the progress bar.
    metrics = logging.getLogger(f"{name}.metrics")
    metrics.handlers.clear()
    metrics.propagate = False
    metrics.setLevel(logger.level)
    if is_main and run_dir is not None:
        file = logging.FileHandler(run_dir / "train.log")
        file.setFormatter(fmt)
        logger.addHandler(file)
        metrics.addHandler(file)
    return logger


def code_version() -> str:
    """The git commit of the code (with '+dirty' for uncommitted changes), or 'unknown' outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("+dirty" if dirty else "")) if commit else "unknown"
