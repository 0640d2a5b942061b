"""eval/report.py: rows pooled over seeds, in-progress and ablation rows, old checkpoints, skipped folders."""

import json
import math
from pathlib import Path

import pytest
import torch

from eval import report
from util.cli import run_main
from util.config import Config, save_config

NO_TEACHERS = {"teachers": {"dino": {"enabled": False}, "clip": {"enabled": False}},
               "distill": {"fusion_weights": {"student": 1.0, "dino": 0.0, "clip": 0.0}}}


def make_config(folder: Path, method: str, split: str, seed: int, **sections) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    base = NO_TEACHERS if method != "rs_mtdf" else {}
    raw = {**base, **sections}
    raw["dataset"] = {"name": "loveda", "split": split}
    raw["train"] = {"method": method, "seed": seed, "epochs": 4, "best_by": "student"}
    save_config(Config.model_validate(raw), folder / "config.yaml")


def make_progress(folder: Path, method: str, split: str, seed: int, student: float, student_epoch: int,
                  ema: float, ema_epoch: int, finished: bool = True, iteration: int = 160,
                  wall: float = 100.0) -> None:
    (folder / "progress.json").write_text(json.dumps({
        "dataset": "loveda", "method": method, "split": split, "seed": seed,
        "epoch": 4 if finished else 3, "epochs": 4, "iteration": iteration, "total_iters": 160,
        "finished": finished, "wall_seconds": wall, "selected_by": "student",
        "best": {"student": {"miou": student, "epoch": student_epoch}, "ema": {"miou": ema, "epoch": ema_epoch}},
        "history": [{"epoch": 1, "student": 40.0, "ema": 30.0}]}))


