"""Training methods: each turns one batch into its losses; train.py runs the same loop for all of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from methods.common import Losses, StepContext
from methods.fixmatch import fixmatch_step
from methods.rs_mtdf import rs_mtdf_step
from methods.supervised import supervised_step
from methods.unimatch_v2 import unimatch_v2_step
from util.config import DISTILLING_METHODS, METHOD_NAMES


@dataclass(frozen=True)
class Method:
    """A training method: its step (a batch in, its losses out) and what the trainer must give it."""

    step: Callable[[StepContext, dict], Losses]
    # Whether the method reads the unlabelled list, and how many strong views each unlabelled item carries.
    unlabeled: bool
    n_strong: int
    # Whether it distils towards the frozen teachers: they are built, and the student carries translators
    # (and, with fusion, projections) for each enabled teacher. The config's DISTILLING_METHODS says the same.
    teachers: bool = False


METHODS: dict[str, Method] = {
    "supervised": Method(supervised_step, unlabeled=False, n_strong=0),
    "fixmatch": Method(fixmatch_step, unlabeled=True, n_strong=1),
    "unimatch_v2": Method(unimatch_v2_step, unlabeled=True, n_strong=2),
    "rs_mtdf": Method(rs_mtdf_step, unlabeled=True, n_strong=1, teachers=True),
}

# The config validates method names without importing this package: both lists must say the same.
if tuple(METHODS) != METHOD_NAMES or tuple(n for n, m in METHODS.items() if m.teachers) != DISTILLING_METHODS:
    raise ImportError(f"methods/__init__.py registers {list(METHODS)} (distilling: "
                      f"{[n for n, m in METHODS.items() if m.teachers]}), util/config.py names {list(METHOD_NAMES)} "
                      f"(distilling: {list(DISTILLING_METHODS)}); make them agree")
