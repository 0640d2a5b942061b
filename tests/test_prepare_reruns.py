"""dataset.prepare through its command line (`main`, in-process) on tiny raw trees: what a re-run may trust and
rewrite (split lists, crops of changed raw files, temporaries), `~` in path options, DeepGlobe's label rules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset import prepare as prepare_cli
from dataset.synthetic import write_potsdam
from tests.train_fixtures import assert_nothing_left, assert_one_line_error, invoke, snapshot

pytestmark = pytest.mark.usefixtures("close_leaked_progress_bars")


def potsdam(tmp: Path, *extra: str, out: str = "out", splits: str = "lists") -> list[str]:
    """Arguments for the two 20-px Potsdam tiles under tmp/raw (8 crops of 10 px), lists written with --resplit."""
    if not (tmp / "raw").is_dir():
        write_potsdam(tmp / "raw", np.random.default_rng(0), size=20, count=2)
    return ["potsdam", "--raw", str(tmp / "raw"), "--out", str(tmp / out), "--lists", str(tmp / splits),
            "--resplit", "--tile", "10", "--workers", "1", *extra]


def run(argv: list[str], cap: pytest.CaptureFixture) -> tuple[dict, str]:
    """prepare's main on `argv`: the summary it saved and what it printed."""
    cap.readouterr()
    assert prepare_cli.main(argv) == 0
    out = Path(argv[argv.index("--out") + 1])
    return json.loads((out / "prepare_summary.json").read_text()), cap.readouterr().out


