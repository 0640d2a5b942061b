"""Pictures of predictions: palette colouring, overlays on the image, and a confusion-matrix figure.

Written as PNG files by util.io.save_png (atomically).
"""

from __future__ import annotations

import os
from typing import BinaryIO

import matplotlib
import numpy as np
import torch

from dataset import transforms

matplotlib.use("Agg")  # files only: no display on servers and compute nodes; pyplot is imported after this

# Ignore pixels (255) and any label outside the palette are drawn black.
IGNORE_COLOR = (0, 0, 0)


def colorize(mask: np.ndarray, palette: tuple[tuple[int, int, int], ...] | list) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours of the dataset palette."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:] = IGNORE_COLOR
    lut[:len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[np.asarray(mask, dtype=np.uint8)]


def overlay(image: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Alpha-blend a colour mask onto an RGB image, both (H, W, 3) uint8."""
    blend = (1 - alpha) * image.astype(np.float32) + alpha * color.astype(np.float32)
    return np.clip(blend + 0.5, 0, 255).astype(np.uint8)


def denormalize(img: torch.Tensor) -> np.ndarray:
    """An ImageNet-normalised (3, H, W) tensor back to (H, W, 3) uint8 RGB (dataset.transforms.denormalize)."""
    return transforms.denormalize(img.detach().float().cpu()).permute(1, 2, 0).numpy()


def sample_panel(img: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor, palette) -> np.ndarray:
    """Image | ground truth | prediction side by side, (H, 3W, 3) uint8, e.g. for TensorBoard."""
    panels = [denormalize(img), colorize(mask.cpu().numpy(), palette), colorize(pred.cpu().numpy(), palette)]
    return np.concatenate(panels, axis=1)


def plot_confusion_matrix(mat: np.ndarray | list, class_names: list[str] | tuple[str, ...],
                          path: str | os.PathLike | BinaryIO, excluded: tuple[int, ...] = ()) -> None:
    """Save a row-normalised confusion matrix (rows ground truth) with class names on both axes, as a PNG
    file or into a binary stream."""
    import matplotlib.pyplot as plt

    mat = np.asarray(mat, dtype=np.float64)
    rows = mat.sum(1, keepdims=True)
    norm = np.divide(mat, rows, out=np.zeros_like(mat), where=rows > 0)
    names = [f"{n} (excluded)" if c in excluded else n for c, n in enumerate(class_names)]
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * n, 0.8 + 0.7 * n), dpi=120)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title("confusion matrix, rows normalised")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
