"""The GPU's code paths, exercised on the CPU where PyTorch allows it, and on the GPU when there is one.

Each test runs on the CPU with the code paths a GPU would take (train.cpu_autocast: bf16 or fp16 autocast,
teachers in teachers.*.precision, channels-last convolutions, fused AdamW) and again on CUDA when a GPU is
present (ids ending in `cuda`; scripts/gpu_smoke.sh runs them with `-k cuda`). What only a GPU can show
(flash / memory-efficient / cuDNN attention kernels, inductor's GPU code, NCCL, the real peak memory) is
in the CUDA variants and the smoke script. Tolerances: fp32 paths agree to float rounding (1e-5, 1e-4 on
a GPU whose kernels sum in another order); bf16 keeps 8 mantissa bits, fp16 11, so losses agree to 2 %
and AdamW's first update (about lr * sign(gradient), whatever the gradient's size) goes the same way for
95 % of the weights.
"""

import contextlib
import dataclasses
import json
import math
import subprocess

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from model.encoder import DinoEncoder
from scripts.costs import Step, adamw_like, step_batch, step_memory
from tests.train_fixtures import REPO, step_trainer
from train import build_optimizer
from util.precision import autocast_dtype

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no GPU: the CUDA variant runs in scripts/gpu_smoke.sh")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


