"""util/run.py: best-score bookkeeping, the run folder's checks, and when a score belongs to a run."""

import json
from pathlib import Path

import pytest

from tests.train_fixtures import DEMO, tiny_overrides, write_tiny_dataset
from util.io import file_sha256
from util.run import Progress, evaluation_problem, protocol_evaluation


def test_best_pth_follows_the_selected_weights_and_a_tie_goes_to_the_later_epoch():
    progress = Progress(best_by="student")
    assert progress.record(1, 10, {"student": 50.0, "ema": 40.0})
    assert progress.best_checkpoint == {"iteration": 10, "epoch": 1}
    # A tie: the later epoch is kept, as the reference's is_best = mIoU >= previous best.
    assert progress.record(2, 20, {"student": 50.0, "ema": 45.0})
    assert progress.best_checkpoint == {"iteration": 20, "epoch": 2}
    # Worse student, better EMA: best.pth stays; the EMA's best moves on its own.
    assert not progress.record(3, 30, {"student": 49.0, "ema": 46.0})
    assert progress.best == {"student": {"miou": 50.0, "epoch": 2}, "ema": {"miou": 46.0, "epoch": 3}}
    assert progress.best_checkpoint == {"iteration": 20, "epoch": 2}
    assert progress.describe_best() == "best val mIoU student 50.00 (epoch 2), ema 46.00 (epoch 3)"
    by_ema = Progress(best_by="ema")
    by_ema.record(1, 10, {"student": 50.0, "ema": 40.0})
    assert not by_ema.record(2, 20, {"student": 60.0, "ema": 39.0})
    assert by_ema.best_checkpoint == {"iteration": 10, "epoch": 1}   # what best.pth holds: the EMA's best


def test_a_score_belongs_to_the_run_only_for_its_current_best_pth_on_its_current_test_list(tmp_path: Path):
    test_list = tmp_path / "test.txt"
    test_list.write_text("a.png a_mask.png\n")
    progress = {"run_id": "abc", "best_checkpoint": {"iteration": 20, "epoch": 2}}
    metrics = {"subset": "test", "subset_list_sha256": file_sha256(test_list),
               "checkpoint": {"path": "/r/best.pth", "run_id": "abc", "iteration": 20}}
    assert evaluation_problem(progress, metrics, test_list) is None
    assert "another run" in evaluation_problem(progress, {**metrics, "checkpoint": {"run_id": "x"}}, test_list)
    stale = {**metrics, "checkpoint": {"path": "/r/best.pth", "run_id": "abc", "iteration": 10}}
    assert "iteration 10" in evaluation_problem(progress, stale, test_list)
    assert "which checkpoint" in evaluation_problem(progress, {"subset": "test"}, test_list)
    test_list.write_text("b.png b_mask.png\n")
    assert "another test.txt" in evaluation_problem(progress, metrics, test_list)


def test_a_metrics_json_written_before_subset_was_named_still_counts(tmp_path: Path):
    """metrics.json once named the scored subset 'split' (and its list 'split_list'): such a score of the run's
    current best.pth is still found as the protocol's, and still refused once the test list changed."""
    test_list = tmp_path / "test.txt"
    test_list.write_text("a.png a_mask.png\n")
    progress = {"run_id": "abc", "best_checkpoint": {"iteration": 20, "epoch": 2}, "selected_by": "student"}
    (tmp_path / "progress.json").write_text(json.dumps(progress))
    old = {"split": "test", "split_list_sha256": file_sha256(test_list), "mode": "original", "weights": "student",
           "checkpoint": {"path": "/r/best.pth", "run_id": "abc", "iteration": 20}}
    (tmp_path / "eval_best_test_original_student").mkdir()
    (tmp_path / "eval_best_test_original_student" / "metrics.json").write_text(json.dumps(old))
    assert protocol_evaluation(tmp_path, test_list) == tmp_path / "eval_best_test_original_student"
    test_list.write_text("b.png b_mask.png\n")
    assert "another test.txt" in evaluation_problem(progress, old, test_list)
    assert protocol_evaluation(tmp_path, test_list) is None


def test_a_run_resumed_after_its_split_lists_changed_is_refused_unless_told(tmp_path: Path):
    """Every checkpoint keeps the digests of the labelled, unlabelled and val lists it was trained on: resuming
    after a resample of the lists would otherwise train on other tiles without a word."""
    from dataset.splits import training_list_digests
    from scripts.costs import step_of
    from util.config import load_config
    from util.errors import WeightsError
    from util.run import Progress, resume_training, save_checkpoint

    splits = write_tiny_dataset(tmp_path / "data")
    cfg = load_config(DEMO, tiny_overrides(tmp_path / "data", splits, tmp_path / "run", "supervised", 1))
    lists = training_list_digests(splits, "10")
    assert set(lists) == {"labeled", "unlabeled", "val"}
    latest = tmp_path / "latest.pth"
    save_checkpoint(latest, step_of(cfg, "cpu").state, 1, 1, Progress("student"), 0.0, cfg, lists)

    def resume(allow_changed: bool = False) -> dict:
        now = training_list_digests(splits, "10")
        return resume_training(latest, step_of(cfg, "cpu").state, cfg, 1, Progress("student"), now, allow_changed)[0]

    assert resume() == {}                     # the same lists: resumes
    labeled = splits / "10" / "labeled.txt"
    labeled.write_text("".join(labeled.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(WeightsError, match=r"written with other settings \(labeled.txt=[0-9a-f]{12} \(this config: "
                                            r"[0-9a-f]{12}\)\); to go on with the new values pass --resume-changed"):
        resume()
    assert list(resume(allow_changed=True)) == ["labeled.txt"]


def test_a_run_saved_before_dataset_lists_was_named_resumes_and_compares_as_the_same_setting(tmp_path: Path):
    """Checkpoints and config.yaml written while the key was dataset.splits hold the same setting."""
    import yaml

    from util.config import Config
    from util.run import resume_differences, saved_setting_differences

    cfg = Config().replace({"dataset.lists": "/data/lists"})
    old = cfg.to_dict()
    old["dataset"]["splits"] = old["dataset"].pop("lists")
    assert resume_differences(old, cfg, tmp_path / "latest.pth", allow_changed=False) == {}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    assert saved_setting_differences(tmp_path, cfg) == {}
