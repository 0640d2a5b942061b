"""Seeded split lists (docs/method.md §4): labelled / unlabelled per percent, val and test, from tile names alone.

Every function is pure: the input order of the names does not matter (they are sorted first) and all
shuffling comes from one random.Random(seed), so the same names and seed give byte-identical lists.

Counting rule, checked against the published counts for all three datasets: a share is floor(percent / 100 * n).
LoveDA's labelled sets are taken per domain and merged: Train has 1,366 rural + 1,156 urban images, i.e.
5,464 + 4,624 quadrants, so 1 % = 54 + 46 = 100, 5 % = 273 + 231 = 504, 10 % = 546 + 462 = 1,008 (rounding
to nearest would give 101 at 1 %). Potsdam: train = floor(0.6 * 5,472) = 3,283, val = floor(0.2 * 5,472) =
1,094, test the remaining 1,095; labelled floor of 1/5/10 % of 3,283 = 32/164/328. DeepGlobe: 12,045 / 4,015 /
4,015 and 120/602/1,204. A share is at least one tile so that tiny (synthetic) datasets stay usable; that
never changes the real counts. Each dataset's own rule (which names form a group, which percents) is in its
module (dataset/loveda.py, potsdam.py, deepglobe.py); this module holds what they share, and reads and writes
the lists.

Lists already on disk are rewritten only when the user asks by name (--replace-lists): identical ones are
kept, others refused (`keep_existing`); replacing writes every list before renaming any into place.
"""

from __future__ import annotations

import codecs
import math
import os
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from util.errors import DataError, OutputError
from util.io import atomic_paths, file_sha256

PERCENTS = ("1", "5", "10")
# The layout of a lists folder: the lists of a labelled share under <lists>/<percent>/, the shared ones beside.
PER_PERCENT = ("labeled", "unlabeled")
SHARED = ("val", "test")


def split_file(lists_dir: str | os.PathLike, kind: str, percent: str | None = None) -> Path:
    """The list of `kind` (labeled, unlabeled, val, test): <lists>/<percent>/<kind>.txt or <lists>/<kind>.txt."""
    if kind in PER_PERCENT:
        if percent is None:
            raise ValueError(f"the {kind} list belongs to a labelled share: give its percent")
        return Path(lists_dir) / str(percent) / f"{kind}.txt"
    if kind not in SHARED:
        raise ValueError(f"unknown split list {kind!r}; one of {', '.join(PER_PERCENT + SHARED)}")
    return Path(lists_dir) / f"{kind}.txt"


# The lists a training run reads (the test list is scored only after, and is checked then).
TRAINING_LISTS = ("labeled", "unlabeled", "val")


def training_list_digests(lists_dir: str | os.PathLike, percent: str) -> dict[str, str]:
    """{kind: SHA-256} of the labelled, unlabelled and val lists of a run (those that exist): what a checkpoint
    records, so that a resume or a rerun can tell that the lists it would train on have changed since."""
    paths = {kind: split_file(lists_dir, kind, percent) for kind in TRAINING_LISTS}
    return {kind: file_sha256(path) for kind, path in paths.items() if path.is_file()}


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


def shuffled(names: Iterable[str], rng: random.Random) -> list[str]:
    """`names` sorted, then shuffled by `rng`: the same whatever order they came in."""
    order = sorted(names)
    rng.shuffle(order)
    return order


def _labelled_sets(train_by_group: Mapping[str, list[str]], percents: Iterable[str]) -> dict[str, list[str]]:
    """Per percent, the merged prefix of each group's shuffled list: nested because they are prefixes."""
    return {p: sorted(n for names in train_by_group.values() for n in names[:share(float(p), len(names))])
            for p in percents}


