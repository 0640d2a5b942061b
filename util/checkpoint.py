"""Checkpoint files that survive crashes: written atomically, read without executing pickled code.

A checkpoint is first written to a temporary file in the same folder, flushed to disk, and then renamed
over the old one (`os.replace` is atomic on POSIX): a kill or a full disk mid-save leaves the previous
file intact and at worst a stale `.tmp` file, which the next save overwrites.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from util.errors import WeightsError, short_reason


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save `obj` to `path` so that `path` is either the old file or the complete new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WeightsError(f"could not write checkpoint {path}: {e.strerror or e}; the previous file is "
                           f"unchanged") from None
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small text file (JSON, YAML) so that readers see the old or the new content, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WeightsError(f"could not write {path}: {e.strerror or e}") from None


def _fsync_dir(folder: Path) -> None:
    # The rename itself is only durable once the folder's entry is on disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_own_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by this code, read with weights_only=True (no arbitrary code from the pickle)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError, ValueError) as e:
        raise WeightsError(f"cannot read checkpoint {path}: truncated or not a checkpoint of this code "
                           f"({short_reason(e)})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise WeightsError(f"{path} is not a checkpoint of this code (no 'model' entry)")
    return ckpt
