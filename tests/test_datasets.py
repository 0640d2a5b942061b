"""dataset/spec.py and dataset/registry.py: a dataset is one spec, listed once, and nothing else branches on its
name; dataset.prepare's renamed flags are refused naming the new ones."""

import ast
from pathlib import Path

import pytest

from dataset import prepare as prepare_cli
from dataset.registry import SPECS, spec_of
from util.catalog import DATASETS

REPO = Path(__file__).resolve().parents[1]


def test_every_spec_carries_its_catalogue_entry():
    assert {"loveda", "potsdam", "deepglobe"} <= set(SPECS)
    for name, spec in SPECS.items():
        assert spec.name == name and spec.info is DATASETS[name]


def test_a_dataset_without_a_spec_is_refused_naming_those_there_are():
    with pytest.raises(ValueError) as info:
        spec_of("no_such_dataset")
    assert str(info.value).startswith(f"no dataset spec for 'no_such_dataset': dataset.prepare knows "
                                      f"{', '.join(sorted(SPECS))}")


def name_comparisons(path: Path) -> list[str]:
    """`x == "potsdam"`, `x != "loveda"`, `x in ("potsdam", ...)` and the like in `path`, as 'file:line'."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        constants = [c for side in sides for c in ([side, *getattr(side, "elts", [])])
                     if isinstance(c, ast.Constant) and c.value in DATASETS]
        if constants:
            found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_no_code_branches_on_a_dataset_name():
    """What differs between datasets lives in their specs (and the catalogue), not in `if dataset == ...` chains."""
    tops = ("util", "model", "methods", "dataset", "eval", "scripts", "experiments")
    files = [REPO / "train.py"] + [p for top in tops for p in (REPO / top).rglob("*.py")
                                   if not p.name.startswith("test_")]
    assert [hit for path in files for hit in name_comparisons(path)] == []


@pytest.mark.parametrize("argv, new", [
    (["--splits", "lists"], "--lists"),
    (["--splits=lists"], "--lists"),
    (["--split", "lists"], "--lists"),  # an abbreviation of the old flag
    (["--lists", "lists", "--resplit", "--replace-splits"], "--replace-lists"),
])
def test_a_renamed_prepare_flag_is_refused_naming_the_new_one(tmp_path, capsys, argv, new):
    with pytest.raises(SystemExit) as info:
        prepare_cli.main(["potsdam", "--raw", str(tmp_path), "--out", str(tmp_path / "out"), *argv])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"was renamed: did you mean {new}?")
    assert not (tmp_path / "out").exists() and not (tmp_path / "lists").exists()
