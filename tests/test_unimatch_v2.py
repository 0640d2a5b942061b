"""methods/unimatch_v2.py: how many pairs of strong views get complementary channel dropout."""

import pytest
import torch

from methods.unimatch_v2 import complementary_channel_masks


def dropped_pairs(batch_size: int, pair_fraction: float, seed: int = 0) -> torch.Tensor:
    m1, m2 = complementary_channel_masks(batch_size, 32, 0.5, pair_fraction, torch.Generator().manual_seed(seed))
    dropped = (m1 != 1).any(1) | (m2 != 1).any(1)
    assert torch.equal(m1[dropped] + m2[dropped], torch.full((int(dropped.sum()), 32), 2.0))
    assert torch.equal(m1[~dropped], torch.ones_like(m1[~dropped])) and torch.equal(m2[~dropped], m1[~dropped])
    return dropped


@pytest.mark.parametrize("batch_size, expected", [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (8, 4), (9, 5)])
def test_half_of_the_pairs_rounded_up_get_the_dropout_as_in_unimatch_v2(batch_size, expected):
    # UniMatch V2 keeps int(B * (1 - 0.5)) pairs whole, so B - int(B / 2) are dropped: 1 of 1, 3 of 5
    # (rounding B / 2 to the nearest even integer would drop 0 of 1 and 2 of 5).
    assert int(dropped_pairs(batch_size, 0.5).sum()) == expected == batch_size - int(batch_size * 0.5)


@pytest.mark.parametrize("batch_size, fraction, expected", [(4, 0.0, 0), (4, 1.0, 4), (2, 0.25, 1), (8, 0.25, 2)])
def test_other_pair_fractions_keep_int_b_times_one_minus_the_fraction_whole(batch_size, fraction, expected):
    assert int(dropped_pairs(batch_size, fraction).sum()) == expected


def test_the_dropped_pairs_are_a_random_subset():
    subsets = {tuple(dropped_pairs(5, 0.5, seed).nonzero().flatten().tolist()) for seed in range(30)}
    assert len(subsets) > 5 and all(len(s) == 3 for s in subsets)
