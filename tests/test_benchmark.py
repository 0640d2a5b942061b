"""scripts/benchmark.py runs both ways of computing on the tiny architecture and reports every figure; its FLOP
count and memory estimate agree with independent counts."""

import json
import os
import subprocess
import sys

import pytest
import torch
from open_clip.transformer import VisionTransformer
from timm.layers import Attention
from torch import nn

from model.segmenter import build_segmenter
from model.teachers import build_teachers
from scripts.costs import (
    REFERENCE_OVERRIDES,
    LiveTensorBytes,
    Step,
    fake_step,
    fakeify,
    measure_step_memory,
    step_batch,
    step_flops,
    step_memory,
    step_of,
    use_unfused_attention,
)
from tests.train_fixtures import REPO
from util.config import load_config
from util.dist import init_distributed
from util.flops import count_flops, model_flops_utilisation, peak_bf16_tflops

RANDOM = ["model.pretrained=null", "teachers.dino.weights=null", "teachers.clip.weights=null",
          "train.global_batch=null"]
TINY = RANDOM + ["model.backbone=tiny", "teachers.dino.arch=tiny", "teachers.clip.arch=tiny",
                 "teachers.clip.input_size=56", "distill.translator_hidden=128", "dataset.crop_size=112",
                 "train.batch_size=4"]