def lists(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.txt"))}


# ----------------------------------------------------------------------------------------------------------
# Split lists that exist are rewritten only when the user asks by name


def test_resplit_with_another_seed_into_a_folder_of_lists_is_refused_before_any_work(tmp_path, capfd):
    run(potsdam(tmp_path, "--seed", "0"), capfd)
    before = snapshot(tmp_path)
    code, err = invoke(lambda: prepare_cli.main(potsdam(tmp_path, "--seed", "1")), capfd)
    assert_one_line_error(code, err, [f"--lists {tmp_path / 'lists'} already holds other split lists",
                                      "would change", "--replace-lists", "another --lists folder"])
    assert_nothing_left(before, snapshot(tmp_path))


def test_resplit_with_the_same_seed_keeps_the_lists_as_they_are(tmp_path, capfd):
    run(potsdam(tmp_path, "--seed", "3"), capfd)
    val = tmp_path / "lists" / "val.txt"
    os.utime(val, ns=(1, 1))   # a rewrite, even with the same bytes, would show as a new modification time
    before = lists(tmp_path / "lists")
    summary, printed = run(potsdam(tmp_path, "--seed", "3"), capfd)
    assert summary["splits_kept"] and "were already exactly these (seed 3): kept" in printed
    assert lists(tmp_path / "lists") == before and val.stat().st_mtime_ns == 1
    assert summary["split_counts"]["val.txt"] == len(before["val.txt"].splitlines())


def test_replace_lists_replaces_them_all_and_leaves_no_temporaries(tmp_path, capfd):
    run(potsdam(tmp_path, "--seed", "0"), capfd)
    before = lists(tmp_path / "lists")
    (tmp_path / "lists" / "50").mkdir()
    (tmp_path / "lists" / "50" / "labeled.txt").write_text("images/old.png masks/old.png\n")  # of another run
    summary, _ = run(potsdam(tmp_path, "--seed", "1", "--replace-lists"), capfd)
    after = lists(tmp_path / "lists")
    assert not summary["splits_kept"] and after.keys() == before.keys() and after != before
    assert after == lists(Path(run(potsdam(tmp_path, "--seed", "1", splits="fresh"), capfd)[0]["lists"]))
    assert not [p for p in (tmp_path / "lists").rglob("*") if p.name.endswith(".tmp")]


def test_checking_against_the_shipped_lists_needs_their_tile_size(tmp_path, capfd):
    argv = potsdam(tmp_path)
    argv = [a for a in argv[:argv.index("--lists")] + argv[argv.index("--resplit") + 1:]]  # shipped lists
    before = snapshot(tmp_path)
    code, err = invoke(lambda: prepare_cli.main(argv), capfd)
    assert_one_line_error(code, err, ["splits/potsdam", "512-px tiles, not 10-px", "--resplit --lists DIR"])
    assert_nothing_left(before, snapshot(tmp_path))


# ----------------------------------------------------------------------------------------------------------
# Crops are skipped only where they were cut from the raw files as they are now


def relabel(tmp: Path) -> Path:
    """Rewrite the first raw label file with one colour (building): what a corrected download does."""
    label = sorted((tmp / "raw").rglob("*_label.tif"))[0]
    Image.fromarray(np.broadcast_to(np.array([0, 0, 255], np.uint8), (20, 20, 3)).copy()).save(label)
    return label


def test_a_raw_image_changed_since_its_crops_were_cut_is_cut_again(tmp_path, capfd):
    run(potsdam(tmp_path), capfd)
    label = relabel(tmp_path)
    summary, _ = run(potsdam(tmp_path), capfd)
    assert summary["crops_written"] == 4 and summary["crops_skipped"] == 4
    stem = label.name.removesuffix("_label.tif")
    assert (np.array(Image.open(tmp_path / "out" / "masks" / f"{stem}_1.png")) == 1).all()
    assert run(potsdam(tmp_path), capfd)[0]["crops_skipped"] == 8


def test_a_changed_raw_image_is_cut_again_also_after_a_killed_run(tmp_path, capfd, monkeypatch):
    run(potsdam(tmp_path), capfd)
    relabel(tmp_path)

    def killed(*_: object) -> None:
        raise KeyboardInterrupt   # the run is stopped after its records are written, before any crop is cut

    with monkeypatch.context() as patch:
        patch.setattr(prepare_cli, "_run_jobs", killed)
        with pytest.raises(KeyboardInterrupt):
            prepare_cli.main(potsdam(tmp_path))
    assert run(potsdam(tmp_path), capfd)[0]["crops_written"] == 4


# ----------------------------------------------------------------------------------------------------------
# Temporary files of killed writers


def test_a_rerun_removes_temporaries_of_dead_writers_and_keeps_those_of_living_ones(tmp_path, capfd, dead_pid):
    run(potsdam(tmp_path), capfd)
    out = tmp_path / "out"
    stale = [out / "images" / f".top_potsdam_2_10_1.png.{dead_pid}.tmp", out / "masks" / f".x.png.{dead_pid}.tmp",
             out / f"..prepare_options.json.{dead_pid}.tmp"]
    living = out / "images" / f".top_potsdam_2_10_2.png.{os.getpid()}.tmp"
    for path in (*stale, living):
        path.write_bytes(b"half a png")
    run(potsdam(tmp_path), capfd)
    assert not any(path.exists() for path in stale) and living.exists()


# ----------------------------------------------------------------------------------------------------------
# `~` in path options


def test_a_tilde_after_an_equals_sign_is_the_home_folder(tmp_path, capfd, monkeypatch):
    home, elsewhere = tmp_path / "home", tmp_path / "cwd"
    write_potsdam(home / "raw", np.random.default_rng(0), size=20, count=1)
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    capfd.readouterr()
    assert prepare_cli.main(["potsdam", "--raw=~/raw", "--out=~/out", "--lists=~/lists", "--resplit",
                             "--tile=10", "--workers=1"]) == 0
    assert len(list((home / "out" / "images").iterdir())) == 4 and (home / "lists" / "val.txt").is_file()
    assert not list(elsewhere.iterdir())


# ----------------------------------------------------------------------------------------------------------
# DeepGlobe: colours not exactly one of the seven, counted, and converted by the rule asked for

AGRICULTURE = (255, 255, 0)
# Off-palette colours put by hand into the 24x24 mask: position -> (colour, threshold class, authors class).
# In 16-px tiles: tile 1 rows/cols 0-15, tile 2 rows 0-15 cols 16-23, tile 3 rows 16-23 cols 0-15, tile 4 the rest.
IMPURE = {**{(r, 3): ((250, 10, 245), 2, 0) for r in range(5)},           # tile 1: 5 px, rangeland when thresholded
          **{(2, c): ((255, 0, 0), 255, 0) for c in (17, 18, 19)},        # tile 2: 3 px, no class when thresholded
          **{(20, c): ((10, 250, 20), 3, 0) for c in (20, 22)}}           # tile 4: 2 px, forest when thresholded


def deepglobe(tmp: Path, *extra: str, out: str = "out") -> list[str]:
    """Arguments for one 24-px DeepGlobe image under tmp/raw, agriculture but for the IMPURE pixels."""
    raw = tmp / "raw"
    if not raw.is_dir():
        raw.mkdir()
        mask = np.broadcast_to(np.array(AGRICULTURE, np.uint8), (24, 24, 3)).copy()
        for (r, c), (colour, _, _) in IMPURE.items():
            mask[r, c] = colour
        Image.fromarray(mask).save(raw / "7_mask.png")
        Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(raw / "7_sat.jpg")
    return ["deepglobe", "--raw", str(raw), "--out", str(tmp / out), "--lists", str(tmp / f"lists_{out}"),
            "--resplit", "--tile", "16", "--workers", "1", *extra]


def labels(out: Path) -> np.ndarray:
    """The four 16-px mask tiles put back together (24x24, padding cut off)."""
    tiles = [np.array(Image.open(out / "masks" / f"7_{k}.png")) for k in range(1, 5)]
    return np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]])[:24, :24]


