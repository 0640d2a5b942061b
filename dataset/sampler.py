"""Seeded, resumable, rank-sharded sampling: which items an epoch visits and the seed each sample augments with.

An epoch's order and every sample's seed are pure functions of (seed, epoch, position), so a run gives
the same batches whatever the number of workers, and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def _epoch_generators(seed: int, epoch: int) -> tuple[torch.Generator, torch.Generator]:
    """Two independent generators for (seed, epoch): one for the order, one for the sample seeds."""
    order_seed, sample_seed = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint64)
    return (torch.Generator().manual_seed(int(order_seed)), torch.Generator().manual_seed(int(sample_seed)))


class SeededSampler(Sampler[tuple[int, int]]):
    """Yields (index, sample_seed) for this rank: `length` draws per epoch from `n_items`, disjoint across ranks.

    The epoch's global list is whole permutations of range(n_items) concatenated and cut at `length` (so a
    small labelled list is repeated to the unlabelled length), padded by wrapping around to a multiple of the
    number of shards as DistributedSampler does. With gradient accumulation every process stands for
    `accumulation` shards ("virtual ranks", as if that many more processes ran): shard v = rank * accumulation + j
    takes positions v, v + V, ... (V = world_size * accumulation), and the process yields, optimizer step by
    optimizer step, `batch_size` items of each of its shards in turn, so that its j-th micro-batch of a step
    holds what process v would hold without accumulation. Only whole micro-batches are yielded.
    """

    def __init__(self, n_items: int, length: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, batch_size: int = 1, accumulation: int = 1) -> None:
        if n_items <= 0 or length <= 0:
            raise ValueError(f"SeededSampler needs n_items > 0 and length > 0 (got {n_items}, {length})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, {world_size})")
        if batch_size < 1 or accumulation < 1:
            raise ValueError(f"batch_size and accumulation must be >= 1 (got {batch_size}, {accumulation})")
        self.n_items, self.length, self.seed = n_items, length, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.batch_size, self.accumulation = batch_size, accumulation
        self.shards = world_size * accumulation
        # Draws per shard, and the whole micro-batches of them.
        self.per_shard = math.ceil(length / self.shards)
        self.steps = self.per_shard // batch_size
        self.num_samples = self.steps * batch_size * accumulation
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and seeds the next iteration yields."""
        self.epoch = epoch

    def set_start(self, k: int) -> None:
        """Skip the first k samples of this rank in the next iteration only (mid-epoch resume)."""
        if not 0 <= k <= self.num_samples:
            raise ValueError(f"start {k} is outside [0, {self.num_samples}]")
        self.start = k

    def epoch_items(self) -> list[tuple[int, int]]:
        """This rank's full list of (index, sample_seed) for the current epoch, ignoring set_start."""
        order_gen, seed_gen = _epoch_generators(self.seed, self.epoch)
        repeats = math.ceil(self.length / self.n_items)
        if self.shuffle:
            order = torch.cat([torch.randperm(self.n_items, generator=order_gen) for _ in range(repeats)])
        else:
            order = torch.arange(self.n_items).repeat(repeats)
        order = order[:self.length]
        total = self.per_shard * self.shards
        if total > self.length:
            order = torch.cat([order, order.repeat(math.ceil(total / self.length))[:total - self.length]])
        # One seed per global position: a padded duplicate still augments differently.
        seeds = torch.randint(0, 2**63 - 1, (total,), generator=seed_gen)
        b, k = self.batch_size, self.accumulation
        shards = [list(zip(order[v::self.shards].tolist(), seeds[v::self.shards].tolist()))
                  for v in range(self.rank * k, (self.rank + 1) * k)]
        return [item for t in range(self.steps) for shard in shards for item in shard[t * b:(t + 1) * b]]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start, self.start = self.start, 0
        return iter(self.epoch_items()[start:])

    def __len__(self) -> int:
        """Samples the next iteration yields (the rank's epoch length minus a pending set_start)."""
        return self.num_samples - self.start


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Evaluation shard of rank r: items r, r + W, ... (every item exactly once over all ranks, no padding)."""
    return list(range(rank, n, world_size))