# Smaller still, for steps that run on real CPU tensors.
SMALL_STEP = TINY + ["dataset.crop_size=56", "teachers.clip.input_size=28", "distill.translator_hidden=16",
                     "train.batch_size=2"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_benchmark_measures_ours_and_the_reference_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "scripts/benchmark.py", "--config", "configs/loveda.yaml", "--what", "both",
                           "--both", "--tiny", "--iters", "1", "--warmup", "0", "--eval-size", "112", "--flops",
                           "--memory", "--onnxruntime", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    train, evaluation = report["train"], report["eval"]
    assert train["ours"]["reference"] is False and train["reference"]["reference"] is True
    assert set(train["ours"]["ms_breakdown"]) == {"ema_pseudo_labels", "teachers", "optimizer_and_ema",
                                                  "student_forward_backward"}
    assert train["ratios"]["train_speedup"] > 0
    for mode in ("original", "sliding_window"):
        assert evaluation["ours"][mode]["images_per_s"] > 0
        assert evaluation["ratios"][f"eval_{mode}_speedup"] > 0
        assert evaluation["onnxruntime"][mode]["images_per_s"] > 0
        assert evaluation["ratios"][f"eval_{mode}_onnxruntime_vs_torch"] > 0
        assert evaluation["ours"][mode]["minor_page_faults_per_image"] >= 0
    assert "train ours:" in done.stdout and "eval reference:" in done.stdout
    flops, memory = report["flops"], report["memory"]
    assert set(flops["parts"]) == {"student_forward", "student_backward", "ema_pseudo_labels", "teacher_dino",
                                   "teacher_clip"}
    assert sum(flops["parts"].values()) == flops["total"] > 0
    assert train["ours"]["tflop_per_step"] == flops["total"] / 1e12 and train["ours"]["mfu"] is None  # no GPU
    assert 0 < memory["ours"]["peak_gib"] < memory["reference"]["peak_gib"]
    assert train["ours"]["peak_memory_estimate_gb"] == memory["ours"]["peak_gib"]
    assert set(train["ours"]["adamw_ms"]) == {"foreach", "fused"}
    assert "flops per training step" in done.stdout and "memory per training step" in done.stdout


def test_a_gpu_name_finds_its_own_peak_before_its_familys_and_mfu_divides_by_it():
    # "H100 PCIe" contains "H100": the specific entry must win, or the PCIe card's MFU reads 24 % too low.
    assert peak_bf16_tflops("NVIDIA H100 PCIe") < peak_bf16_tflops("NVIDIA H100 80GB HBM3")
    assert peak_bf16_tflops("Tesla T4") is None
    assert model_flops_utilisation(4e12, 2.0, 4.0) == 0.5
    assert model_flops_utilisation(4e12, 2.0, None) is None


# ----------------------------------------------------------------------------------------------------------
# FLOPs: FlopCounterMode against an independent count of multiply-adds


def hand_count(model: nn.Module, run) -> int:
    """2 x the multiply-adds of every Linear, Conv2d, ConvTranspose2d and attention that `run()` calls, counted
    by forward hooks from the shapes they see (attention: QK^T and AV, 2 * N^2 * D multiply-adds each)."""
    total = 0

    def linear(m, inputs, output):
        nonlocal total
        total += 2 * inputs[0].numel() // m.in_features * m.in_features * m.out_features

    def conv(m, inputs, output):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels * m.out_channels // m.groups
        spatial = inputs[0].shape[-2:] if isinstance(m, nn.ConvTranspose2d) else output.shape[-2:]
        total += 2 * k * inputs[0].shape[0] * spatial[0] * spatial[1]

    def attention(m, inputs, output):  # timm: qkv and proj are Linear modules, counted on their own
        nonlocal total
        b, n, d = inputs[0].shape
        total += 2 * 2 * b * n * n * d

    def mha(m, inputs, output):  # open_clip's nn.MultiheadAttention: in/out projections are not module calls
        nonlocal total
        b, n, d = inputs[0].shape  # batch_first
        total += 2 * b * n * (3 * d * d + d * d) + 2 * 2 * b * n * n * d

    kinds = {nn.Linear: linear, nn.Conv2d: conv, nn.ConvTranspose2d: conv, Attention: attention,
             nn.MultiheadAttention: mha}
    hooks = []
    for module in model.modules():
        for kind, hook in kinds.items():
            if type(module) is kind or (kind is Attention and isinstance(module, Attention)):
                hooks.append(module.register_forward_hook(hook))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return total


def test_student_forward_flops_are_twice_its_multiply_adds():
    cfg = load_config("configs/loveda.yaml", TINY)
    torch.manual_seed(0)
    model = build_segmenter(cfg)
    img = torch.randn(2, 3, 112, 112)
    flops = count_flops(lambda: model.forward_train(img))
    assert flops == hand_count(model, lambda: model.forward_train(img)) > 0


@pytest.mark.parametrize("name", ["dino", "clip"])
def test_real_size_teacher_flops_are_twice_their_multiply_adds(name):
    """DINOv2-B at 518 px and CLIP ViT-L/14 at 224 px, on fake tensors (no memory, seconds)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    cfg = load_config("configs/loveda.yaml", RANDOM)
    with torch.device("meta"):
        teacher = build_teachers(cfg, "meta").models[name]
    mode = FakeTensorMode()
    fakeify(teacher, mode, torch.device("cpu"))
    with mode:
        img = torch.empty(2, 3, 518, 518)
        flops = count_flops(lambda: teacher(img))
        expected = hand_count(teacher, lambda: teacher(img))
    assert flops == expected
    if name == "clip":
        assert isinstance(teacher.visual, VisionTransformer)
        # ViT-L/14 at 224: 24 blocks of 257 tokens, width 1024; plus the patch embedding.
        per_image = 24 * (2 * 257 * 12 * 1024 ** 2 + 4 * 257 ** 2 * 1024) + 2 * 256 * 1024 * 3 * 14 * 14
        assert flops == 2 * per_image


def test_step_flops_add_up_and_the_backward_costs_about_twice_the_forward():
    flops = step_flops(load_config("configs/loveda.yaml", TINY))
    parts = flops["parts"]
    assert sum(parts.values()) == flops["total"]
    # Backward: gradients of inputs and weights (2x the forward), less the image's, plus fused attention's
    # recomputation of the scores (2.5x for attention).
    assert 1.8 < parts["student_backward"] / parts["student_forward"] < 2.5
    # The EMA labels the weak views (B images) through the same network (fusion included) as the student's
    # forward on labelled and strong views (2B images).
    assert 2 * parts["ema_pseudo_labels"] == parts["student_forward"]


# ----------------------------------------------------------------------------------------------------------
# Memory: the live-tensor tracker, fake against real, and a hand count


def test_live_tensor_bytes_counts_a_linear_layer_exactly():
    weight = torch.randn(256, 128, requires_grad=True)
    x = torch.randn(64, 128)
    tracker = LiveTensorBytes(rounding=1)
    tracker.add(weight, "weight")
    tracker.add(x, "input")
    with tracker:
        y = x @ weight.t()                    # 64 x 256 floats, kept
        y.square().sum().backward()           # square saves y; gradient 2y; weight.grad 256 x 128
        assert weight.grad is not None
    w, i, out = 256 * 128 * 4, 64 * 128 * 4, 64 * 256 * 4
    # At the peak: weight, input, y, y squared (or its gradient), 2y and weight.grad; never more than one
    # more activation-sized temporary.
    assert w + i + out + out + w <= tracker.peak <= w + i + 4 * out + w
    del y
    assert tracker.current == w + i + w  # weight, input and weight.grad remain


def real_trainer(overrides: list[str], gpu_like: bool) -> Step:
    cfg = load_config("configs/loveda.yaml", overrides + ["train.cpu_autocast=true"] * gpu_like)
    return step_of(cfg, init_distributed().device, 1_000)


@pytest.mark.parametrize("reference", [False, True])
def test_memory_estimate_on_fake_tensors_is_what_a_real_cpu_step_allocates(reference):
    """The same step on real CPU tensors, its storages followed by the same tracker: the fake step must not
    lose or add anything (autocast, fused or explicit attention, teachers, AdamW, EMA)."""
    overrides = SMALL_STEP + (REFERENCE_OVERRIDES if reference else [])
    t = real_trainer(overrides, gpu_like=True)
    if reference:
        use_unfused_attention(t.model, t.ema, *t.teachers.modules())
    real = measure_step_memory(t, step_batch(t)).peak / 2**30
    estimate = step_memory(load_config("configs/loveda.yaml", overrides), reference=reference)["peak_gib"]
    assert estimate == pytest.approx(real, rel=0.02)


def test_memory_estimate_covers_the_hand_count_and_the_reference_needs_more():
    cfg = load_config("configs/loveda.yaml", TINY)
    estimate = step_memory(cfg)
    with fake_step(cfg) as (t, _):
        def nbytes(tensors):
            return sum(p.numel() * p.element_size() for p in tensors)

        student = nbytes(t.model.parameters())
        frozen = nbytes(t.ema.parameters()) + sum(nbytes(m.parameters()) for m in t.teachers.modules())
    b, s, c = cfg.train.batch_size, cfg.dataset.crop_size, cfg.dataset.nclass
    # Parameters, gradients, AdamW's two moments; EMA and teachers; the batch; the student's fp32 logits
    # (2B x C x S x S), which the loss keeps for the backward pass: a lower bound.
    batch = 4 * b * s * s * (3 + 1 + 3 + 3 + 1 + 1) * 2
    lower = 4 * student + frozen + batch / 2 + 2 * b * c * s * s * 4
    peak = estimate["peak_gib"] * 2**30
    assert lower <= peak <= 20 * lower
    at_peak = estimate["at_peak_gib"]
    assert at_peak["student_parameters"] * 2**30 >= student and at_peak["adamw_states"] * 2**30 >= 2 * student
    fp32 = step_memory(load_config("configs/loveda.yaml", TINY + ["train.precision=fp32"]))
    reference = step_memory(load_config("configs/loveda.yaml", TINY + REFERENCE_OVERRIDES), reference=True)
    assert estimate["precision"] == "torch.bfloat16" and fp32["precision"] == "torch.float32"
    assert estimate["peak_gib"] < fp32["peak_gib"] < reference["peak_gib"]
