"""Checkpoint files that survive crashes: written atomically, read without executing pickled code.

A checkpoint is written through util.io's atomic writes (a temporary file beside it, flushed to disk, then
renamed over the old one): a reader sees the old file or the new one, never a mix, and a kill or a full
disk mid-save leaves the previous file intact. A failed save removes its temporary file.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from util.errors import WeightsError, short_reason
from util.io import atomic_path, torch_file_damage, torch_load


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save `obj` to `path` so that `path` is either the old file or the complete new one."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
    except (OSError, RuntimeError) as e:
        # A full disk surfaces as OSError from the file, or as RuntimeError from torch's zip writer.
        reason = e.strerror if isinstance(e, OSError) and e.strerror else short_reason(e)
        raise WeightsError(f"could not write checkpoint {path}: {reason}; the previous file is unchanged") from None


def load_own_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by this code, read with weights_only=True (no arbitrary code from the pickle)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    try:
        ckpt = torch_load(path, map_location)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError, ValueError) as e:
        damage = torch_file_damage(path, e)
        if damage:
            raise WeightsError(f"checkpoint {path} is {damage}") from None
        raise WeightsError(f"cannot read checkpoint {path}: not a checkpoint of this code "
                           f"({short_reason(e)})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise WeightsError(f"{path} is not a checkpoint of this code (no 'model' entry)")
    return ckpt