@pytest.fixture(autouse=True)
def exact_float32():
    # One thread: the same reductions every call. No TF32 on a GPU: fp32 there must mean fp32.
    threads, tf32 = torch.get_num_threads(), (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.set_num_threads(1)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def make_trainer(device: str, *overrides: str, gpu_like: bool = False) -> Step:
    """The demo's tiny RS-MTDF (tests/train_fixtures.py TINY_STEP) on `device`, taking the GPU's code paths on a
    CPU too if `gpu_like` (train.cpu_autocast)."""
    return step_trainer(device, *overrides, *(["train.cpu_autocast=true"] if gpu_like else []))


def run_step(t: Step, batch: dict) -> dict[str, float]:
    losses = {k: float(v) for k, v in t.run(dict(batch)).items()}
    assert all(math.isfinite(v) for v in losses.values()), losses
    return losses


def save(t: Step, path) -> None:
    """latest.pth of the step's state, as the trainer writes it."""
    from util.run import Progress, save_checkpoint

    save_checkpoint(path, t.state, 0, 1, Progress("student"), 0.0, t.cfg, {})


def resume(t: Step, path) -> None:
    """The trainer's resume (util.run.resume_training) of `path` into the step's state, other settings allowed."""
    from util.run import Progress, resume_training

    resume_training(path, t.state, t.cfg, 1, Progress("student"), {}, allow_changed=True)


def state_on_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


def assert_close_states(a: dict, b: dict, atol: float) -> None:
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


# ----------------------------------------------------------------------------------------------------------
# Precision


def test_autocast_on_the_cpu_is_opt_in():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [autocast_dtype(p, cpu) for p in ("auto", "bf16", "fp16", "fp32")] == [None] * 4
    assert [autocast_dtype(p, cpu, allow_cpu=True) for p in ("auto", "bf16", "fp16", "fp32")] == \
        [torch.bfloat16, torch.bfloat16, torch.float16, None]
    assert autocast_dtype("fp16", cuda) == torch.float16 and autocast_dtype("fp32", cuda, allow_cpu=True) is None


@pytest.mark.parametrize("device", DEVICES)
def test_gpu_precision_training_step_runs_in_bf16_and_fp16_and_matches_fp32(device):
    fp32 = make_trainer("cpu", "train.precision=fp32", "teachers.clip.precision=fp32")
    ours = make_trainer(device, "train.precision=auto", gpu_like=True)
    assert ours.amp_dtype == torch.bfloat16
    assert ours.teachers.autocast_dtype == {"dino": None, "clip": torch.float16}
    conv = ours.model.head.projects[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and conv.dim() == 4
    seen: dict[str, torch.dtype] = {}

    def record(name):
        def hook(module, inputs, output):
            seen.setdefault(name, output.dtype)
        return hook

    hooks = [ours.model.encoder.blocks[0].attn.qkv.register_forward_hook(record("student linear")),
             ours.model.head.output[0].register_forward_hook(record("student conv")),
             ours.teachers.models["clip"].visual.transformer.resblocks[0].mlp.c_fc.register_forward_hook(record("clip")),
             ours.teachers.models["dino"].encoder.blocks[0].mlp.fc1.register_forward_hook(record("dino"))]
    batch = step_batch(fp32)
    before = state_on_cpu(fp32.model)
    want = run_step(fp32, batch)
    got = run_step(ours, {k: v.to(device) for k, v in batch.items()})
    for h in hooks:
        h.remove()
    assert seen == {"student linear": torch.bfloat16, "student conv": torch.bfloat16, "clip": torch.float16,
                    "dino": torch.float32}
    assert got.keys() == want.keys() and min(got["loss_x"], got["loss_u"], got["loss_dis"]) > 0
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=2e-2, abs=1e-4), k
    # AdamW's first update is about lr * sign(gradient): the gradients must agree in sign almost everywhere.
    after, after_fp32 = state_on_cpu(ours.model), state_on_cpu(fp32.model)
    same = sum(int(((after[k] - v).sign() == (after_fp32[k] - v).sign()).sum()) for k, v in before.items())
    assert same / sum(v.numel() for v in before.values()) > 0.95
    assert ours.model.head.projects[0].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_training_step_equals_contiguous(device):
    plain = make_trainer(device, "train.precision=fp32", "train.channels_last=false", gpu_like=True)
    last = make_trainer(device, "train.precision=fp32", "train.channels_last=true", gpu_like=True)
    conv = "head.output.0.weight"  # a 3x3 convolution (a 1x1 one is contiguous either way)
    assert last.model.state_dict()[conv].is_contiguous(memory_format=torch.channels_last)
    assert not plain.model.state_dict()[conv].is_contiguous(memory_format=torch.channels_last)
    batch = step_batch(plain)
    for _ in range(2):
        want, got = run_step(plain, batch), run_step(last, batch)
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k
    atol = 1e-5 if device == "cpu" else 1e-4
    assert_close_states(state_on_cpu(last.model), state_on_cpu(plain.model), atol=atol)
    assert_close_states(state_on_cpu(last.ema), state_on_cpu(plain.ema), atol=atol)
    # AdamW and the EMA's lerp keep the memory format: the next forward still gets channels-last weights.
    for module in (last.model, last.ema):
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in module.parameters() if p.dim() == 4)


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_autocast_with_grad_scaler_skips_a_step_with_inf_gradients(device):
    fp32 = make_trainer("cpu", "train.precision=fp32")
    fp16 = make_trainer(device, "train.precision=fp16", gpu_like=True)
    assert fp16.amp_dtype == torch.float16 and fp16.scaler.is_enabled()
    batch = step_batch(fp32)
    on_device = {k: v.to(device) for k, v in batch.items()}
    want, got = run_step(fp32, batch), run_step(fp16, on_device)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=2e-2, abs=1e-4), k
    scale = fp16.scaler.get_scale()
    assert scale == 2.0 ** 16  # unchanged: no overflow, and growth waits 2000 steps

    # An overflowing gradient: the scaler skips AdamW (weights and its step count unchanged) and halves.
    weight = fp16.model.head.output[2].weight
    hook = weight.register_hook(lambda g: g * float("inf"))
    before = state_on_cpu(fp16.model)
    steps = int(fp16.optimizer.state[weight]["step"])
    run_step(fp16, on_device)
    hook.remove()
    assert fp16.scaler.get_scale() == scale / 2
    assert int(fp16.optimizer.state[weight]["step"]) == steps
    assert_close_states(state_on_cpu(fp16.model), before, atol=0)
    run_step(fp16, on_device)
    assert int(fp16.optimizer.state[weight]["step"]) == steps + 1


# ----------------------------------------------------------------------------------------------------------
# Fused AdamW