def expected(rule: int) -> np.ndarray:
    want = np.full((24, 24), 1, np.uint8)
    for (r, c), classes in IMPURE.items():
        want[r, c] = classes[rule]
    return want


def test_deepglobe_counts_impure_pixels_per_tile_and_thresholds_them_by_default(tmp_path, capfd):
    summary, printed = run(deepglobe(tmp_path), capfd)
    assert summary["label_rule"] == "threshold" and summary["impure_pixels"] == 10
    assert summary["impure_pixels_per_tile"] == {"7_1": 5, "7_2": 3, "7_4": 2}
    assert summary["remapped_pixels"] == 3   # the red ones: no class after thresholding, ignored
    assert "10 px in 3 tiles had colours not exactly one of the seven" in printed
    assert np.array_equal(labels(tmp_path / "out"), expected(1))
    again, _ = run(deepglobe(tmp_path), capfd)   # tiles kept: the count is still that of every tile
    assert again["crops_skipped"] == 4 and again["impure_pixels_per_tile"] == summary["impure_pixels_per_tile"]


def test_deepglobe_label_rule_authors_sends_impure_pixels_to_urban(tmp_path, capfd):
    summary, printed = run(deepglobe(tmp_path, "--label-rule", "authors"), capfd)
    assert summary["label_rule"] == "authors" and summary["impure_pixels"] == summary["remapped_pixels"] == 10
    assert "sent to class 0 (urban)" in printed
    assert np.array_equal(labels(tmp_path / "out"), expected(2))
    assert json.loads((tmp_path / "out" / ".prepare_options.json").read_text())["label_rule"] == "authors"


def test_tiles_cut_with_one_label_rule_are_never_mixed_with_the_other(tmp_path, capfd):
    run(deepglobe(tmp_path), capfd)
    before = snapshot(tmp_path)
    code, err = invoke(lambda: prepare_cli.main(deepglobe(tmp_path, "--label-rule", "authors")), capfd)
    assert_one_line_error(code, err, [str(tmp_path / "out"), "--label-rule threshold, not authors", "--overwrite"])
    assert_nothing_left(before, snapshot(tmp_path))
    summary, _ = run(deepglobe(tmp_path, "--label-rule", "authors", "--overwrite"), capfd)
    assert summary["crops_written"] == 4 and np.array_equal(labels(tmp_path / "out"), expected(2))


def test_label_rule_is_refused_for_other_datasets(tmp_path, capfd):
    code, err = invoke(lambda: prepare_cli.main(potsdam(tmp_path, "--label-rule", "authors")), capfd)
    assert code == 2 and "--label-rule applies to deepglobe only" in err
