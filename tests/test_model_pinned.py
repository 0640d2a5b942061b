"""What the architecture computes, pinned: the tiny student's encoder features, translated features and logits,
and ViT-S's DPT head alone, from fixed weights on a fixed input, against values recorded in this file.

Every detail that decides the logits (an activation, a residual, the order or kernel of two convolutions, a
bias, a resize's corner alignment) moves these values far beyond the tolerance, while float reordering (thread
counts, another CPU's kernels) stays far inside it. Measured when recorded: computing in fp64, without oneDNN,
or with ATEN_CPU_CAPABILITY=avx2 or default moved them by at most 3 % of the tolerance; each structural slip of
scripts/mutants.py (and a few more) by 9 to over 1,000 tolerances. The weights are no initialiser's (torch's
and timm's init routines may change between versions): each parameter is drawn from numpy's legacy RandomState,
whose streams are frozen, and scaled by its kind. No other code is needed at hand: the values are what this
code computed when they were recorded, and a change anywhere in the layers that decide the logits moves them.

Regenerate the values only when a change to the architecture is intended, and say so in that commit:

    python tests/test_model_pinned.py      # prints PINNED as recorded below
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

if __name__ == "__main__":  # run as a file to regenerate the values: the repository root first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.dpt import DPTHead
from model.encoder import SIZES, DinoEncoder
from model.segmenter import Segmenter

# The tiny RS-MTDF student of tests/test_model_teachers.py's tiny_cfg: both teachers distilled and fused.
TEACHER_DIMS = {"dino": 64, "clip": 96}
FUSION = {"student": 0.8, "dino": 0.1, "clip": 0.1}
# Non-square, so that a swapped height and width shows.
IMAGE = (2, 3, 42, 56)
# ViT-S's DPT head alone on four token maps of a 2 x 3 patch grid.
HEAD_GRID = (2, 3)
RTOL = ATOL = 1e-4

# sketch() of each output (see there), recorded with `python tests/test_model_pinned.py`.
PINNED: dict[str, list[float]] = {
    "encoder features":
        [0.00512227687, 0.978786914, 0.0114687255, 0.36663875, -0.150184125, -0.99194783, -0.0144262705],
    "translated dino":
        [-0.070425273, 0.579739005, 0.0245250609, 0.936505795, -0.289025366, -0.0779929608, 0.104403161],
    "translated clip":
        [0.0114638478, 0.701737482, 0.0107656197, 1.02565086, 0.258472651, 0.0279040001, 0.36017859],
    "logits":
        [0.152068609, 0.485932149, -0.000953253524, -0.084440574, -0.0451343916, 0.491149873, 0.123844318],
    "vit-s dpt head":
        [0.105275005, 0.313731523, -0.00370766686, -0.241786167, 0.00678170472, 0.0950926617, -0.405701369],
}


def fixed_weights(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter of `module`, in order, from RandomState(seed): uniform in [-1, 1], scaled by its kind so
    that each part contributes (norm weights about 1, biases about 0.1, LayerScale about 0.5, matrices and
    kernels by 1 / sqrt(fan-in), embeddings about 0.5)."""
    rs = np.random.RandomState(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            u = rs.uniform(-1.0, 1.0, tuple(p.shape))
            if name.endswith("bias"):
                value = 0.1 * u
            elif name.endswith("weight") and p.dim() == 1:
                value = 1.0 + 0.2 * u
            elif name.endswith("weight"):
                value = u * np.sqrt(3.0 * p.shape[0] / p.numel())
            elif name.endswith("gamma"):
                value = 0.5 + 0.2 * u
            else:
                value = 0.5 * u
            p.copy_(torch.from_numpy(value))
    return module


def fixed_input(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.RandomState(seed).standard_normal(shape).astype(np.float32))


def sketch(t: torch.Tensor) -> list[float]:
    """Seven numbers of `t`: its mean, root mean square and mean after a fixed random sign per element, and its
    values at the first element, a third, two thirds and the last (one at each border of an image)."""
    flat = t.detach().double().flatten()
    n = flat.numel()
    signs = torch.from_numpy(np.random.RandomState(7).choice([-1.0, 1.0], n))
    return [flat.mean().item(), flat.square().mean().sqrt().item(), (flat * signs).mean().item(),
            *(flat[i].item() for i in (0, n // 3, 2 * n // 3, n - 1))]


def student_outputs() -> dict[str, list[float]]:
    """Sketches of the tiny student's four encoder maps, its translated features and its logits."""
    model = fixed_weights(Segmenter("tiny", 7, TEACHER_DIMS, 32, FUSION, clip_size=28)).eval()
    img = fixed_input(IMAGE, seed=1)
    with torch.no_grad():
        features = torch.cat(model.encoder.forward_features(img), dim=1)
        out = model.forward_train(img)
    return {"encoder features": sketch(features), "translated dino": sketch(out.translated["dino"]),
            "translated clip": sketch(out.translated["clip"]), "logits": sketch(out.logits)}


def vit_s_head_outputs() -> dict[str, list[float]]:
    """Sketch of ViT-S's DPT head on four fixed token maps."""
    size = SIZES["small"]
    head = fixed_weights(DPTHead(size.embed_dim, size.features, size.out_channels, 7)).eval()
    maps = [fixed_input((1, size.embed_dim, *HEAD_GRID), seed=2 + i) for i in range(4)]
    with torch.no_grad():
        return {"vit-s dpt head": sketch(head(maps))}


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request: pytest.FixtureRequest):
    """The values hold whatever the intra-op thread count (each count reduces in its own order)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield
    torch.set_num_threads(before)


def assert_pinned(outputs: dict[str, list[float]]) -> None:
    for name, values in outputs.items():
        torch.testing.assert_close(torch.tensor(values, dtype=torch.float64),
                                   torch.tensor(PINNED[name], dtype=torch.float64), rtol=RTOL, atol=ATOL,
                                   msg=lambda m, name=name: f"{name} moved (see the module docstring): {m}")


@pytest.mark.usefixtures("threads")
def test_the_tiny_students_features_translations_and_logits_are_the_pinned_ones():
    assert_pinned(student_outputs())


@pytest.mark.usefixtures("threads")
def test_the_vit_s_dpt_head_gives_the_pinned_logits():
    assert_pinned(vit_s_head_outputs())


# Parameters of each size's encoder (DINOv2's official tensors but its mask token) and DPT head (7 classes).
PARAMETERS = {"tiny": (326_016, 250_471), "small": (22_056_192, 2_664_295), "base": (86_579_712, 10_651_335),
              "large": (304_367_616, 30_026_759), "giant": (1_136_479_232, 119_607_559)}


def test_every_size_holds_the_pinned_numbers_of_encoder_and_head_parameters():
    """The real sizes' layouts (widths, kernels, biases), which the fixed-weight values above see only for ViT-S's
    head and the tiny student; counted on the meta device, without memory."""
    counts = {}
    for name, size in SIZES.items():
        with torch.device("meta"):
            encoder, head = DinoEncoder(name), DPTHead(size.embed_dim, size.features, size.out_channels, 7)
        counts[name] = tuple(sum(p.numel() for p in m.parameters()) for m in (encoder, head))
    assert counts == PARAMETERS


if __name__ == "__main__":
    torch.set_num_threads(1)
    print("PINNED: dict[str, list[float]] = {")
    for key, values in {**student_outputs(), **vit_s_head_outputs()}.items():
        print(f'    "{key}":\n        [{", ".join(f"{v:.9g}" for v in values)}],')
    print("}")
