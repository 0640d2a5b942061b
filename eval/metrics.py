"""Segmentation scores from one confusion matrix: per-class IoU and F1, mIoU, mean F1, overall accuracy, kappa.

Conventions (docs/method.md §5):
- The matrix counts pixels as `mat[gt, pred]`, accumulated on the device without a host sync.
- Ignore pixels (255) and ground truth outside [0, nclass) are never counted.
- Excluded classes (the dataset protocol, e.g. Potsdam clutter) are scored as the authors' evaluation
  scripts score them: pixels whose GROUND TRUTH is excluded are ignored (the row goes), but a scored pixel
  PREDICTED as an excluded class stays an error of its true class (the column stays in that class's
  union). Dropping the column too would forgive those errors and inflate every score.
- A class absent from both ground truth and prediction has IoU and F1 of 0/0: it is reported as None and
  left out of the means (as mmsegmentation does), rather than counted as 0 or 1. `classes_in_mean` says
  which classes a mean is over.
- Every score is a percentage in [0, 100], everywhere (screen, logs, metrics.json, checkpoints). An
  undefined score is None.
"""

from __future__ import annotations

import math

import torch

from util.dist import all_reduce_sum


class ConfusionMatrix:
    """Pixel counts `mat[gt, pred]` for `nclass` classes, kept on `device`."""

    def __init__(self, nclass: int, device: torch.device | str = "cpu") -> None:
        self.nclass = nclass
        # One extra bin collects ignored pixels, so no boolean indexing (a host sync) is needed.
        self._bins = torch.zeros(nclass * nclass + 1, dtype=torch.int64, device=device)

    @property
    def mat(self) -> torch.Tensor:
        """The (nclass, nclass) matrix of counts, rows ground truth, columns prediction."""
        return self._bins[:-1].view(self.nclass, self.nclass)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count the pixels of a batch of predicted and ground-truth label maps of the same shape."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        n = self.nclass
        pred = pred.reshape(-1).to(self._bins.device, torch.int64)
        target = target.reshape(-1).to(self._bins.device, torch.int64)
        valid = (target >= 0) & (target < n) & (pred >= 0) & (pred < n)
        index = torch.where(valid, target * n + pred, n * n)
        # index_add_ rather than torch.bincount: bincount on CUDA reads the input's max back to the host.
        self._bins.index_add_(0, index, torch.ones(1, dtype=torch.int64, device=index.device).expand_as(index))

    def all_reduce(self) -> None:
        """Sum the counts over all processes (a no-op in a single process)."""
        all_reduce_sum(self._bins)

    def compute(self, exclude: tuple[int, ...] | list[int] = ()) -> dict:
        """Scores (percent) over the classes not in `exclude`; per-class lists hold None for excluded classes."""
        included = [c not in set(exclude) for c in range(self.nclass)]
        keep = [c for c in range(self.nclass) if included[c]]
        # Rows of excluded ground truth go; every prediction column stays (see the module docstring).
        scored = self.mat.detach().to("cpu", torch.float64)[keep]
        tp = scored[:, keep].diagonal()
        gt, pred = scored.sum(1), scored[:, keep].sum(0)
        total = scored.sum().item()

        iou_kept = _ratio(tp, gt + pred - tp)
        f1_kept = _ratio(2 * tp, gt + pred)
        iou: list[float | None] = [None] * self.nclass
        f1: list[float | None] = [None] * self.nclass
        for i, c in enumerate(keep):
            iou[c], f1[c] = iou_kept[i], f1_kept[i]

        oa = kappa = None
        if total > 0:
            agreement = tp.sum().item() / total
            # Cohen's kappa: agreement beyond what the two label marginals give by chance. Predictions of an
            # excluded class agree with no scored class, so they only lower the observed agreement.
            chance = (gt * pred).sum().item() / total**2
            oa = 100 * agreement
            kappa = 100 * (agreement - chance) / (1 - chance) if chance < 1 else None
        return {
            "iou": iou,
            "f1": f1,
            "included": included,
            "classes_in_mean": [c for c, v in zip(keep, iou_kept) if v is not None],
            "miou": _mean(iou_kept),
            "mean_f1": _mean(f1_kept),
            "oa": oa,
            "kappa": kappa,
            "pixels": int(total),
        }


def _ratio(num: torch.Tensor, den: torch.Tensor) -> list[float | None]:
    return [100 * n / d if d > 0 else None for n, d in zip(num.tolist(), den.tolist())]


def _mean(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None and not math.isnan(v)]
    return sum(defined) / len(defined) if defined else None
