"""dataset/sampler.py: deterministic epochs, disjoint rank shards, resume by set_start, labelled repetition."""

from collections import Counter

import pytest

from dataset.sampler import SeededSampler, shard_indices


def ranks(n_items: int, length: int, world: int, seed: int = 0, epoch: int = 0) -> list[list[tuple[int, int]]]:
    out = []
    for r in range(world):
        s = SeededSampler(n_items, length, seed, r, world)
        s.set_epoch(epoch)
        out.append(list(s))
    return out


def test_ranks_are_disjoint_and_cover_every_item_once():
    shards = ranks(12, 12, 3)
    indices = [i for shard in shards for i, _ in shard]
    assert sorted(indices) == list(range(12))
    assert all(len(shard) == 4 for shard in shards)


def test_uneven_length_is_padded_to_equal_rank_lengths():
    shards = ranks(10, 10, 3)
    assert [len(s) for s in shards] == [4, 4, 4]
    indices = [i for shard in shards for i, _ in shard]
    assert set(indices) == set(range(10)) and len(indices) == 12


def test_sample_seeds_differ_across_positions_and_ranks():
    seeds = [seed for shard in ranks(5, 40, 2) for _, seed in shard]
    assert len(set(seeds)) == len(seeds)


def test_labelled_list_is_repeated_in_whole_permutations_to_the_length():
    (items,) = ranks(3, 10, 1)
    counts = Counter(i for i, _ in items)
    assert len(items) == 10 and sorted(counts.values()) == [3, 3, 4]
    assert sorted(i for i, _ in items[:3]) == [0, 1, 2]


def test_same_seed_and_epoch_give_the_same_order_and_seeds():
    assert ranks(20, 20, 2, seed=7, epoch=3) == ranks(20, 20, 2, seed=7, epoch=3)
    assert ranks(20, 20, 2, seed=7, epoch=3) != ranks(20, 20, 2, seed=7, epoch=4)
    assert ranks(20, 20, 2, seed=7, epoch=3) != ranks(20, 20, 2, seed=8, epoch=3)


def test_set_start_equals_slicing_and_lasts_one_iteration():
    s = SeededSampler(20, 30, 1, rank=1, world_size=2)
    s.set_epoch(2)
    full = list(s)
    s.set_start(6)
    assert len(s) == len(full) - 6
    assert list(s) == full[6:]
    assert list(s) == full and len(s) == len(full)


def test_unshuffled_sampler_visits_items_in_order():
    s = SeededSampler(4, 6, 0, shuffle=False)
    assert [i for i, _ in s] == [0, 1, 2, 3, 0, 1]


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError):
        SeededSampler(0, 5, 0)
    with pytest.raises(ValueError):
        SeededSampler(5, 5, 0, rank=2, world_size=2)
    with pytest.raises(ValueError):
        SeededSampler(5, 5, 0).set_start(6)


def test_shard_indices_split_without_padding_or_duplicates():
    shards = [shard_indices(10, r, 4) for r in range(4)]
    assert shards[0] == [0, 4, 8] and shards[3] == [3, 7]
    assert sorted(i for s in shards for i in s) == list(range(10))


def test_accumulated_forwards_take_what_more_processes_would():
    """One process accumulating 2 forwards of 3 yields, step by step, the micro-batches processes 0 and 1 of a
    2-process run would yield: forward j of process r is virtual rank r * 2 + j."""
    def micro_batches(rank, world, accumulation):
        s = SeededSampler(20, 30, 5, rank, world, batch_size=3, accumulation=accumulation)
        s.set_epoch(1)
        items = list(s)
        return [items[i:i + 3] for i in range(0, len(items), 3)]

    one = micro_batches(0, 1, 2)
    two = [micro_batches(r, 2, 1) for r in range(2)]
    assert len(one) == 2 * len(two[0]) == 10  # 15 draws per virtual rank: 5 forwards of 3, 5 steps
    assert one == [batch for step in zip(*two) for batch in step]
    # A process of a 2-process run accumulating 2 forwards takes virtual ranks 2 and 3 of 4.
    four = [micro_batches(r, 4, 1) for r in range(4)]
    assert micro_batches(1, 2, 2) == [batch for step in zip(four[2], four[3]) for batch in step]