def assemble(train_by_group: Mapping[str, list[str]], val: list[str], test: list[str],
             percents: Iterable[str]) -> Splits:
    """The lists from shuffled training names by group (each share drawn per group, then merged), val and test."""
    labeled = _labelled_sets(train_by_group, percents)
    train = [n for names in train_by_group.values() for n in names]
    unlabeled = {p: sorted(set(train) - set(chosen)) for p, chosen in labeled.items()}
    return Splits(labeled=labeled, unlabeled=unlabeled, val=sorted(val), test=sorted(test))


def ratio_splits(names: Iterable[str], seed: int, percents: Iterable[str] = PERCENTS) -> Splits:
    """Potsdam and DeepGlobe: shuffle, 60/20/20 train/val/test, labelled sets are prefixes of the shuffled train."""
    order = shuffled(names, random.Random(seed))
    n_train, n_val = share(60, len(order)), share(20, len(order))
    train = order[:n_train]
    return assemble({"all": train}, order[n_train:n_train + n_val], order[n_train + n_val:], percents)


# ---------------------------------------------------------------------------------------------------------
# The lists shipped in splits/ (dataset/shipped.py makes them again), and reading and writing lists

SHIPPED = Path(__file__).resolve().parents[1] / "splits"


def crop_line(folder: str, name: str) -> str:
    """The split-list line of crop `name` as dataset.prepare writes it: '<folder>/images/<name>.png <...masks...>'."""
    return " ".join(str(Path(folder, kind, f"{name}.png")) for kind in ("images", "masks"))


