"""scripts/report.py: rows pooled over seeds that share every other setting, test scores that are provably of the
run's best.pth on its test list, in-progress and ablation rows, skipped folders and ignored evaluations."""

import errno
import json
import math
import os
from contextlib import contextmanager
from pathlib import Path

import pytest

import util.io
from scripts import report
from util.cli import run_main
from util.config import Config, save_config
from util.io import file_sha256

NO_TEACHERS = {"teachers": {"dino": {"enabled": False}, "clip": {"enabled": False}},
               "distill": {"fusion_weights": {"student": 1.0, "dino": 0.0, "clip": 0.0}}}


def make_config(folder: Path, method: str, split: str, seed: int, splits: Path, epochs: int = 4,
                **sections) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    base = NO_TEACHERS if method != "rs_mtdf" else {}
    raw = {**base, **sections}
    raw["dataset"] = {"name": "loveda", "split": split, "lists": str(splits)}
    raw["train"] = {"method": method, "seed": seed, "epochs": epochs, "best_by": "student"}
    save_config(Config.model_validate(raw), folder / "config.yaml")


def make_progress(folder: Path, student: float, student_epoch: int, ema: float, ema_epoch: int,
                  finished: bool = True, iteration: int = 160, wall: float = 100.0, best_at: int = 120) -> str:
    """progress.json of a run whose best.pth was saved at iteration `best_at`; returns the run's id."""
    run_id = f"run{abs(hash(str(folder))) % 10**8:08d}"
    (folder / "progress.json").write_text(json.dumps({
        "epoch": 4 if finished else 3, "epochs": 4, "iteration": iteration, "total_iters": 160,
        "finished": finished, "wall_seconds": wall, "selected_by": "student", "run_id": run_id,
        "best_checkpoint": {"iteration": best_at, "epoch": 3},
        "best": {"student": {"miou": student, "epoch": student_epoch}, "ema": {"miou": ema, "epoch": ema_epoch}},
        "history": [{"epoch": 1, "student": 40.0, "ema": 30.0}]}))
    return run_id


