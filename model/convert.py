"""Segmenter checkpoints: ours, and the authors' RS-MTDF release converted to our parameter names."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from model.encoder import SIZES, dinov2_key
from model.segmenter import Segmenter
from model.weights import mismatch, require_file
from util.config import Config, describe_differences, model_differences
from util.errors import WeightsError, short_reason
from util.io import torch_file_damage, torch_load
from util.run import checkpoint_identity

# The authors keep their frozen teachers inside every checkpoint; ours are rebuilt from pretrained/.
TEACHER_PREFIXES = ("Dino_teacher_model.", "clip_model.", "dino_teacher_model.", "clip_teacher_model.")
# Parameters the reference builds but never uses: DINOv2's pre-training mask token, and the residual unit
# for the (absent) skip input of the deepest DPT fusion block.
UNUSED = ("backbone.mask_token", "head.scratch.refinenet4.resConfUnit1.")

RENAMES: list[tuple[str, str | Callable[[re.Match[str]], str]]] = [  # authors' key -> ours, the first match
    (r"^backbone\.(.*)$", lambda m: "encoder." + dinov2_key(m[1])),
    (r"^head\.projects\.", "head.projects."),
    (r"^head\.resize_layers\.", "head.resize."),
    (r"^head\.scratch\.layer(\d)_rn\.", lambda m: f"head.layer_rn.{int(m[1]) - 1}."),
    (r"^head\.scratch\.refinenet(\d)\.resConfUnit(\d)\.", lambda m: f"head.fusion.{int(m[1]) - 1}.rcu{m[2]}."),
    (r"^head\.scratch\.refinenet(\d)\.out_conv\.", lambda m: f"head.fusion.{int(m[1]) - 1}.out_conv."),
    (r"^head\.scratch\.output_conv\.", "head.output."),
    (r"^feature_translator_for_(dino|clip)\.layer\.", r"translators.\1."),
    (r"^project_(dino|clip)\.", r"projections.\1."),
]


def is_authors_layout(state: dict[str, torch.Tensor]) -> bool:
    """True for the authors' key names (module.backbone.*, backbone.*), False for ours (encoder.*)."""
    return any(k.removeprefix("module.").startswith("backbone.") for k in state)


def convert_authors_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' model state dict -> ours: 'module.' stripped, teachers and unused keys dropped, all renamed."""
    out: dict[str, torch.Tensor] = {}
    leftover = []
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith(TEACHER_PREFIXES) or key.startswith(UNUSED):
            continue
        for pattern, repl in RENAMES:
            new, n = re.subn(pattern, repl, key, count=1)
            if n:
                out[new] = value
                break
        else:
            leftover.append(key)
    if leftover:
        raise WeightsError(f"authors' checkpoint has keys this model does not know: {', '.join(leftover[:3])}"
                           + (f" (+{len(leftover) - 3} more)" if len(leftover) > 3 else ""))
    for part in ("encoder.", "head."):
        if not any(k.startswith(part) for k in out):
            raise WeightsError(f"authors' checkpoint has no {part.rstrip('.')} weights")
    return out


