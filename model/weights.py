"""Reading weight files and checking them against a module, with one-line errors that say what to do."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from util.errors import WeightsError, short_reason
from util.io import torch_file_damage, torch_load

SHOWN = 3  # mismatching keys named in an error message


def require_file(path: str | os.PathLike, config_key: str) -> Path:
    """The path as a Path, or a WeightsError naming the config key and where the file belongs."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{config_key}: weight file {path} not found; put it there (see pretrained/README.md) "
                           f"or point {config_key} at it")
    return path


def check_weight_files(files: Mapping[str, str | None]) -> None:
    """Raise one WeightsError naming every missing file of {config key: path} (None means no file needed)."""
    missing = [(key, path) for key, path in files.items() if path is not None and not Path(path).is_file()]
    if len(missing) == 1:
        require_file(missing[0][1], missing[0][0])
    if missing:
        listed = ", ".join(f"{key}={path}" for key, path in missing)
        raise WeightsError(f"{len(missing)} weight files not found: {listed}; put them there (see "
                           f"pretrained/README.md) or point the keys at them")


def is_torchscript(path: Path) -> bool:
    """True for a TorchScript archive (OpenAI's CLIP release), which torch.load cannot read safely."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def load_tensors(path: Path, config_key: str) -> dict:
    """The state dict in `path`, read safely onto the CPU (util.io.torch_load); unreadable: a WeightsError."""
    try:
        obj = torch_load(path)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means the file is not ours to read
        damage = torch_file_damage(path, e)
        if damage:
            raise WeightsError(f"{config_key}: weight file {path} is {damage}; fetch or copy it again") from None
        raise WeightsError(f"{config_key}: cannot read {path} as a weight file ({short_reason(e)})") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{config_key}: {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str | None:
    """A short description of missing, unexpected and wrongly shaped keys, or None when they agree."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)} expected"
              for k in expected if k in given and tuple(given[k].shape) != tuple(expected[k].shape)]
    parts = []
    for label, items in (("wrong shapes", shapes), ("missing", missing), ("unexpected", unexpected)):
        if items:
            more = f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else ""
            parts.append(f"{label}: {', '.join(items[:SHOWN])}{more}")
    return "; ".join(parts) or None


def load_checked(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load `state` into `module` strictly, or raise a WeightsError that starts with `what`."""
    problem = mismatch(module.state_dict(), state)
    if problem:
        raise WeightsError(f"{what} does not fit the model: {problem}")
    module.load_state_dict(state, strict=True)
