"""The datasets `dataset.prepare` can cut, one line each: adding one is its module (see dataset/spec.py), its
catalogue entry in util/catalog.py and its line here.

An explicit list, not registration on import: what is here does not depend on which modules were imported first.
"""

from __future__ import annotations

from dataset import deepglobe, loveda, potsdam
from dataset.spec import DatasetSpec

SPECS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    loveda.SPEC,
    potsdam.SPEC,
    deepglobe.SPEC,
)}


def spec_of(name: str) -> DatasetSpec:
    """The spec of dataset `name`; ValueError naming the known ones where it has none."""
    if name not in SPECS:
        raise ValueError(f"no dataset spec for '{name}': dataset.prepare knows {', '.join(sorted(SPECS))} "
                         f"(dataset/registry.py)")
    return SPECS[name]
