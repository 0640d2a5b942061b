"""Checkpoint files that survive crashes: written atomically, read without executing pickled code.

A checkpoint is written through util.io's atomic writes (a temporary file beside it, flushed to disk, then
renamed over the old one): a reader sees the old file or the new one, never a mix, and a kill or a full
disk mid-save leaves the previous file intact. A failed save removes its temporary file.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from util.errors import WeightsError, short_reason
from util.io import atomic_path, torch_load, write_text


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


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small text file (JSON, YAML) so that readers see the old or the new content, never half."""
    try:
        write_text(path, text)
    except OSError as e:
        raise WeightsError(f"could not write {path}: {e.strerror or e}") from None


class RunLock:
    """An exclusive lock on a run folder for the life of the process that holds it.

    flock locks belong to the open file: the kernel releases them when the process dies, however it dies, so
    a SIGKILLed run never leaves the folder locked.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self.created = not self.path.exists()
        self.file = open(self.path, "a+")  # noqa: SIM115 - held open for the run's life
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise WeightsError(f"{run_dir} is in use by another training run (pid {holder}); wait for it to "
                               f"finish, or use another save_path (or --save-path)") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()

    def release(self, remove: bool = False) -> None:
        """Unlock; `remove` also deletes a lock file this lock created (a run refused before it began)."""
        if self.file.closed:
            return
        if remove and self.created:
            self.path.unlink(missing_ok=True)
        self.file.close()


def load_own_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by this code, read with weights_only=True (no arbitrary code from the pickle)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    try:
        ckpt = torch_load(path, map_location)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError, ValueError) as e:
        raise WeightsError(f"cannot read checkpoint {path}: truncated or not a checkpoint of this code "
                           f"({short_reason(e)})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise WeightsError(f"{path} is not a checkpoint of this code (no 'model' entry)")
    return ckpt