def make_eval(folder: Path, name: str, subset: str, weights: str, miou: float, mean_f1: float, splits: Path,
              mode: str = "original", iteration: int = 120, run_id: str | None = None,
              checkpoint: str = "best.pth", key: str = "subset") -> None:
    """metrics.json of eval/eval.py, naming the checkpoint it scored (this run's, at `iteration`) and the list;
    `key` "split" writes it as eval.py did before the subset was named so."""
    sub = folder / name
    sub.mkdir()
    progress = json.loads((folder / "progress.json").read_text())
    listed = splits / f"{subset}.txt"
    metrics = {"unit": "percent", key: subset, "mode": mode, "weights": weights, "miou": miou,
               "mean_f1": mean_f1, "oa": miou, "kappa": miou, f"{key}_list": str(listed),
               f"{key}_list_sha256": file_sha256(listed),
               "checkpoint": {"path": str(folder / checkpoint), "sha256": "0" * 64,
                              "run_id": run_id or progress["run_id"], "iteration": iteration, "epoch": 3,
                              "selected_by": "student"}}
    (sub / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def splits(tmp_path: Path) -> Path:
    folder = tmp_path / "splits"
    folder.mkdir()
    (folder / "val.txt").write_text("v.png v_mask.png\n")
    (folder / "test.txt").write_text("t.png t_mask.png\n")
    return folder


@pytest.fixture
def exp(tmp_path: Path, splits: Path) -> Path:
    root = tmp_path / "exp"
    # Two seeds of rs_mtdf at 10 %, each with a test evaluation of best.pth's student (the selected weights).
    for seed, student, ema, test_miou, test_f1 in ((42, 55.1, 53.0, 50.0, 60.0), (43, 57.1, 54.0, 52.0, 63.0)):
        run = root / "loveda" / "rs_mtdf" / "10" / f"seed{seed}"
        make_config(run, "rs_mtdf", "10", seed, splits)
        make_progress(run, student, 3 if seed == 42 else 4, ema, 2)
        make_eval(run, "eval_best_test_original_student", "test", "student", test_miou, test_f1, splits)
        make_eval(run, "eval_best_test_original_ema", "test", "ema", 99.0, 99.0, splits)  # not the selected weights
    # DINO-only ablation with random teachers: a row of its own.
    run = root / "loveda" / "rs_mtdf_dino" / "10"
    make_config(run, "rs_mtdf", "10", 42, splits,
                teachers={"clip": {"enabled": False}, "dino": {"weights": "teachers_random/dino.pth"}},
                distill={"fusion_weights": {"student": 1.0, "dino": 0.0, "clip": 0.0}})
    make_progress(run, 48.0, 4, 47.0, 4)
    # A fixmatch run still in progress, at 1 %.
    run = root / "loveda" / "fixmatch" / "1"
    make_config(run, "fixmatch", "1", 42, splits)
    make_progress(run, 30.0, 2, 31.0, 3, finished=False, iteration=120, wall=3725.0)
    # The supervised baseline on the semi-supervised schedule (hand-written YAML): a row of its own.
    run = root / "loveda" / "supervised_same" / "5"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("dataset: {name: loveda, split: 5}\n"
                                     "train: {method: supervised, seed: 42, supervised_protocol: same_iterations}\n")
    make_progress(run, 22.0, 4, 21.0, 4)
    # Broken: garbage config.yaml next to a progress.json.
    broken = root / "loveda" / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("dataset: [unclosed\n  : :\n")
    (broken / "progress.json").write_text("{}")
    # Unparseable progress.json next to a valid config.
    bad_progress = root / "loveda" / "bad_progress"
    make_config(bad_progress, "fixmatch", "5", 1, splits)
    (bad_progress / "progress.json").write_text("{not json")
    # A run's files without config.yaml.
    (root / "orphan").mkdir()
    (root / "orphan" / "progress.json").write_text("{}")
    return root


def rows_of(out: Path) -> dict:
    data = json.loads((out / "report.json").read_text())
    return {(r["method"], r["split"], r["ablation"], r["differs"]): r for r in data["rows"]}


def test_report_rows_table_and_plot(exp: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert report.main([str(exp), "--out", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())
    rows = rows_of(out)
    # Sorted by split, then method order.
    assert [(r["split"], r["method"], r["ablation"]) for r in data["rows"]] == [
        ("1", "fixmatch", "-"), ("5", "supervised", "same iterations"), ("10", "rs_mtdf", "dino+clip"),
        ("10", "rs_mtdf", "dino only, no fusion, teachers: teachers_random")]

    full = rows[("rs_mtdf", "10", "dino+clip", "")]
    assert full["n"] == 2 and full["seeds"] == [42, 43] and full["in_progress"] == []
    assert full["best_val_student"]["mean"] == pytest.approx(56.1)
    assert full["best_val_student"]["std"] == pytest.approx(math.sqrt(2))
    assert full["best_val_student"]["epochs"] == [3, 4]
    assert full["best_val_ema"]["mean"] == pytest.approx(53.5)
    assert full["best_val_ema"]["std"] == pytest.approx(math.sqrt(0.5))
    assert full["test_miou"]["mean"] == pytest.approx(51.0) and full["test_weights"] == ["student", "student"]
    assert full["test_modes"] == ["original", "original"]
    assert full["test_mean_f1"]["mean"] == pytest.approx(61.5)
    assert full["wall_seconds"]["mean"] == pytest.approx(100.0)
    assert rows[("fixmatch", "1", "-", "")]["in_progress"] and rows[("fixmatch", "1", "-", "")]["iterations"] == [120]

    md = (out / "report.md").read_text()
    assert "| loveda | rs_mtdf | dino+clip | 10 | 2 (42, 43) | 56.10 ± 1.41 (ep 3, 4) | 53.50 ± 0.71 (ep 2) | " \
           "51.00 ± 1.41 (original, student) | 61.50 ± 2.12 | 160 | 1 min 40 s |" in md
    assert "| loveda | fixmatch | - | 1 | 1 (42*) | 30.00 (ep 2) | 31.00 (ep 3) | - | - | 120/160 | 1 h 02 min |" in md
    assert "\\* in progress" in md

    skipped = {d["folder"]: d["reason"] for d in data["skipped"]}
    assert set(skipped) == {str(exp / "loveda" / "broken"), str(exp / "loveda" / "bad_progress"), str(exp / "orphan")}
    assert skipped[str(exp / "orphan")] == "has progress.json but no config.yaml"
    assert "config.yaml" in skipped[str(exp / "loveda" / "broken")]
    assert "progress.json" in skipped[str(exp / "loveda" / "bad_progress")]
    skipped_md = md.split("## Skipped folders")[1]
    assert "broken" in skipped_md and "bad_progress" in skipped_md

    # Not every row has a test score: the plot shows the student's best val mIoU and says so.
    assert data["plot"]["metric"] == "best_val_student"
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "written to" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------
# Provenance: only a score of the run's current best.pth on the run's test list counts


def one_run(tmp_path: Path, splits: Path) -> Path:
    run = tmp_path / "exp" / "loveda" / "fixmatch" / "10"
    make_config(run, "fixmatch", "10", 42, splits)
    make_progress(run, 50.0, 3, 49.0, 3, best_at=120)
    return run


def test_a_score_of_latest_pth_or_of_an_earlier_best_pth_is_ignored_with_the_reason(tmp_path, splits) -> None:
    run = one_run(tmp_path, splits)
    make_eval(run, "eval_best_test_original_student", "test", "student", 40.0, 50.0, splits, iteration=80)
    make_eval(run, "eval_latest_test_original_student", "test", "student", 45.0, 55.0, splits, iteration=160,
              checkpoint="latest.pth")
    make_eval(run, "eval_elsewhere", "test", "student", 70.0, 70.0, splits, run_id="another")
    out = tmp_path / "out"
    assert report.main([str(tmp_path / "exp"), "--out", str(out)]) == 0
    (row,) = rows_of(out).values()
    assert row["test_miou"]["mean"] is None  # none of them is best.pth of iteration 120
    ignored = {Path(d["folder"]).name: d["reason"]
               for d in json.loads((out / "report.json").read_text())["ignored_evaluations"]}
    assert "at iteration 80, but best.pth is the one of iteration 120" in ignored["eval_best_test_original_student"]
    assert "latest.pth at iteration 160" in ignored["eval_latest_test_original_student"]
    assert "of another run" in ignored["eval_elsewhere"]
    assert "## Ignored evaluations" in (out / "report.md").read_text()


def test_a_test_score_written_before_subset_was_named_still_counts(tmp_path, splits) -> None:
    run = one_run(tmp_path, splits)
    make_eval(run, "eval_best_test_original_student", "test", "student", 40.0, 50.0, splits, key="split")
    out = tmp_path / "out"
    assert report.main([str(tmp_path / "exp"), "--out", str(out)]) == 0
    (row,) = rows_of(out).values()
    assert row["test_miou"]["mean"] == pytest.approx(40.0)


def test_a_score_of_a_test_list_that_has_changed_since_is_ignored(tmp_path, splits) -> None:
    run = one_run(tmp_path, splits)
    make_eval(run, "eval_best_test_original_student", "test", "student", 40.0, 50.0, splits)
    (splits / "test.txt").write_text("other.png other_mask.png\n")  # e.g. prepare --resplit into the same folder
    out = tmp_path / "out"
    assert report.main([str(tmp_path / "exp"), "--out", str(out)]) == 0
    (row,) = rows_of(out).values()
    assert row["test_miou"]["mean"] is None
    (ignored,) = json.loads((out / "report.json").read_text())["ignored_evaluations"]
    assert "another test.txt" in ignored["reason"]


def test_the_table_says_the_mode_of_a_score_and_prefers_the_protocols(tmp_path, splits) -> None:
    run = one_run(tmp_path, splits)
    make_eval(run, "eval_best_test_sliding_window_student", "test", "student", 41.0, 51.0, splits,
              mode="sliding_window")
    out = tmp_path / "out"
    assert report.main([str(tmp_path / "exp"), "--out", str(out)]) == 0
    assert "| 41.00 (sliding_window, student) |" in (out / "report.md").read_text()
    make_eval(run, "eval_best_test_original_student", "test", "student", 40.0, 50.0, splits)
    assert report.main([str(tmp_path / "exp"), "--out", str(out)]) == 0
    assert "| 40.00 (original, student) |" in (out / "report.md").read_text()


def test_seeds_are_pooled_only_where_every_other_setting_is_the_same(tmp_path, splits) -> None:
    for seed, epochs in ((1, 3), (2, 3), (3, 6)):
        run = tmp_path / "exp" / f"seed{seed}_epochs{epochs}"
        make_config(run, "fixmatch", "10", seed, splits, epochs=epochs)
        make_progress(run, 50.0 + seed, 3, 49.0, 3)
    # Paths, workers and logging are not settings: a run that differs only there pools with the others.
    run = tmp_path / "exp" / "seed4_elsewhere"
    make_config(run, "fixmatch", "10", 4, splits, epochs=3, train={"method": "fixmatch"})
    save_config(Config.model_validate({**NO_TEACHERS, "dataset": {"split": "10", "lists": str(splits)},
                                       "train": {"method": "fixmatch", "seed": 4, "epochs": 3, "num_workers": 1,
                                                 "log_interval": 5}, "save_path": "/elsewhere"}),
                run / "config.yaml")
    make_progress(run, 50.0, 3, 49.0, 3)
    out = tmp_path / "out"
    assert report.main([str(tmp_path / "exp"), "--out", str(out)]) == 0
    rows = rows_of(out)
    assert set(rows) == {("fixmatch", "10", "-", "train.epochs=3"), ("fixmatch", "10", "-", "train.epochs=6")}
    assert rows[("fixmatch", "10", "-", "train.epochs=3")]["seeds"] == [1, 2, 4]
    assert rows[("fixmatch", "10", "-", "train.epochs=6")]["seeds"] == [3]
    assert "| fixmatch | - [train.epochs=6] | 10 | 1 (3) |" in (out / "report.md").read_text()


def test_seeds_trained_on_lists_of_other_content_are_not_pooled(tmp_path, splits) -> None:
    """The same settings and split folder, but the labelled list was resampled between two seeds' runs."""
    lists = {1: {"labeled": "a" * 64, "val": "c" * 64}, 2: {"labeled": "a" * 64, "val": "c" * 64},
             3: {"labeled": "b" * 64, "val": "c" * 64}}
    for seed, recorded in lists.items():
        run = tmp_path / "exp" / f"seed{seed}"
        make_config(run, "fixmatch", "10", seed, splits)
        make_progress(run, 50.0, 3, 49.0, 3)
        progress = json.loads((run / "progress.json").read_text())
        (run / "progress.json").write_text(json.dumps({**progress, "split_lists": recorded}))
    out = tmp_path / "out"
    assert report.main([str(tmp_path / "exp"), "--out", str(out)]) == 0
    rows = sorted(rows_of(out).values(), key=lambda r: r["seeds"])
    assert [r["seeds"] for r in rows] == [[1, 2], [3]]
    assert rows[0]["differs"].startswith('split_lists={"labeled": "aaaaaaaaaaaa"')
    assert rows[1]["differs"].startswith('split_lists={"labeled": "bbbbbbbbbbbb"')


# ----------------------------------------------------------------------------------------------------------
# The command


def test_report_default_out_and_empty_folder(exp: Path, tmp_path: Path, capsys) -> None:
    assert report.main([str(exp)]) == 0
    assert (exp / "report" / "report.md").is_file()

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text("train: {method: fixmatch}\n")  # a config alone is no run
    with pytest.raises(SystemExit) as stop:
        report.run_main(lambda: report.main([str(empty)]))
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: no run folder") and str(empty) in err


def test_plot_shows_test_miou_only_when_every_run_has_it() -> None:
    row = {"n": 2, "test_miou": {"n": 2}, "test_weights": ["ema", "ema"]}
    assert report.plot_metric([row]) == ("test_miou", "test mIoU (ema weights)")
    assert report.plot_metric([row, {**row, "test_miou": {"n": 1}}])[0] == "best_val_student"


def test_an_output_folder_that_is_a_file_is_one_line_before_anything_is_written(tmp_path, capsys, splits):
    root = tmp_path / "exp"
    make_config(root / "loveda" / "fixmatch" / "1", "fixmatch", "1", 42, splits)
    (root / "loveda" / "fixmatch" / "1" / "progress.json").write_text("{}")
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    with pytest.raises(SystemExit) as info:
        run_main(lambda: report.main([str(root), "--out", str(out)]))
    assert info.value.code == 2 and out.read_text() == "mine"
    assert capsys.readouterr().err.strip() == f"error: --out {out} is a file, not a folder"


def test_no_fusion_is_labelled_as_such() -> None:
    fused = {"train": {"method": "rs_mtdf"}}
    assert report.ablation_label(fused) == "dino+clip"
    none = {"train": {"method": "rs_mtdf"}, "distill": {"fusion_weights": {"student": 1, "dino": 0, "clip": 0}}}
    assert report.ablation_label(none) == "dino+clip, no fusion"


def test_a_run_saved_before_dataset_lists_was_named_is_read_with_its_test_list(tmp_path, splits) -> None:
    run = tmp_path / "exp" / "old"
    make_config(run, "fixmatch", "10", 42, splits)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("  lists: ", "  splits: "))
    read = report.read_config(run)
    assert read["test_list"] == splits / "test.txt" and "dataset.lists" in read["settings"]


# ----------------------------------------------------------------------------------------------------------
# Each run counted once, whatever the folders


@pytest.fixture
def evaluated_run(tmp_path: Path, splits: Path) -> Path:
    """exp/loveda/fixmatch/10: one finished run with a test evaluation of its best.pth."""
    run = tmp_path / "exp" / "loveda" / "fixmatch" / "10"
    make_config(run, "fixmatch", "10", 42, splits, save_path=str(tmp_path / "exp/{dataset}/{method}/{split}"))
    make_progress(run, 50.0, 4, 49.0, 4)
    make_eval(run, "eval_best_test", "test", "student", 45.0, 55.0, splits)
    return run


def report_of(*argv: str) -> tuple[dict, dict]:
    """report.json of `scripts/report.py argv`, and {folder: reason} of its skipped folders and ignored evaluations."""
    out = Path(argv[-1])
    assert report.main([*argv[:-1], "--out", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())
    lines = {e["folder"]: e["reason"] for e in data["skipped"] + data["ignored_evaluations"]}
    return data, lines


def counted_runs(data: dict) -> list[str]:
    return [r["folder"] for row in data["rows"] for r in row["runs"]]


# How the folders are arranged -> the lines that name the second way to the run (folder relative to tmp: why).
ARRANGEMENTS = {
    "copied": {"exp/archive/fixmatch_10": "a copy of the run in",
               "exp/archive/fixmatch_10/eval_best_test": "the same evaluation as"},
    "copied and evaluated there": {"exp/archive/fixmatch_10": "a copy of the run in"},
    "linked inside": {"exp/latest": "the same folder as"},
    "linked from outside": {},
    "root given twice": {"exp/../exp": "the same folder as"},
    "root inside root": {},  # the same paths: nothing reached another way
    "root through a link": {"link": "the same folder as"},
}


@pytest.mark.parametrize("arrangement", list(ARRANGEMENTS))
def test_a_run_is_counted_once_however_its_folders_are_arranged(evaluated_run, tmp_path, arrangement):
    import shutil

    exp = tmp_path / "exp"
    roots = [str(exp)]
    if arrangement.startswith("copied"):
        shutil.copytree(evaluated_run, exp / "archive" / "fixmatch_10")
        if arrangement.endswith("evaluated there"):
            shutil.rmtree(evaluated_run / "eval_best_test")  # the test score sits in the copy only
    elif arrangement == "linked inside":
        (exp / "latest").symlink_to(evaluated_run, target_is_directory=True)
    elif arrangement == "linked from outside":
        elsewhere = tmp_path / "scratch" / "run"
        elsewhere.parent.mkdir()
        shutil.move(evaluated_run, elsewhere)
        evaluated_run.symlink_to(elsewhere, target_is_directory=True)
    elif arrangement == "root given twice":
        roots.append(str(tmp_path / "exp" / ".." / "exp"))
    elif arrangement == "root inside root":
        roots.append(str(exp / "loveda"))
    else:
        (tmp_path / "link").symlink_to(exp, target_is_directory=True)
        roots.append(str(tmp_path / "link"))
    data, lines = report_of(*roots, str(tmp_path / "out"))
    assert counted_runs(data) == [str(evaluated_run)]
    assert data["rows"][0]["test_miou"]["values"] == [45.0]
    expected = {str(tmp_path / folder): why for folder, why in ARRANGEMENTS[arrangement].items()}
    assert set(lines) == set(expected) and all(why in lines[f] for f, why in expected.items()), lines


def test_an_earlier_copy_of_a_run_is_named_and_the_later_one_counted(evaluated_run, tmp_path):
    import shutil

    archive = tmp_path / "exp" / "old" / "fixmatch_10"
    shutil.copytree(evaluated_run, archive)
    progress = json.loads((archive / "progress.json").read_text())
    (archive / "progress.json").write_text(json.dumps({**progress, "iteration": 80, "finished": False}))
    data, lines = report_of(str(tmp_path / "exp"), str(tmp_path / "out"))
    assert counted_runs(data) == [str(evaluated_run)] and data["rows"][0]["in_progress"] == []
    assert lines[str(archive)] == (f"an earlier copy of the run in {evaluated_run} (run id {progress['run_id']}: "
                                   f"iteration 80 here, 160 there): counted there")
    assert "the same evaluation as" in lines[str(archive / "eval_best_test")]


def test_a_copy_resumed_under_other_settings_is_a_run_of_its_own(evaluated_run, tmp_path, splits):
    import shutil

    fork = tmp_path / "exp" / "no_flips" / "fixmatch_10"
    shutil.copytree(evaluated_run, fork)
    make_config(fork, "fixmatch", "10", 42, splits, augment={"hflip_p": 0.0})
    data, lines = report_of(str(tmp_path / "exp"), str(tmp_path / "out"))
    assert sorted(counted_runs(data)) == sorted([str(evaluated_run), str(fork)]) and len(data["rows"]) == 2
    assert str(fork) not in lines


def test_nothing_under_the_folders_is_left_out_without_a_line(evaluated_run, tmp_path, splits):
    exp = tmp_path / "exp"
    (exp / "weights_only").mkdir()
    (exp / "weights_only" / "best.pth").write_bytes(b"")
    (exp / "scores" / "eval_x").mkdir(parents=True)
    (exp / "scores" / "eval_x" / "metrics.json").write_text("{}")
    hidden = exp / ".trash" / "seed43"
    make_config(hidden, "fixmatch", "10", 43, splits)
    make_progress(hidden, 52.0, 4, 51.0, 4)
    data, lines = report_of(str(exp), str(tmp_path / "out"))
    assert sorted(counted_runs(data)) == sorted([str(evaluated_run), str(hidden)])  # a run in a hidden folder is a run
    assert "has best.pth but no config.yaml or progress.json" in lines[str(exp / "weights_only")]
    assert "not in a run folder" in lines[str(exp / "scores" / "eval_x")]


def test_a_folder_that_cannot_be_listed_is_named_not_passed_over(evaluated_run, tmp_path, monkeypatch):
    locked = tmp_path / "exp" / "colleague"
    locked.mkdir()
    scandir = os.scandir

    def permission_denied(path="."):  # what a folder without read permission does (the tests may run as root)
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", permission_denied)
    data, lines = report_of(str(tmp_path / "exp"), str(tmp_path / "out"))
    assert counted_runs(data) == [str(evaluated_run)]
    assert lines[str(locked)] == "cannot be read (Permission denied): not searched"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_failed_write_is_one_line_after_the_table_and_leaves_nothing(evaluated_run, tmp_path, monkeypatch, capsys,
                                                                       code):
    @contextmanager
    def failing(targets):
        raise OSError(code, os.strerror(code))
        yield  # a generator: what contextmanager takes

    monkeypatch.setattr(util.io, "atomic_paths", failing)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        run_main(lambda: report.main([str(tmp_path / "exp"), "--out", str(out)]))
    captured = capsys.readouterr()
    assert info.value.code == 2 and not out.exists()
    assert "| loveda | fixmatch |" in captured.out  # the table was shown before the write
    assert captured.err == (f"error: could not write report.md, report.json, report.png into {out}: "
                            f"{os.strerror(code)}; none of them was written; the table above is what was computed: "
                            f"1 run(s) in 1 row(s), 0 folder(s) skipped, 0 evaluation(s) ignored\n")