def make_eval(folder: Path, split: str, weights: str, miou: float, mean_f1: float, percent: bool = True) -> None:
    sub = folder / f"eval_{split}_original_{weights}"
    sub.mkdir()
    metrics = {"split": split, "mode": "original", "weights": weights, "miou": miou, "mean_f1": mean_f1,
               "oa": miou, "kappa": miou, "checkpoint": str(folder / "best.pth")}
    if percent:
        metrics["unit"] = "percent"
    (sub / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def exp(tmp_path: Path) -> Path:
    root = tmp_path / "exp"
    # Two seeds of rs_mtdf at 10 %, each with a test evaluation of the student (the selected weights).
    for seed, student, ema, test_miou, test_f1 in ((42, 55.1, 53.0, 50.0, 60.0), (43, 57.1, 54.0, 52.0, 63.0)):
        run = root / "loveda" / "rs_mtdf" / "10" / f"seed{seed}"
        make_config(run, "rs_mtdf", "10", seed)
        make_progress(run, "rs_mtdf", "10", seed, student, 3 if seed == 42 else 4, ema, 2)
        make_eval(run, "test", "student", test_miou, test_f1)
        make_eval(run, "test", "ema", 99.0, 99.0)  # not the selected weights: must not be picked
    # DINO-only ablation with random teachers: a row of its own.
    run = root / "loveda" / "rs_mtdf_dino" / "10"
    make_config(run, "rs_mtdf", "10", 42,
                teachers={"clip": {"enabled": False}, "dino": {"weights": "teachers_random/dino.pth"}},
                distill={"fusion_weights": {"student": 1.0, "dino": 0.0, "clip": 0.0}})
    make_progress(run, "rs_mtdf", "10", 42, 48.0, 4, 47.0, 4)
    # A fixmatch run still in progress, at 1 %.
    run = root / "loveda" / "fixmatch" / "1"
    make_config(run, "fixmatch", "1", 42)
    make_progress(run, "fixmatch", "1", 42, 30.0, 2, 31.0, 3, finished=False, iteration=120, wall=3725.0)
    # An old supervised run at 5 %: only latest.pth, scores as fractions, and an eval without the unit key.
    run = root / "loveda" / "supervised" / "5"
    make_config(run, "supervised", "5", 7)
    torch.save({"model": {}, "epoch": 4, "iteration": 160, "iters_per_epoch": 40,
                "best": {"student": 0.25, "ema": 0.2, "epoch": 4}}, run / "latest.pth")
    make_eval(run, "val", "student", 0.25, 0.4, percent=False)
    make_eval(run, "test", "ema", 0.245, 0.375, percent=False)
    # A newer run whose progress.json is gone: latest.pth has per-weights best scores in percent.
    run = root / "loveda" / "unimatch_v2" / "5"
    make_config(run, "unimatch_v2", "5", 42)
    torch.save({"model": {}, "epoch": 4, "iteration": 160, "iters_per_epoch": 40, "wall_seconds": 30.0,
                "selected_by": "ema",
                "best": {"student": {"miou": 41.0, "epoch": 3}, "ema": {"miou": 42.0, "epoch": 4}}},
               run / "latest.pth")
    # The supervised baseline on the semi-supervised schedule (hand-written YAML): a row of its own.
    run = root / "loveda" / "supervised_same" / "5"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("dataset: {name: loveda, split: 5}\n"
                                     "train: {method: supervised, seed: 42, supervised_protocol: same_iterations}\n")
    make_progress(run, "supervised", "5", 42, 22.0, 4, 21.0, 4)
    # Broken: garbage config.yaml next to a progress.json.
    broken = root / "loveda" / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("dataset: [unclosed\n  : :\n")
    (broken / "progress.json").write_text("{}")
    # Unparseable progress.json next to a valid config.
    bad_progress = root / "loveda" / "bad_progress"
    make_config(bad_progress, "fixmatch", "5", 1)
    (bad_progress / "progress.json").write_text("{not json")
    # A run's files without config.yaml.
    (root / "orphan").mkdir()
    (root / "orphan" / "progress.json").write_text("{}")
    return root


def test_report_rows_table_and_plot(exp: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert report.main([str(exp), "--out", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())
    rows = {(r["method"], r["split"], r["ablation"]): r for r in data["rows"]}
    # Sorted by split, then method order.
    assert [(r["split"], r["method"], r["ablation"]) for r in data["rows"]] == [
        ("1", "fixmatch", "-"), ("5", "supervised", "-"), ("5", "supervised", "same iterations"),
        ("5", "unimatch_v2", "-"), ("10", "rs_mtdf", "dino+clip"),
        ("10", "rs_mtdf", "dino only, no fusion, teachers: teachers_random")]

    full = rows[("rs_mtdf", "10", "dino+clip")]
    assert full["n"] == 2 and full["seeds"] == [42, 43] and full["in_progress"] == []
    assert full["best_val_student"]["mean"] == pytest.approx(56.1)
    assert full["best_val_student"]["std"] == pytest.approx(math.sqrt(2))
    assert full["best_val_student"]["epochs"] == [3, 4]
    assert full["best_val_ema"]["mean"] == pytest.approx(53.5)
    assert full["best_val_ema"]["std"] == pytest.approx(math.sqrt(0.5))
    assert full["test_miou"]["mean"] == pytest.approx(51.0) and full["test_weights"] == ["student", "student"]
    assert full["test_mean_f1"]["mean"] == pytest.approx(61.5)
    assert full["wall_seconds"]["mean"] == pytest.approx(100.0)

    old = rows[("supervised", "5", "-")]
    assert old["best_val_student"]["mean"] == pytest.approx(25.0) and old["best_val_ema"]["mean"] == pytest.approx(20.0)
    assert old["test_miou"]["mean"] == pytest.approx(24.5) and old["test_weights"] == ["ema"]
    assert old["wall_seconds"]["unknown"] == 1 and old["iterations"] == [160] and old["in_progress"] == []

    newer = rows[("unimatch_v2", "5", "-")]
    assert newer["best_val_student"]["mean"] == 41.0 and newer["best_val_ema"]["epochs"] == [4]
    assert newer["wall_seconds"]["mean"] == 30.0 and newer["runs"][0]["selected_by"] == "ema"

    assert rows[("fixmatch", "1", "-")]["in_progress"] and rows[("fixmatch", "1", "-")]["iterations"] == [120]

    md = (out / "report.md").read_text()
    assert "| loveda | rs_mtdf | dino+clip | 10 | 2 (42, 43) | 56.10 ± 1.41 (ep 3, 4) | 53.50 ± 0.71 (ep 2) | " \
           "51.00 ± 1.41 (student) | 61.50 ± 2.12 | 160 | 1 min 40 s |" in md
    assert "| loveda | fixmatch | - | 1 | 1 (42*) | 30.00 (ep 2) | 31.00 (ep 3) | - | - | 120/160 | 1 h 02 min |" in md
    assert "| 25.00 (ep 4) | 20.00 (ep 4) | 24.50 (ema) | 37.50 | 160 | unknown |" in md
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


def test_an_output_folder_that_is_a_file_is_one_line_before_anything_is_written(tmp_path, capsys):
    root = tmp_path / "exp"
    make_config(root / "loveda" / "fixmatch" / "1", "fixmatch", "1", 42)
    (root / "loveda" / "fixmatch" / "1" / "progress.json").write_text("{}")
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    with pytest.raises(SystemExit) as info:
        run_main(lambda: report.main([str(root), "--out", str(out)]))
    assert info.value.code == 2 and out.read_text() == "mine"
    assert capsys.readouterr().err.strip() == f"error: --out {out} is a file, not a folder"


def test_a_config_written_before_distill_fusion_was_retired_is_labelled_by_it(tmp_path: Path) -> None:
    # Earlier runs saved `distill.fusion: false` beside fusion weights that were then unused.
    old = {"train": {"method": "rs_mtdf"},
           "distill": {"fusion": False, "fusion_weights": {"student": 0.8, "dino": 0.1, "clip": 0.1}}}
    assert report.ablation_label(old) == "dino+clip, no fusion"
    assert report.ablation_label({**old, "distill": {"fusion": True}}) == "dino+clip"
    new = {"train": {"method": "rs_mtdf"}, "distill": {"fusion_weights": {"student": 1, "dino": 0, "clip": 0}}}
    assert report.ablation_label(new) == "dino+clip, no fusion"