def _numpy_globals() -> list:
    # The authors' files may hold numpy scalars (e.g. previous_best); these types only rebuild numbers.
    return [np._core.multiarray.scalar, np.dtype,  # type: ignore[attr-defined]  # numpy 2's module, unstubbed
            *(getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType"))]


def read_checkpoint(path: Path) -> dict:
    """util.io.torch_load with numpy scalars allowed; never unpickles arbitrary objects."""
    try:
        obj = torch_load(path, allow=_numpy_globals())
    except Exception as e:  # noqa: BLE001 - every failure here is a file the user handed us
        damage = torch_file_damage(path, e)
        if damage:
            raise WeightsError(f"checkpoint {path} is {damage}") from None
        try:
            needs = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001
            needs = []
        why = f"it needs {', '.join(needs[:3])} to unpickle" if needs else short_reason(e)
        raise WeightsError(f"checkpoint {path}: cannot be read safely (weights_only=True): {why}; "
                           "not a checkpoint of this project or of the RS-MTDF release") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"checkpoint {path}: holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def _describe(state: dict[str, torch.Tensor], model: Segmenter, path: Path) -> str | None:
    """The most telling difference between a checkpoint and the model built from the config, in words."""
    out = state.get("head.output.2.weight")
    if out is not None and out.shape[0] != model.nclass:
        return f"checkpoint {path} was trained for {out.shape[0]} classes, config says {model.nclass} (dataset.nclass)"
    pos = state.get("encoder.pos_embed")
    depth = len({k.split(".")[2] for k in state if k.startswith("encoder.blocks.")})
    if pos is not None:
        theirs = next((n for n, s in SIZES.items() if (s.embed_dim, s.depth) == (pos.shape[-1], depth)), "unknown")
        if theirs != model.backbone:
            return f"checkpoint {path} holds a {theirs} backbone, config says {model.backbone} (model.backbone)"
    translators = sorted({k.split(".")[1] for k in state if k.startswith("translators.")})
    ours = sorted(model.translators.keys())
    if translators != ours:
        return (f"checkpoint {path} has translators for {translators or 'no teachers'}, the config distils "
                f"{ours or 'none'} (train.method, teachers.*.enabled)")
    projections = sorted({k.split(".")[1] for k in state if k.startswith("projections.")})
    if projections != sorted(model.projections.keys()):
        return (f"checkpoint {path} fuses {projections or 'no teachers'}, the config fuses "
                f"{sorted(model.projections.keys()) or 'none'} (distill.fusion_weights)")
    return None


def check_model_settings(saved: dict | None, cfg: Config | None, path: Path) -> None:
    """Refuse a checkpoint trained under other values of the keys that change the model's output."""
    if not isinstance(saved, dict) or cfg is None:
        return  # the authors' checkpoints carry no config; their weights were checked by shape
    diffs = model_differences(saved, cfg.to_dict())
    if diffs:
        raise WeightsError(f"checkpoint {path} was trained with other model settings: {describe_differences(diffs)}; "
                           f"use its run's config (--config {path.parent / 'config.yaml'}) or set those keys")


class LoadedWeights(NamedTuple):
    """What `load_segmenter_weights` loaded: 'student' or 'ema', and which checkpoint that is (util.run's
    checkpoint_identity: run id, iteration, epoch, selection rule; None where the file does not say)."""

    which: str
    source: dict[str, Any]


def load_segmenter_weights(model: Segmenter, path: str | os.PathLike,
                           which: Literal["student", "ema"] | None = None, cfg: Config | None = None) -> LoadedWeights:
    """Load the student or EMA weights of our checkpoint or the authors' (latest.pth / best.pth) into `model`.

    `which` None takes the weights the checkpoint was selected by (its `selected_by`, written from
    train.best_by), or the student where it does not say (the authors' files).
    """
    path = require_file(path, "checkpoint")
    ckpt = read_checkpoint(path)
    if which is None:
        which = "ema" if ckpt.get("selected_by") == "ema" else "student"
    entry = "model" if which == "student" else "model_ema"
    state = ckpt.get(entry)
    if not isinstance(state, dict):
        raise WeightsError(f"checkpoint {path}: no '{entry}' weights (entries: {', '.join(map(str, list(ckpt)[:6]))})")
    if is_authors_layout(state):
        state = convert_authors_state_dict(state)
    problem = _describe(state, model, path)
    if problem is None:
        detail = mismatch(model.state_dict(), state)
        problem = f"checkpoint {path} ({entry}) does not fit the model: {detail}" if detail else None
    if problem:
        raise WeightsError(problem)
    check_model_settings(ckpt.get("config"), cfg, path)
    model.load_state_dict(state, strict=True)
    return LoadedWeights(which, checkpoint_identity(ckpt))


if __name__ == "__main__":
    # A library, not a command: checkpoints of the authors' release load as they are.
    import sys

    print("error: model.convert has no command line: eval/eval.py and deploy/predict.py load the authors' "
          "checkpoints as they are (--checkpoint), converting their key names on the way", file=sys.stderr)
    sys.exit(2)
