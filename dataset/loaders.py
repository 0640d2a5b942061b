"""The training data of a run: the labelled and unlabelled loaders, sharded over processes and accumulated
forwards, and the val list; what the loop iterates, optimizer step by optimizer step."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from torch.utils.data import DataLoader

from dataset.sampler import SeededSampler
from dataset.semi import SemiDataset, check_disjoint
from dataset.splits import PER_PERCENT, SHARED, read_list, split_file, training_list_digests
from methods.common import Batch, Method
from methods.plan import BatchPlan
from util.config import Config
from util.dist import DistInfo, worker_init
from util.errors import ConfigError, DataError


def split_path(cfg: Config, kind: str) -> str:
    """The run's list of `kind` (labeled, unlabeled, val, test) under dataset.lists."""
    return str(split_file(cfg.dataset.lists, kind, cfg.dataset.split))


def count_lines(path: str, cfg: Config) -> int:
    if not Path(path).is_file():
        raise DataError(f"split file not found: {path} (dataset.lists={cfg.dataset.lists}, "
                        f"dataset.split={cfg.dataset.split}); run python -m dataset.prepare first")
    return sum(1 for line in read_list(path) if line.strip())


def seeded_loader(dataset: SemiDataset, length: int, plan: BatchPlan, seed: int, cfg: Config,
                  info: DistInfo) -> DataLoader:
    """A loader of micro-batches that draws `length` items per epoch (repeating a short list), sharded over
    processes and the forwards each accumulates (SeededSampler's virtual ranks)."""
    sampler = SeededSampler(len(dataset), length, seed, info.rank, info.world_size, batch_size=plan.micro_batch,
                            accumulation=plan.accumulation)
    workers = cfg.train.num_workers
    return DataLoader(dataset, batch_size=plan.micro_batch, sampler=sampler, num_workers=workers, drop_last=True,
                      pin_memory=info.device.type == "cuda", persistent_workers=workers > 0,
                      worker_init_fn=worker_init())


@dataclass
class TrainData:
    """The loaders one optimizer step draws from (labelled, and unlabelled where the method reads it), the val
    dataset, and the SHA-256 of the lists the run trains and validates on (kept in every checkpoint)."""

    loaders: tuple[DataLoader, ...]
    val: SemiDataset
    plan: BatchPlan
    # Draws an epoch from each list, and the optimizer steps they make (each takes `accumulation` micro-batches
    # from every loader).
    epoch_length: int
    steps_per_epoch: int
    split_lists: dict[str, str] = field(default_factory=dict)

    def steps(self, epoch: int, start: int, device: torch.device) -> Iterator[list[Batch]]:
        """The micro-batches of each optimizer step of `epoch` from step `start` on, on `device`."""
        for loader in self.loaders:
            sampler = cast(SeededSampler, loader.sampler)
            sampler.set_epoch(epoch)
            sampler.set_start(start * self.plan.micro_batch * self.plan.accumulation)
        micro: list[Batch] = []
        for items in zip(*self.loaders):
            micro.append(to_batch(items, device))
            if len(micro) == self.plan.accumulation:
                yield micro
                micro = []


def to_batch(items: tuple[dict, ...], device: torch.device) -> Batch:
    """The loaders' items as one micro-batch of the methods' names (img_x, mask_x; img_u_w, img_u_s, ...)."""
    def move(t: torch.Tensor) -> torch.Tensor:
        return t.to(device, non_blocking=True)

    batch = {"img_x": move(items[0]["img"]), "mask_x": move(items[0]["mask"])}
    if len(items) > 1:
        u = items[1]
        batch.update(img_u_w=move(u["img_w"]), img_u_s=move(u["img_s"]), ignore_mask=move(u["ignore_mask"]),
                     cutmix_box=move(u["cutmix_box"]))
    return batch


def build_train_data(cfg: Config, method: Method, plan: BatchPlan, info: DistInfo) -> TrainData:
    """The run's loaders. An epoch's length is the method's (one pass over the unlabelled list; the reference
    supervised epoch) unless train.epoch_samples sets it for every method."""
    unlabeled_file = split_path(cfg, "unlabeled")
    n_unlabeled = count_lines(unlabeled_file, cfg)
    if n_unlabeled == 0 and method.unlabeled:
        raise DataError(f"{unlabeled_file} is empty (dataset.split={cfg.dataset.split} labels every image): "
                        f"train.method={cfg.train.method} needs unlabelled images; use train.method=supervised")
    labeled = SemiDataset(cfg, "train_l", split_path(cfg, "labeled"))
    length = cfg.train.epoch_samples or method.epoch_length(cfg, len(labeled), n_unlabeled)
    loaders = [seeded_loader(labeled, length, plan, cfg.train.seed, cfg, info)]
    if method.unlabeled:
        unlabeled = SemiDataset(cfg, "train_u", unlabeled_file, n_strong=method.n_strong)
        loaders.append(seeded_loader(unlabeled, length, plan, cfg.train.seed + 1, cfg, info))
    val = SemiDataset(cfg, "val", split_path(cfg, "val"))
    # Training on a val or test tile, or one tile both labelled and unlabelled, is a list mistake.
    check_disjoint([split_path(cfg, kind) for kind in (*PER_PERCENT, *SHARED)], cfg.dataset.root)
    steps = len(loaders[0]) // plan.accumulation
    if steps == 0:
        epoch_key = "train.epoch_samples" if cfg.train.epoch_samples else f"dataset.split={cfg.dataset.split}'s lists"
        step_key = "train.global_batch" if cfg.train.global_batch is not None else "train.batch_size"
        raise ConfigError(f"{epoch_key}: an epoch of {length} draws is less than one optimizer step of "
                          f"{plan.global_batch} crops ({step_key}: {plan.describe()}); draw more or take fewer")
    return TrainData(tuple(loaders), val, plan, length, steps,
                     training_list_digests(cfg.dataset.lists, cfg.dataset.split))