def fused_adamw(optimizer: torch.optim.Optimizer) -> torch.optim.AdamW:
    return adamw_like(optimizer, fused=True)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_adamw_gives_the_same_update_as_the_multi_tensor_one(device):
    t = make_trainer(device, "train.precision=fp32", "train.method=fixmatch")
    model = t.model
    twin = make_trainer(device, "train.precision=fp32", "train.method=fixmatch").model
    ours = adamw_like(build_optimizer(model, t.cfg), fused=False)
    fused = adamw_like(build_optimizer(twin, t.cfg), fused=True)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(model.parameters(), twin.parameters()):
            p.grad = torch.randn(p.shape, generator=g).to(device)
            q.grad = p.grad.clone()
        ours.step()
        fused.step()
    assert_close_states(state_on_cpu(twin), state_on_cpu(model), atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_a_fused_optimizer_resumes_a_plain_checkpoint_and_stays_fused(device, tmp_path):
    """load_state_dict restores every group setting, `fused` too: resuming must keep the new run's choice, both
    ways, and go on with the same update."""
    plain = make_trainer("cpu", "train.precision=fp32", "train.method=fixmatch")
    fused = make_trainer(device, "train.precision=fp32", "train.method=fixmatch", gpu_like=True)
    assert not plain.optimizer.param_groups[0]["fused"] and fused.optimizer.param_groups[0]["fused"] is True
    batch = step_batch(plain)
    run_step(plain, batch)
    save(plain, tmp_path / "plain.pth")
    resume(fused, tmp_path / "plain.pth")  # train.cpu_autocast differs, by design
    assert fused.optimizer.param_groups[0]["fused"] is True and fused.iteration == plain.iteration == 1
    step = next(iter(fused.optimizer.state.values()))["step"]
    assert step.device.type == device and step.dtype == torch.float32
    run_step(plain, batch)
    run_step(fused, {k: v.to(device) for k, v in batch.items()})
    assert_close_states(state_on_cpu(fused.model), state_on_cpu(plain.model), atol=1e-5)
    # The other way: a plain run resuming a fused checkpoint stays plain.
    save(fused, tmp_path / "fused.pth")
    again = make_trainer("cpu", "train.precision=fp32", "train.method=fixmatch")
    resume(again, tmp_path / "fused.pth")
    assert not again.optimizer.param_groups[0]["fused"]


# ----------------------------------------------------------------------------------------------------------
# Attention kernels


BACKENDS = {"cpu": [SDPBackend.MATH, SDPBackend.FLASH_ATTENTION],
            "cuda": [SDPBackend.MATH, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                     SDPBackend.CUDNN_ATTENTION]}


@pytest.mark.parametrize("device", DEVICES)
def test_every_sdpa_kernel_gives_the_explicit_attention(device):
    torch.manual_seed(0)
    encoder = DinoEncoder("tiny").to(device)
    img = torch.randn(2, 3, 70, 56, device=device)

    def tokens_and_grad(fused: bool, backend: SDPBackend | None, dtype: torch.dtype | None):
        encoder.set_fused_attn(fused)
        x = img.clone().requires_grad_(True)
        kernel = sdpa_kernel([backend]) if backend else contextlib.nullcontext()
        autocast = torch.autocast(device, dtype=dtype) if dtype else contextlib.nullcontext()
        with kernel, autocast:
            out = encoder(x)[-1].float()
        out.square().mean().backward()
        return out.detach(), x.grad

    # The reference's explicit softmax(QK^T)V, in fp32 and under bf16 autocast: each kernel against it.
    explicit = {dtype: tokens_and_grad(False, None, dtype) for dtype in (None, torch.bfloat16)}
    ran = []
    for backend in BACKENDS[device]:
        for dtype in (None, torch.bfloat16):
            want, want_grad = explicit[dtype]
            try:
                got, grad = tokens_and_grad(True, backend, dtype)
            except RuntimeError as e:  # this kernel does not take these inputs (dtype, head size, GPU)
                assert "kernel" in str(e).lower() or "not supported" in str(e).lower(), e
                continue
            ran.append((backend.name, str(dtype)))
            atol = (1e-5 if device == "cpu" else 1e-4) if dtype is None else 3e-2
            torch.testing.assert_close(got, want, atol=atol, rtol=0,
                                       msg=lambda m, backend=backend, dtype=dtype: f"{backend} {dtype}: {m}")
            relative = float((grad - want_grad).norm() / want_grad.norm())
            assert relative < (1e-4 if dtype is None else 3e-2), (backend, dtype, relative)
    assert ("MATH", "None") in ran and len(ran) >= 3, ran


# ----------------------------------------------------------------------------------------------------------
# torch.compile


def test_training_forward_is_a_single_graph_for_torch_compile():
    torch._dynamo.reset()
    t = make_trainer("cpu")
    explained = torch._dynamo.explain(t.state.forward)(torch.randn(4, 3, 56, 56))
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1
    torch._dynamo.reset()


# The CPU variant takes about 5 s on 2 cores: slow.
@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.slow),
                                    pytest.param("cuda", marks=needs_cuda)])
