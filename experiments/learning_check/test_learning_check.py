"""The learning check's scenes (scenes.py) and the teacher files of check.py."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset.prepare import prepare
from dataset.synthetic import write_loveda
from experiments.learning_check.scenes import draw_domain, pool, shift_scene, write_loveda_shift

REPO = Path(__file__).resolve().parents[2]


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_shift_scenes_are_deterministic_with_labels_in_range():
    a_img, a_lab = pool(3, 64, 4)
    b_img, b_lab = pool(3, 64, 4)
    assert a_img.shape == (4, 64, 64, 3) and a_img.dtype == np.uint8
    assert a_lab.shape == (4, 64, 64) and a_lab.dtype == np.uint8
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert set(np.unique(a_lab)) <= set(range(7))
    c_img, _ = pool(4, 64, 4)
    assert not np.array_equal(a_img, c_img)


def test_a_class_changes_colour_between_domains_but_keeps_its_label():
    rng = np.random.default_rng(0)
    means = []
    for _ in range(6):
        img, cls, _ = shift_scene(rng, 96, "rural", draw_domain(rng))
        water = cls == 3  # generic WATER
        if water.sum() > 50:
            means.append(img[water].mean(axis=0))
    assert len(means) >= 2
    spread = np.ptp(np.array(means), axis=0).max()
    assert spread > 20, spread  # the same class looks different from scene to scene


def test_shift_tree_prepares_like_loveda_and_the_demo_generator_stays_deterministic(tmp_path):
    write_loveda_shift(tmp_path / "raw", np.random.default_rng(0), size=56, count=2)
    summary = prepare("loveda", tmp_path / "raw", tmp_path / "tiles", tmp_path / "splits", resplit=True)
    assert summary["split_counts"]["1/labeled.txt"] + summary["split_counts"]["1/unlabeled.txt"] == 16
    lines = (tmp_path / "splits" / "1" / "labeled.txt").read_text().splitlines()
    assert lines and all(len(line.split()) == 2 for line in lines)
    # The demo's generator, which the scenes share code with, still depends only on its own seed.
    write_loveda(tmp_path / "demo1", np.random.default_rng(0), size=32, count=1)
    write_loveda(tmp_path / "demo2", np.random.default_rng(0), size=32, count=1)
    assert tree_digest(tmp_path / "demo1") == tree_digest(tmp_path / "demo2")


def test_teacher_files_load_through_the_trainers_path(tmp_path):
    from experiments.learning_check import check as lc

    torch.manual_seed(0)
    dino, clip = lc.Probe("dino"), lc.Probe("clip")
    lc.save_dino(dino.teacher.encoder, tmp_path / "dinov2_tiny.pth")
    lc.save_clip(clip.teacher.visual, tmp_path / "clip_tiny.pt")
    state = torch.load(tmp_path / "dinov2_tiny.pth", weights_only=True)
    assert state["pos_embed"].shape == (1, 1370, 64) and "mask_token" in state
    assert all(k.startswith("visual.") for k in torch.load(tmp_path / "clip_tiny.pt", weights_only=True))
    lc.verify_teachers(tmp_path)
    # The loaded teacher computes the feature that was trained: the same tokens as the saved module.
    from model.teachers import build_teachers
    from util.config import load_config

    cfg = load_config(lc.CONFIG, [f"teachers.dino.weights={tmp_path / 'dinov2_tiny.pth'}",
                                  f"teachers.clip.weights={tmp_path / 'clip_tiny.pt'}"])
    x = torch.randn(2, 3, lc.CROP, lc.CROP)
    out = build_teachers(cfg, "cpu")(x)
    with torch.no_grad():
        assert torch.allclose(out["dino"], dino.features(x), atol=1e-5)
        assert torch.allclose(out["clip"], clip.features(x), atol=1e-5)


def test_probe_scores_are_eval_metrics_rounded():
    from eval.metrics import ConfusionMatrix
    from experiments.learning_check.check import rounded_scores

    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 0, 1, 1, 0, 1]), torch.tensor([0, 0, 1, 0, 255, 1]))  # class 2 absent
    assert rounded_scores(cm) == {"miou": 66.67, "oa": 80.0, "iou": [66.7, 66.7, None]}


def test_files_made_with_other_values_are_refused_not_reused(tmp_path):
    """The check reuses its scenes and teachers only where they were made with the values it would use now."""
    import pytest

    from experiments.learning_check.check import made_with
    from util.errors import DataError

    record = tmp_path / "data.json"
    assert not made_with(record, {"scene_size": 168, "seed": 0})  # nothing made yet
    record.write_text('{"scene_size": 168, "seed": 0}')
    assert made_with(record, {"scene_size": 168, "seed": 0})
    with pytest.raises(DataError, match=r"made with other values: seed 0 \(now 1\)"):
        made_with(record, {"scene_size": 168, "seed": 1})


def test_the_plan_measures_the_headroom_and_every_method_and_control(tmp_path):
    from experiments.learning_check.check import headroom_jobs, method_jobs, queue

    headroom = [name for name, _ in headroom_jobs(tmp_path, (0, 1))]
    assert headroom == ["supervised_1_s0", "supervised_100_s0", "supervised_1_s1", "supervised_100_s1"]
    names = [name for name, _ in method_jobs(tmp_path, quick=False)]
    # 4 methods and controls at 1 % x 2 seeds, the 5 % row (seed 0), 3 ablations at 1 % x 2 seeds.
    assert len(names) == len(set(names)) == 8 + 4 + 6
    assert {"rs_mtdf-random_1_s1", "unimatch_v2_5_s0", "rs_mtdf-clip_1_s1"} <= set(names)
    assert [name for name, _ in method_jobs(tmp_path, quick=True)] == ["fixmatch_1_s0", "rs_mtdf_1_s0",
                                                                       "rs_mtdf-random_1_s0"]
    # Each headroom run starts beside one of the longest method runs, so that two cores stay busy to the end.
    quick = [name for name, _ in queue(headroom_jobs(tmp_path, (0,)), method_jobs(tmp_path, quick=True))]
    assert quick == ["supervised_1_s0", "rs_mtdf_1_s0", "supervised_100_s0", "rs_mtdf-random_1_s0", "fixmatch_1_s0"]
    full = [name for name, _ in queue(headroom_jobs(tmp_path, (0, 1)), method_jobs(tmp_path, quick=False))]
    assert sorted(full) == sorted(headroom + names) and full[:8:2] == headroom
    every = dict(method_jobs(tmp_path, quick=False) + headroom_jobs(tmp_path, (0, 1)))
    assert all(f"model.pretrained={tmp_path / 'student_pretrained' / 'dinov2_tiny.pth'}" in over
               for over in every.values())


def test_a_third_seed_runs_both_sides_of_a_claim_whose_two_means_are_within_a_point(tmp_path):
    from experiments.learning_check.check import third_seed_jobs

    scores = {"rs_mtdf_1": {0: 30.0, 1: 31.0}, "fixmatch_1": {0: 29.5, 1: 30.8},          # 0.35 apart: close
              "supervised_1": {0: 25.0, 1: 26.0}, "rs_mtdf-random_1": {0: 20.0, 1: 20.0}}  # far apart
    names = [name for name, _ in third_seed_jobs(tmp_path, scores)]
    assert sorted(names) == ["fixmatch_1_s2", "rs_mtdf_1_s2"]


def test_the_verdicts_follow_the_rule_fixed_before_the_runs():
    from experiments.learning_check.check import headroom, verdict

    scores = {"supervised_1": {0: 30.0, 1: 31.0}, "supervised_100": {0: 40.0, 1: 40.0},
              "fixmatch_1": {0: 32.0, 1: 33.0}, "rs_mtdf_1": {0: 32.5, 1: 32.0},
              "rs_mtdf-random_1": {0: 30.0, 1: 33.5}}
    assert headroom(scores) == 9.5
    assert verdict(scores, "fixmatch", "supervised")[0] == "supported"                   # +2.0, both seeds
    assert verdict(scores, "supervised", "fixmatch")[0] == "contradicted"
    assert verdict(scores, "rs_mtdf", "fixmatch")[0] == "cannot judge (no difference of a point)"   # -0.25
    assert verdict(scores, "rs_mtdf", "rs_mtdf-random")[0].startswith("cannot judge")  # +0.5 mean, seeds disagree
    assert verdict(scores, "rs_mtdf", "rs_mtdf-nofusion")[0] == "not run"
    uneven = {**scores, "fixmatch_1": {0: 32.0, 1: 33.0, 2: 40.0}}                     # seed 2 on one side only
    assert verdict(uneven, "fixmatch", "supervised")[1].startswith("32.50 vs 30.50: +2.00")  # seeds 0, 1
    narrow = {**scores, "supervised_100": {0: 37.0, 1: 38.0}}                          # headroom 7.0 < 8
    assert verdict(narrow, "fixmatch", "supervised")[0] == "cannot judge (headroom below the rule)"


def test_the_summary_puts_each_runs_pseudo_labels_and_probe_beside_its_score(tmp_path):
    from experiments.learning_check.check import diagnosis_lines

    scores = {"fixmatch_1": {0: 39.06, 1: 40.61}, "supervised_1": {0: 35.8}}
    assert diagnosis_lines(tmp_path, scores) == []                                       # diagnose did not run
    (tmp_path / "pseudo_labels.json").write_text(json.dumps(
        {"fixmatch_1_s0": {"latest_ema": {"confident_share": 61.25, "confident_accuracy": 88.5}},
         "fixmatch_1_s1": {"latest_ema": {"confident_share": 60.0, "confident_accuracy": None}}}))
    (tmp_path / "student_probes.json").write_text(json.dumps(
        {"stand_in": {"miou": 22.9}, "fixmatch_1_s0": {"miou": 30.123}, "supervised_1_s0": {"miou": 25.0}}))
    rows = diagnosis_lines(tmp_path, scores)[3:]
    assert rows == ["| stand in (no training) | | | | 22.90 |",
                    "| supervised_1_s0 | 35.80 |  |  | 25.00 |",
                    "| fixmatch_1_s0 | 39.06 | 61.2 | 88.5 | 30.12 |",
                    "| fixmatch_1_s1 | 40.61 | 60.0 |  |  |"]


@pytest.mark.parametrize("step", ["runs", "summary", "diagnose"])
def test_a_step_in_a_work_folder_without_its_inputs_is_one_line_and_starts_nothing(tmp_path, step):
    from experiments.learning_check.check import main
    from util.errors import DataError

    with pytest.raises(DataError, match="is missing: make the data|holds no runs folder"):
        main([step, "--work", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def test_a_work_folder_with_a_space_reaches_every_command_whole(tmp_path, monkeypatch):
    """Every path the check builds into a command is quoted: the run's train and test commands split back into
    the arguments they were built from."""
    import shlex
    import subprocess

    from experiments.learning_check import check

    work = tmp_path / "my work"
    started = []

    class Recorded:
        def __init__(self, args, **kwargs):
            started.append(args)

    monkeypatch.setattr(subprocess, "Popen", Recorded)
    monkeypatch.setattr(check, "saved_setting_differences", lambda *args: {})
    monkeypatch.setattr(check, "training_list_digests", lambda *args: {})
    name, overrides = check.job(work, "fixmatch", "1", 0)
    check.run_one(work, name, overrides, threads=1)
    train, test = started[0][2].split(" && ")
    assert f"save_path={work / 'runs' / name}" in shlex.split(train)
    assert str(work / "runs" / name / "best.pth") in shlex.split(test)


def test_the_checks_command_refuses_a_parallel_below_one_and_unknown_arguments(capsys):
    import pytest

    from experiments.learning_check.check import main

    for argv in (["runs", "--parallel", "0"], ["runs", "--paralel", "2"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "must be a whole number of at least 1" in capsys.readouterr().err
