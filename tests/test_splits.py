"""dataset/splits.py: the published counts on real-size name lists, nesting, disjointness, reproducibility."""

import hashlib
from pathlib import Path

import pytest

from dataset.deepglobe import deepglobe_splits
from dataset.loveda import loveda_crop_names, loveda_published_splits, loveda_splits
from dataset.potsdam import potsdam_splits
from dataset.shipped import reference_crop_name
from dataset.splits import SHIPPED, Splits, crop_line, list_files, share, write_splits


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


# ---------------------------------------------------------------------------------------------------------
# The lists shipped in splits/

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference-splits"
# sha256 over each shipped list's relative path and bytes: pins the published membership where ../shared (the
# authors' lists) is not at hand, and LoveDA's seeded lists everywhere.
SHIPPED_DIGESTS = {
    "potsdam": "e1e13803646bd4be1faa9c4b75d16f8076edfc1353bc281c0f234028062a8c5a",
    "deepglobe": "3335767b1bc21add2238f00d96402a4aa4bae13347cdec009f010ded7d86aca4",
    "loveda": "5b0d3963520ebdc2ce11558656f5c03708c5db9d81af14812eda8c441c428413",
}


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in list_files(folder):
        h.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def crop_names(path: Path) -> set[str]:
    return {Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()}


@pytest.mark.parametrize("dataset", sorted(SHIPPED_DIGESTS))
def test_shipped_lists_are_the_pinned_ones(dataset):
    assert digest(SHIPPED / dataset) == SHIPPED_DIGESTS[dataset]


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="the authors' published lists (../shared) are not at hand")
@pytest.mark.parametrize("dataset", ["potsdam", "deepglobe"])
def test_shipped_potsdam_and_deepglobe_lists_hold_exactly_the_published_tiles(dataset):
    published = sorted(p.relative_to(REFERENCE / dataset) for p in (REFERENCE / dataset).rglob("*.txt"))
    assert published == [f.relative_to(SHIPPED / dataset) for f in list_files(SHIPPED / dataset)]
    for rel in published:
        theirs = {reference_crop_name(dataset, line.split()[0])
                  for line in (REFERENCE / dataset / rel).read_text().splitlines() if line.strip()}
        assert crop_names(SHIPPED / dataset / rel) == theirs, rel


def test_shipped_lines_are_what_prepare_writes():
    assert (SHIPPED / "potsdam" / "val.txt").read_text().splitlines()[0] == \
        "images/top_potsdam_2_10_107.png masks/top_potsdam_2_10_107.png"
    assert (SHIPPED / "deepglobe" / "1" / "labeled.txt").read_text().splitlines()[0] == \
        "images/100694_19.png masks/100694_19.png"
    assert (SHIPPED / "deepglobe" / "100" / "unlabeled.txt").read_text() == ""


def test_shipped_loveda_lists_regenerate_byte_for_byte_from_the_official_names(tmp_path):
    write_splits(loveda_published_splits(), tmp_path, lambda crop: crop_line(crop.split("_")[0], crop))
    for f in list_files(SHIPPED / "loveda"):
        assert (tmp_path / f.relative_to(SHIPPED / "loveda")).read_bytes() == f.read_bytes(), f


def test_loveda_official_names_are_contiguous_ids_per_folder():
    groups = loveda_crop_names()
    assert [len(groups[g]) // 4 for g in ("train_rural", "train_urban", "val")] == [1366, 1156, 992 + 677]
    assert groups["train_urban"][0] == "train_urban_1366_1" and groups["val"][-1] == "val_urban_4190_4"
    assert "val_rural_3513_4" in groups["val"] and "val_urban_3514_1" in groups["val"]


def test_reference_names_map_to_prepare_crop_names():
    assert reference_crop_name("potsdam", "image/top_potsdam_2_10_7_RGB.tif") == "top_potsdam_2_10_7"
    assert reference_crop_name("deepglobe", "data_cropped/100694_sat_3.jpg") == "100694_3"
    with pytest.raises(ValueError, match="not a potsdam tile name"):
        reference_crop_name("potsdam", "data_cropped/100694_sat_3.jpg")


def test_the_maintainers_split_tool_names_a_wrong_reference_folder_in_one_line(tmp_path, capsys):
    from dataset.shipped import main
    from util.cli import run_main

    with pytest.raises(SystemExit) as info:
        run_main(lambda: main(["--reference", str(tmp_path), "--out", str(tmp_path / "out")]))
    assert info.value.code == 2 and "has no potsdam/val.txt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def write_reference(folder: Path, potsdam_val: int = 3) -> None:
    """A tiny stand-in for the authors' published lists: one tile per list."""
    names = {"potsdam": lambda k: f"image/top_potsdam_2_10_{k}_RGB.tif label/top_potsdam_2_10_{k}_label.tif",
             "deepglobe": lambda k: f"data_cropped/100694_sat_{k}.jpg data_cropped/100694_mask_{k}.png"}
    for dataset, line in names.items():
        for rel, k in (("val.txt", potsdam_val if dataset == "potsdam" else 3), ("test.txt", 4),
                       ("1/labeled.txt", 1), ("1/unlabeled.txt", 2)):
            (folder / dataset / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / dataset / rel).write_text(line(k) + "\n")


def test_the_maintainers_split_tool_rewrites_lists_that_differ_only_when_asked_by_name(tmp_path, capfd):
    from dataset.shipped import main
    from tests.train_fixtures import assert_one_line_error, invoke, snapshot

    reference, out = tmp_path / "reference", tmp_path / "out"
    write_reference(reference)
    argv = ["--reference", str(reference), "--out", str(out)]
    assert main(argv) == 0 and "potsdam written" in capfd.readouterr().out
    before = snapshot(out)
    assert main(argv) == 0 and "potsdam unchanged" in capfd.readouterr().out
    write_reference(reference, potsdam_val=5)
    code, err = invoke(lambda: main(argv), capfd)
    assert_one_line_error(code, err, [f"{out / 'potsdam' / 'val.txt'} would change", "--replace-lists"])
    assert snapshot(out) == before
    assert main([*argv, "--replace-lists"]) == 0
    assert (out / "potsdam" / "val.txt").read_text() == "images/top_potsdam_2_10_5.png masks/top_potsdam_2_10_5.png\n"
