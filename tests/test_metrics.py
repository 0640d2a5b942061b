"""The confusion matrix and its scores, checked against values computed by hand in each test."""

import pytest
import torch

from eval.metrics import ConfusionMatrix

# Rows ground truth, columns prediction. By hand: tp (3, 2, 1), gt (4, 2, 2), pred (4, 3, 1), 8 pixels.
HAND = [[3, 1, 0],
        [0, 2, 0],
        [1, 0, 1]]


def pixels(mat: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, target) pixel lists whose confusion matrix is `mat`."""
    pred, target = [], []
    for g, row in enumerate(mat):
        for p, count in enumerate(row):
            pred += [p] * count
            target += [g] * count
    return torch.tensor(pred), torch.tensor(target)


def scores(mat, nclass=None, exclude=()):
    cm = ConfusionMatrix(nclass or len(mat))
    cm.update(*pixels(mat))
    return cm.compute(exclude)


def test_counts_land_in_gt_rows_and_prediction_columns():
    cm = ConfusionMatrix(3)
    cm.update(*pixels(HAND))
    assert cm.mat.tolist() == HAND


def test_perfect_prediction_scores_one_everywhere():
    r = scores([[2, 0, 0], [0, 1, 0], [0, 0, 3]])
    assert r["iou"] == [100.0] * 3 and r["f1"] == [100.0] * 3
    assert (r["miou"], r["mean_f1"], r["oa"], r["kappa"]) == (100.0, 100.0, 100.0, 100.0)


def test_all_wrong_scores_zero_and_kappa_minus_one():
    r = scores([[0, 1], [1, 0]])
    assert r["iou"] == [0.0, 0.0] and r["f1"] == [0.0, 0.0]
    assert (r["miou"], r["mean_f1"], r["oa"]) == (0.0, 0.0, 0.0)
    # chance agreement (1*1 + 1*1) / 2^2 = 0.5, so kappa = (0 - 0.5) / (1 - 0.5)
    assert r["kappa"] == pytest.approx(-100.0)


def test_hand_computed_matrix():
    r = scores(HAND)
    assert r["iou"] == pytest.approx([100 * 3 / 5, 100 * 2 / 3, 100 * 1 / 2])
    assert r["f1"] == pytest.approx([100 * 6 / 8, 100 * 4 / 5, 100 * 2 / 3])
    assert r["miou"] == pytest.approx(100 * (3 / 5 + 2 / 3 + 1 / 2) / 3)
    assert r["mean_f1"] == pytest.approx(100 * (6 / 8 + 4 / 5 + 2 / 3) / 3)
    assert r["oa"] == pytest.approx(100 * 6 / 8)
    # chance = (4*4 + 2*3 + 2*1) / 64 = 0.375; kappa = (0.75 - 0.375) / 0.625
    assert r["kappa"] == pytest.approx(100 * 0.6)
    assert r["pixels"] == 8


def test_class_absent_from_gt_and_prediction_is_none_and_left_out_of_the_means():
    r = scores(HAND, nclass=4)
    assert r["iou"][3] is None and r["f1"][3] is None and r["included"][3]
    assert r["classes_in_mean"] == [0, 1, 2]
    assert r["miou"] == pytest.approx(100 * (3 / 5 + 2 / 3 + 1 / 2) / 3)
    assert r["kappa"] == pytest.approx(100 * 0.6)


def test_class_only_predicted_scores_zero_not_none():
    r = scores([[1, 1], [0, 0]])
    assert r["iou"] == [50.0, 0.0] and r["miou"] == 25.0


def test_ignore_and_out_of_range_ground_truth_are_not_counted():
    pred, target = pixels(HAND)
    cm = ConfusionMatrix(3)
    cm.update(torch.cat([pred, torch.tensor([0, 1, 2, 2])]), torch.cat([target, torch.tensor([255, 255, 3, -1])]))
    assert cm.mat.tolist() == HAND
    assert cm.compute()["miou"] == pytest.approx(100 * (3 / 5 + 2 / 3 + 1 / 2) / 3)


def test_excluded_ground_truth_is_ignored_but_predicting_an_excluded_class_stays_an_error():
    # As the authors' evaluation scripts score Potsdam clutter / DeepGlobe unknown: class 2 is excluded.
    # Row 2 (its ground truth) goes; column 2 stays in the unions of the true classes 0 and 1.
    mat = [[3, 1, 1],
           [0, 2, 1],
           [1, 0, 1]]
    r = scores(mat, exclude=(2,))
    # Scored rows [[3, 1, 1], [0, 2, 1]]: tp (3, 2), gt (5, 3), predicted as 0/1 (3, 3), 8 pixels.
    assert r["included"] == [True, True, False]
    assert r["iou"] == pytest.approx([100 * 3 / 5, 100 * 2 / 4, None])
    assert r["f1"] == pytest.approx([100 * 6 / 8, 100 * 4 / 6, None])
    assert r["miou"] == pytest.approx(100 * (3 / 5 + 2 / 4) / 2)
    assert r["oa"] == pytest.approx(100 * 5 / 8)
    # chance = (5*3 + 3*3) / 64 = 0.375; kappa = (0.625 - 0.375) / 0.625
    assert r["kappa"] == pytest.approx(100 * 0.4)
    assert r["pixels"] == 8
    assert r["classes_in_mean"] == [0, 1]
    # Dropping the column as well would have forgiven the two pixels predicted as class 2.
    assert r["miou"] < 100 * (3 / 4 + 2 / 3) / 2


def test_updates_accumulate_over_batched_maps():
    torch.manual_seed(0)
    pred = torch.randint(0, 4, (3, 5, 7))
    target = torch.randint(0, 4, (3, 5, 7))
    whole, parts = ConfusionMatrix(4), ConfusionMatrix(4)
    whole.update(pred, target)
    for p, t in zip(pred, target):
        parts.update(p, t)
    assert torch.equal(whole.mat, parts.mat)
    assert whole.mat.sum() == pred.numel()
    expected = torch.zeros(4, 4, dtype=torch.int64)
    for p, t in zip(pred.flatten().tolist(), target.flatten().tolist()):
        expected[t, p] += 1
    assert torch.equal(whole.mat, expected)


def test_empty_matrix_scores_are_none():
    r = ConfusionMatrix(3).compute()
    assert r["miou"] is None and r["oa"] is None and r["kappa"] is None


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        ConfusionMatrix(3).update(torch.zeros(2, 3), torch.zeros(3, 2))


def test_all_reduce_is_a_no_op_in_one_process():
    cm = ConfusionMatrix(3)
    cm.update(*pixels(HAND))
    cm.all_reduce()
    assert cm.mat.tolist() == HAND
