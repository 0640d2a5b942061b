"""Predict's inputs: the scene files named on the command line, found in folders, or listed in list files
(@FILE), each once and in order; files inside --out and files named like predict's outputs are never inputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from util.cli import user_path
from util.errors import DataError, short_reason

PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt")
IMAGE_SUFFIXES = PIL_SUFFIXES + RASTER_SUFFIXES
# What predict writes: a file named like this is an output of an earlier run, never an input.
OUTPUT_KINDS = ("mask", "color", "overlay", "legend")


def is_output_name(path: Path) -> bool:
    """Named like one of predict's outputs: <stem>_mask/_color/_overlay/_legend, or legend."""
    stem = path.stem.lower()
    return stem == "legend" or any(stem.endswith(f"_{kind}") for kind in OUTPUT_KINDS)


def is_inside(path: Path, folder: Path | None) -> bool:
    """Whether `path` lies inside `folder` (False when there is no folder)."""
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def read_list(path: Path) -> list[str]:
    """The entries of a list file: one path per line; blank lines and # comments skipped."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise DataError(f"list file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read list file {path}: {short_reason(e)}") from None
    entries = [line.strip() for line in lines]
    return [e for e in entries if e and not e.startswith("#")]


def collect_inputs(inputs: list[str], out: Path | None = None) -> list[Path]:
    """Scenes named directly, found in the named folders or listed in list files (@FILE), in order, one
    output stem each. Files inside `out` and files named like predict's outputs are left out (with a note)."""
    paths: list[Path] = []
    for text in inputs:
        if text.startswith("@") and not Path(text).exists():
            paths += collect_inputs_from_list(Path(user_path(text[1:])))
        else:
            paths += expand_input(Path(user_path(text)))
    first: dict[Path, Path] = {}
    for path in paths:
        first.setdefault(path.resolve(), path)
    unique = list(first.values())
    scenes = [path for path in unique if not (is_inside(path, out) or is_output_name(path))]
    skipped = len(unique) - len(scenes)
    if skipped:
        print(f"note: left out {skipped} file(s) inside --out or named like predict's outputs "
              f"(*_{', *_'.join(OUTPUT_KINDS)}, legend)", file=sys.stderr)
    if not scenes:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {' '.join(inputs)}"
                        + (" (files inside --out and predict's own outputs are not inputs)" if skipped else ""))
    check_distinct_stems(scenes)
    return scenes


def check_distinct_stems(paths: list[Path]) -> None:
    """A DataError naming two scenes whose outputs would have the same names."""
    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems:
            raise DataError(f"{path} and {stems[path.stem]} would write the same outputs ({path.stem}_*)")
        stems[path.stem] = path


def expand_input(path: Path, listed_in: Path | None = None) -> list[Path]:
    """A file as itself, a folder as its image files (sorted, hidden ones left out); a missing one is an error."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                      and not p.name.startswith("."))
    if path.is_file():
        return [path]
    raise DataError(f"input not found: {path}" + (f" (listed in {listed_in})" if listed_in else ""))


def collect_inputs_from_list(list_file: Path) -> list[Path]:
    """The inputs named in a list file, one path (file or folder) per line."""
    return [p for entry in read_list(list_file) for p in expand_input(Path(user_path(entry)), list_file)]