def test_compiled_training_step_matches_eager(device):
    # On the CPU without code generation (aot_eager: the graph capture and autograd of inductor, run by
    # PyTorch's kernels): inductor's C++ code for this forward and backward takes minutes to compile on a
    # 2-core CPU (measured 3 min; 27 s for one ViT block). On a GPU, inductor with Triton, as train.compile.
    torch._dynamo.reset()
    eager = make_trainer(device, "train.precision=fp32", "train.method=fixmatch", "train.channels_last=false")
    compiled = make_trainer(device, "train.precision=fp32", "train.method=fixmatch", "train.channels_last=false")
    compiled = dataclasses.replace(compiled, state=dataclasses.replace(compiled.state, forward=torch.compile(
        compiled.state.forward, backend="aot_eager" if device == "cpu" else "inductor")))
    batch = {k: v.to(device) for k, v in step_batch(eager).items()}
    for _ in range(2):
        want, got = run_step(eager, batch), run_step(compiled, batch)
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), k
    assert_close_states(state_on_cpu(compiled.model), state_on_cpu(eager.model), atol=1e-4)
    torch._dynamo.reset()


# ----------------------------------------------------------------------------------------------------------
# What only a GPU shows


@needs_cuda
def test_cuda_peak_memory_is_the_estimate():
    """The fake-tensor estimate (scripts.costs.step_memory) against torch.cuda.max_memory_allocated of a real step."""
    overrides = ["model.backbone=small", "teachers.dino.arch=tiny", "teachers.clip.arch=tiny",
                 "dataset.crop_size=224", "train.batch_size=4", "train.precision=auto"]
    t = make_trainer("cuda", *overrides)
    batch = step_batch(t)
    run_step(t, batch)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    run_step(t, batch)
    measured = torch.cuda.max_memory_allocated() / 2**30
    estimate = step_memory(t.cfg)["peak_gib"]
    assert 0.8 < estimate / measured < 1.25, (estimate, measured)


# ----------------------------------------------------------------------------------------------------------
# The smoke script itself


@pytest.mark.slow
def test_gpu_smoke_script_runs_every_stage_on_the_cpu(tmp_path):
    out = tmp_path / "smoke"
    done = subprocess.run(["sh", "scripts/gpu_smoke.sh", "--cpu", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    report = json.loads((out / "gpu_smoke.json").read_text())
    stages = {s["stage"]: s for s in report["stages"]}
    assert report["ok"] and report["mode"] == "cpu"
    assert list(stages) == ["environment", "weights", "data", "gpu_tests", "train_supervised", "train_fixmatch",
                            "train_unimatch_v2", "rs_mtdf_killed", "rs_mtdf_resumed", "eval_original",
                            "eval_sliding_window", "benchmark", "nccl"]
    assert {s["status"] for s in stages.values()} == {"ok", "skipped"}
    assert stages["gpu_tests"]["status"] == stages["nccl"]["status"] == "skipped"
    assert stages["rs_mtdf_killed"]["exit"] == -9 and stages["rs_mtdf_killed"]["killed_after_iteration"] == 1
    assert stages["rs_mtdf_resumed"]["resumed_at"] == 1 and stages["rs_mtdf_resumed"]["iterations"] == 2
    assert stages["eval_sliding_window"]["window"] == 28 and stages["eval_original"]["images"] == 4
    bench = stages["benchmark"]
    assert bench["train_speedup"] > 0 and bench["tflop_per_step"] > 0
    assert bench["peak_memory_estimate_gb"]["ours"] < bench["peak_memory_estimate_gb"]["reference"]
    assert "all stages passed" in (out / "gpu_smoke.md").read_text()
    assert (out / "logs" / "train_rs_mtdf.train.log").is_file()
    assert "[gpu_smoke] all stages passed" in done.stdout