def read_list(path: str | os.PathLike) -> list[str]:
    """The lines of a split list, read the way a user wrote it; DataError (naming file and line) if it is not text.

    UTF-8 is expected; a UTF-8 byte-order mark is dropped, and Windows (CRLF) and old Mac (CR) line endings
    count as line ends, so line numbers are those an editor shows. UTF-16 (what some Windows editors save as
    "Unicode"), NUL bytes and any line that is not valid UTF-8 are refused.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"split file {path} is a folder, not a file")
    if not path.is_file():
        raise DataError(f"split file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read split file {path}: {e.strerror or e}") from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"split file {path} is UTF-16 text; split lists must be UTF-8 (save it as UTF-8)")
    data = data.removeprefix(codecs.BOM_UTF8)
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    text = []
    for number, raw in enumerate(lines, start=1):
        if b"\0" in raw:
            raise DataError(f"{path}:{number}: holds a NUL byte (UTF-16 or a binary file?); split lists must be "
                            f"UTF-8 text")
        try:
            text.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            shown = raw.decode("utf-8", "backslashreplace")[:80]
            raise DataError(f"{path}:{number}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1} of "
                            f"{shown!r}); split lists must be UTF-8 text") from None
    return text


def read_reference_splits(folder: str | os.PathLike, rename: Callable[[str], str]) -> Splits:
    """The authors' published lists under `folder` (<percent>/{labeled,unlabeled}.txt, val.txt, test.txt), each
    tile by the crop name `rename` gives its image path."""
    folder = Path(folder)

    def names(path: Path) -> list[str]:
        return sorted(rename(line.split()[0]) for line in read_list(path) if line.strip())

    percents = sorted((p.name for p in folder.iterdir() if split_file(folder, "labeled", p.name).is_file()), key=int)
    return Splits(labeled={p: names(split_file(folder, "labeled", p)) for p in percents},
                  unlabeled={p: names(split_file(folder, "unlabeled", p)) for p in percents},
                  val=names(split_file(folder, "val")), test=names(split_file(folder, "test")))


def published_texts(folder: str | os.PathLike, rename: Callable[[str], str]) -> dict[str, str]:
    """The texts of the published lists under `folder` (see `read_reference_splits`) as prepare writes lists of
    crops cut into <out>/images and <out>/masks, keyed by path under the lists folder."""
    return list_texts(read_reference_splits(folder, rename), lambda crop: crop_line("", crop))


def list_files(lists_dir: str | os.PathLike) -> list[Path]:
    """Every split list under `lists_dir`: <percent>/{labeled,unlabeled}.txt, val.txt, test.txt."""
    lists_dir = Path(lists_dir)
    per_percent = [path for kind in PER_PERCENT for path in lists_dir.glob(f"*/{kind}.txt")]
    shared = [split_file(lists_dir, kind) for kind in SHARED]
    return sorted([*per_percent, *(path for path in shared if path.is_file())])


def missing_tiles(lists_dir: str | os.PathLike, root: str | os.PathLike) -> tuple[int, str | None]:
    """How many files named by the lists under `lists_dir` are absent from `root`, and the first one (file:line)."""
    root, count, first = Path(root), 0, None
    seen: set[str] = set()
    for path in list_files(lists_dir):
        for number, line in enumerate(read_list(path), start=1):
            for rel in line.split():
                if rel in seen:
                    continue
                seen.add(rel)
                if not (root / rel).is_file():
                    count += 1
                    first = first or f"{root / rel} (listed in {path}:{number})"
    return count, first


def list_texts(splits: Splits, line: Callable[[str], str]) -> dict[str, str]:
    """The text of every list of `splits`, keyed by its path under the split folder ('val.txt', '1/labeled.txt')."""
    names = {"val.txt": splits.val, "test.txt": splits.test}
    for p in splits.labeled:
        names[split_file("", "labeled", p).as_posix()] = splits.labeled[p]
        names[split_file("", "unlabeled", p).as_posix()] = splits.unlabeled[p]
    return {rel: "".join(line(n) + "\n" for n in listed) for rel, listed in names.items()}


def line_counts(texts: Mapping[str, str]) -> dict[str, int]:
    """Lines per list of `list_texts`."""
    return {rel: text.count("\n") for rel, text in texts.items()}


def _same_bytes(path: Path, text: str) -> bool:
    """Whether `path` holds exactly `text` (an unreadable file does not)."""
    try:
        return path.read_bytes() == text.encode("utf-8")
    except OSError:
        return False


def first_change(texts: Mapping[str, str], folder: str | os.PathLike) -> str | None:
    """How writing `texts` into `folder` would change its lists, for the first list it would; None: no change."""
    folder = Path(folder)
    present = {path.relative_to(folder).as_posix() for path in list_files(folder)}
    for rel in sorted(present | set(texts)):
        if rel not in texts:
            return f"{folder / rel} would be removed"
        if rel not in present:
            return f"{folder / rel} would be added"
        if not _same_bytes(folder / rel, texts[rel]):
            return f"{folder / rel} would change"
    return None


def write_lists(texts: Mapping[str, str], folder: str | os.PathLike) -> None:
    """Make `folder` hold exactly the lists `texts`: each written before any is renamed into place, others removed."""
    folder = Path(folder)
    stale = [path for path in list_files(folder) if path.relative_to(folder).as_posix() not in texts]
    targets = [folder / rel for rel in texts]
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_paths(targets) as temporary:
            for path, text in zip(temporary, texts.values()):
                path.write_bytes(text.encode("utf-8"))
        for path in stale:
            path.unlink()
    except OSError as e:
        raise OutputError(f"cannot write the split lists into {folder}: {e.filename}: {e.strerror or e}") from None


def keep_existing(texts: Mapping[str, str], folder: str | os.PathLike, replace: bool, what: str) -> bool:
    """Whether `folder` already holds exactly `texts` (nothing to write); a DataError where it holds other lists
    and `replace` is off, since nothing overwrites split lists unless asked to by name."""
    if not list_files(folder):
        return False
    change = first_change(texts, folder)
    if change is None:
        return True
    if replace:
        return False
    raise DataError(f"{what} {folder} already holds other split lists ({change}); pass --replace-lists to replace "
                    f"them, or use another {what} folder")


def write_splits(splits: Splits, out_dir: str | os.PathLike, line: Callable[[str], str]) -> dict[str, int]:
    """Write <out>/<percent>/{labeled,unlabeled}.txt, <out>/val.txt, <out>/test.txt; returns the line counts."""
    texts = list_texts(splits, line)
    write_lists(texts, out_dir)
    return line_counts(texts)
