"""dataset/splits.py: the counts of SPEC §6 on real-size name lists, nesting, disjointness, reproducibility."""

import pytest

from dataset.splits import Splits, deepglobe_splits, loveda_splits, potsdam_splits, share, write_splits


def quadrants(prefix: str, images: int) -> list[str]:
    return [f"{prefix}_{i}_{q}" for i in range(images) for q in range(1, 5)]


@pytest.fixture(scope="module")
def loveda() -> Splits:
    return loveda_splits(quadrants("rural", 1366), quadrants("urban", 1156),
                         quadrants("val_rural", 992) + quadrants("val_urban", 677), seed=0)


@pytest.fixture(scope="module")
def potsdam() -> Splits:
    return potsdam_splits([f"top_potsdam_{t}_{k}" for t in range(38) for k in range(1, 145)], seed=0)


@pytest.fixture(scope="module")
def deepglobe() -> Splits:
    return deepglobe_splits([f"{t}_{k}" for t in range(803) for k in range(1, 26)], seed=0)


def counts(s: Splits) -> dict[str, int]:
    out = {"val": len(s.val), "test": len(s.test)}
    out.update({f"labeled_{p}": len(v) for p, v in s.labeled.items()})
    out.update({f"unlabeled_{p}": len(v) for p, v in s.unlabeled.items()})
    return out


def test_loveda_counts_match_the_spec(loveda):
    assert counts(loveda) == {"val": 3338, "test": 3338, "labeled_1": 100, "labeled_5": 504, "labeled_10": 1008,
                              "unlabeled_1": 9988, "unlabeled_5": 9584, "unlabeled_10": 9080}


def test_loveda_labelled_sets_are_drawn_per_domain(loveda):
    rural = [n for n in loveda.labeled["1"] if n.startswith("rural")]
    assert len(rural) == 54 and len(loveda.labeled["1"]) - len(rural) == 46


def test_potsdam_counts_match_the_spec(potsdam):
    assert counts(potsdam) == {"val": 1094, "test": 1095, "labeled_1": 32, "labeled_5": 164, "labeled_10": 328,
                               "unlabeled_1": 3251, "unlabeled_5": 3119, "unlabeled_10": 2955}


def test_deepglobe_counts_match_the_spec(deepglobe):
    assert counts(deepglobe) == {"val": 4015, "test": 4015, "labeled_1": 120, "labeled_5": 602,
                                 "labeled_10": 1204, "labeled_100": 12045, "unlabeled_1": 11925,
                                 "unlabeled_5": 11443, "unlabeled_10": 10841, "unlabeled_100": 0}


@pytest.mark.parametrize("name", ["loveda", "potsdam", "deepglobe"])
def test_labelled_sets_are_nested_and_all_lists_disjoint(name, request):
    s: Splits = request.getfixturevalue(name)
    percents = sorted(s.labeled, key=float)
    for small, large in zip(percents, percents[1:]):
        assert set(s.labeled[small]) < set(s.labeled[large])
    for p in percents:
        lists = [s.labeled[p], s.unlabeled[p], s.val, s.test]
        union = set().union(*map(set, lists))
        assert len(union) == sum(map(len, lists))
        assert set(s.labeled[p]) | set(s.unlabeled[p]) == set(s.labeled[percents[-1]]) | set(s.unlabeled[percents[-1]])


def test_splits_do_not_depend_on_input_order_but_on_the_seed():
    names = [f"t{i}" for i in range(200)]
    a = potsdam_splits(names, seed=3)
    assert a == potsdam_splits(list(reversed(names)), seed=3)
    assert a != potsdam_splits(names, seed=4)


def test_written_lists_are_byte_identical_for_the_same_seed(tmp_path):
    names = [f"t{i}" for i in range(50)]
    for run in ("a", "b"):
        write_splits(deepglobe_splits(names, seed=1), tmp_path / run, lambda n: f"images/{n}.png masks/{n}.png")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.txt"))
    assert len(files) == 10
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a" / "val.txt").read_text().splitlines()[0].startswith("images/t")


def test_share_floors_but_keeps_at_least_one_tile():
    assert share(1, 5464) == 54 and share(10, 12045) == 1204 and share(1, 8) == 1 and share(5, 0) == 0
