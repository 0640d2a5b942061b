"""Seeded split lists (SPEC §6): labelled / unlabelled per percent, val and test, from tile names alone.

Every function is pure: the input order of the names does not matter (they are sorted first) and all
shuffling comes from one random.Random(seed), so the same names and seed give byte-identical lists.

Counting rule, checked against SPEC §6 for all three datasets: a share is floor(percent / 100 * n).
LoveDA's labelled sets are taken per domain and merged: Train has 1,366 rural + 1,156 urban images, i.e.
5,464 + 4,624 quadrants, so 1 % = 54 + 46 = 100, 5 % = 273 + 231 = 504, 10 % = 546 + 462 = 1,008 (rounding
to nearest would give 101 at 1 %). Potsdam: train = floor(0.6 * 5,472) = 3,283, val = floor(0.2 * 5,472) =
1,094, test the remaining 1,095; labelled floor of 1/5/10 % of 3,283 = 32/164/328. DeepGlobe: 12,045 / 4,015 /
4,015 and 120/602/1,204. A share is at least one tile so that tiny (synthetic) datasets stay usable; that
never changes the real counts.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PERCENTS = ("1", "5", "10")


@dataclass(frozen=True)
class Splits:
    """Tile names per list: labeled/unlabeled keyed by percent ('1', '5', '10', maybe '100')."""

    labeled: dict[str, list[str]]
    unlabeled: dict[str, list[str]]
    val: list[str]
    test: list[str]


def share(percent: float, n: int) -> int:
    """floor(percent / 100 * n), at least 1 when n > 0 (exact integer arithmetic for whole percents)."""
    count = math.floor(percent * n / 100 + 1e-9)
    return min(n, max(1, count)) if n else 0


def _shuffled(names: Iterable[str], rng: random.Random) -> list[str]:
    order = sorted(names)
    rng.shuffle(order)
    return order


def _labelled_sets(train_by_group: Mapping[str, list[str]], percents: Iterable[str]) -> dict[str, list[str]]:
    """Per percent, the merged prefix of each group's shuffled list: nested because they are prefixes."""
    return {p: sorted(n for names in train_by_group.values() for n in names[:share(float(p), len(names))])
            for p in percents}


def _assemble(train_by_group: Mapping[str, list[str]], val: list[str], test: list[str],
              percents: Iterable[str]) -> Splits:
    labeled = _labelled_sets(train_by_group, percents)
    train = [n for names in train_by_group.values() for n in names]
    unlabeled = {p: sorted(set(train) - set(chosen)) for p, chosen in labeled.items()}
    return Splits(labeled=labeled, unlabeled=unlabeled, val=sorted(val), test=sorted(test))


def loveda_splits(train_rural: Iterable[str], train_urban: Iterable[str], val_quadrants: Iterable[str],
                  seed: int) -> Splits:
    """LoveDA: labelled per domain then merged; the official Val quadrants shuffled and halved into val/test."""
    rng = random.Random(seed)
    groups = {"rural": _shuffled(train_rural, rng), "urban": _shuffled(train_urban, rng)}
    official_val = _shuffled(val_quadrants, rng)
    half = len(official_val) // 2
    return _assemble(groups, official_val[:half], official_val[half:], PERCENTS)


def ratio_splits(names: Iterable[str], seed: int, percents: Iterable[str] = PERCENTS) -> Splits:
    """Potsdam and DeepGlobe: shuffle, 60/20/20 train/val/test, labelled sets are prefixes of the shuffled train."""
    order = _shuffled(names, random.Random(seed))
    n_train, n_val = share(60, len(order)), share(20, len(order))
    train = order[:n_train]
    return _assemble({"all": train}, order[n_train:n_train + n_val], order[n_train + n_val:], percents)


def potsdam_splits(crops: Iterable[str], seed: int) -> Splits:
    """ISPRS Potsdam crops: 3,283 / 1,094 / 1,095 on the full data; labelled 32 / 164 / 328."""
    return ratio_splits(crops, seed)


def deepglobe_splits(crops: Iterable[str], seed: int) -> Splits:
    """DeepGlobe crops: 12,045 / 4,015 / 4,015; labelled 120 / 602 / 1,204 and 100 % (no unlabelled)."""
    return ratio_splits(crops, seed, PERCENTS + ("100",))


def _write_atomic(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


def write_splits(splits: Splits, out_dir: str | os.PathLike, line: Callable[[str], str]) -> dict[str, int]:
    """Write <out>/<percent>/{labeled,unlabeled}.txt, <out>/val.txt, <out>/test.txt; returns the line counts."""
    out_dir = Path(out_dir)
    counts: dict[str, int] = {}
    files = {"val.txt": splits.val, "test.txt": splits.test}
    for p in splits.labeled:
        files[f"{p}/labeled.txt"] = splits.labeled[p]
        files[f"{p}/unlabeled.txt"] = splits.unlabeled[p]
    for rel, names in files.items():
        _write_atomic(out_dir / rel, [line(n) for n in names])
        counts[rel] = len(names)
    return counts
