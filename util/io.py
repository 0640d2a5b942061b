"""Output folders: checked once, the same way, by every entry point before it does any work."""

from __future__ import annotations

import os
from pathlib import Path

from util.errors import OutputError


def check_output_folder(path: str | os.PathLike, what: str) -> Path:
    """`path` as a folder that exists or can be created and written to; else one OutputError naming `what`.

    Nothing is created here: a command refused later for another reason leaves no folder behind.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise OutputError(f"{what} {path} is a broken symbolic link")
    if path.exists():
        if not path.is_dir():
            raise OutputError(f"{what} {path} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{what} {path} is not writable")
        return path
    ancestor = path.absolute().parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{what} {path} cannot be created: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path} cannot be created: {ancestor} is not writable")
    return path
