"""Score a model on a labelled subset (val or test): one confusion matrix per process, summed once at the end.

Used by train.py (after each epoch) and eval/eval.py. Each process scores a disjoint shard of the subset
(items rank, rank + W, ...), so the summed matrix counts every pixel exactly once, as one process would.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sized
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from dataset.sampler import shard_indices
from eval.inference import Model, predict_logits, resolve_window
from eval.metrics import ConfusionMatrix
from util.config import Config
from util.dist import DistInfo, worker_init
from util.precision import autocast_dtype


def collate_by_size(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group validation items into batches of equal image size (tiles of a split may differ in size)."""
    groups: dict[tuple[int, ...], list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        groups[tuple(item["img"].shape)].append(item)
    return [{"img": torch.stack([i["img"] for i in group]),
             "mask": torch.stack([i["mask"] for i in group]),
             "name": [i["name"] for i in group]} for group in groups.values()]


def build_eval_loader(dataset: Dataset, cfg: Config, dist_info: DistInfo | None = None) -> DataLoader:
    """A loader over this process's shard of `dataset`: items rank, rank + W, ... (no padding, no duplicates)."""
    rank, world = (dist_info.rank, dist_info.world_size) if dist_info else (0, 1)
    # The eval datasets are map-style, with a length (torch's Dataset type does not say so).
    shard = Subset(dataset, shard_indices(len(cast(Sized, dataset)), rank, world))
    # Sliding windows are batched inside one image; `original` mode batches whole images instead.
    per_step = cfg.eval.batch_size if cfg.eval.mode == "original" else 1
    return DataLoader(shard, batch_size=per_step, shuffle=False, num_workers=cfg.train.num_workers,
                      collate_fn=collate_by_size, pin_memory=torch.cuda.is_available(), worker_init_fn=worker_init())


def evaluate(model: Model, loader: DataLoader, cfg: Config, device: torch.device,
             dist_info: DistInfo | None = None, max_visualize: int = 0, progress: bool = False,
             excluded: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Scores of `model` on the (sharded) `loader`, summed over processes: see eval.metrics for the keys.

    `excluded`: classes whose ground truth is not scored; None: the protocol's (dataset.eval_exclude).

    The result also holds 'confusion_matrix' (nclass x nclass list, rows ground truth) and 'samples': up
    to `max_visualize` dicts {'img', 'mask', 'pred', 'name'} of this process (CPU tensors).
    """
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    mode = cfg.eval.mode
    window, stride = resolve_window(cfg) if mode == "sliding_window" else (None, None)
    amp_dtype = autocast_dtype(cfg.train.precision, device, allow_cpu=cfg.train.cpu_autocast)
    cm = ConfusionMatrix(cfg.dataset.nclass, device)
    samples: list[dict[str, Any]] = []

    show = progress and (dist_info is None or dist_info.is_main)
    for groups in tqdm(loader, desc=f"eval ({mode})", disable=not show, leave=False):
        for batch in groups:
            img = batch["img"].to(device, non_blocking=True)
            mask = batch["mask"].to(device, non_blocking=True)
            probs = predict_logits(model, img, mode, window, stride, cfg.eval.batch_size, amp_dtype,
                                   blend=cfg.eval.blend)
            pred = probs.argmax(1)
            cm.update(pred, mask)
            for i in range(min(len(pred), max_visualize - len(samples))):
                samples.append({"img": img[i].cpu(), "mask": mask[i].cpu(), "pred": pred[i].cpu(),
                                "name": batch["name"][i]})

    cm.all_reduce()
    result = cm.compute(cfg.dataset.excluded_classes if excluded is None else excluded)
    result["confusion_matrix"] = cm.mat.cpu().tolist()
    result["samples"] = samples
    if was_training and isinstance(model, torch.nn.Module):
        model.train()
    return result


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def metrics_table(result: dict[str, Any], class_names: tuple[str, ...] | list[str]) -> str:
    """A Markdown table of per-class IoU and F1 and the summary scores, in percent; printable as it is."""
    lines = ["| class | IoU | F1 |", "|---|---:|---:|"]
    for c, name in enumerate(class_names):
        if not result["included"][c]:
            lines.append(f"| {name} | excluded | excluded |")
        else:
            lines.append(f"| {name} | {_percent(result['iou'][c])} | {_percent(result['f1'][c])} |")
    lines += ["", "| mIoU | mean F1 | OA | kappa |", "|---:|---:|---:|---:|",
              f"| {_percent(result['miou'])} | {_percent(result['mean_f1'])} | {_percent(result['oa'])} | "
              f"{_percent(result['kappa'])} |"]
    if any(inc and v is None for inc, v in zip(result["included"], result["iou"])):
        lines += ["", "-: class absent from both ground truth and prediction, left out of the means"]
    return "\n".join(lines)
