"""Frozen teachers: OpenAI CLIP layout and activation, tokens before ln_post, DINOv2 last block, no gradients."""

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from test_model_encoder import official_dinov2_state, reference_dinov2

from model.encoder import DinoEncoder, load_dinov2_weights
from model.teachers import CLIP_ARCHS, ClipTeacher, build_clip_tower, build_teachers, load_clip_weights
from util.config import Config
from util.errors import WeightsError

pytestmark = pytest.mark.usefixtures("one_thread")

ARCH = CLIP_ARCHS["tiny"]


def tiny_cfg(**sections) -> Config:
    """A tiny RS-MTDF config with random weights everywhere; `sections` update the defaults one level deep."""
    raw = {"model": {"backbone": "tiny", "pretrained": None},
           "teachers": {"dino": {"arch": "tiny", "weights": None},
                        "clip": {"arch": "tiny", "weights": None, "input_size": 28}},
           "distill": {"translator_hidden": 32}}
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return Config.model_validate(raw)


def openai_clip_state(input_size: int = 28, width: int = ARCH.width, seed: int = 0) -> dict:
    """Random tensors under OpenAI's CLIP key names: the vision tower plus a few text-tower keys."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, mean=0.0, std=0.1):
        return mean + std * torch.randn(*shape, generator=g)

    w, v = width, "visual."
    state = {v + "class_embedding": rnd(w), v + "positional_embedding": rnd((input_size // 14) ** 2 + 1, w),
             v + "proj": rnd(w, ARCH.output_dim), v + "conv1.weight": rnd(w, 3, 14, 14, std=0.02),
             v + "ln_pre.weight": rnd(w, mean=1.0), v + "ln_pre.bias": rnd(w),
             v + "ln_post.weight": rnd(w, mean=1.0), v + "ln_post.bias": rnd(w),
             "positional_embedding": rnd(77, 32), "token_embedding.weight": rnd(100, 32), "logit_scale": rnd(())}
    for i in range(ARCH.layers):
        p = f"{v}transformer.resblocks.{i}."
        state.update({
            p + "attn.in_proj_weight": rnd(3 * w, w, std=0.3), p + "attn.in_proj_bias": rnd(3 * w),
            p + "attn.out_proj.weight": rnd(w, w), p + "attn.out_proj.bias": rnd(w),
            p + "ln_1.weight": rnd(w, mean=1.0), p + "ln_1.bias": rnd(w),
            p + "mlp.c_fc.weight": rnd(4 * w, w, std=0.3), p + "mlp.c_fc.bias": rnd(4 * w, std=1.0),
            p + "mlp.c_proj.weight": rnd(w, 4 * w), p + "mlp.c_proj.bias": rnd(w),
            p + "ln_2.weight": rnd(w, mean=1.0), p + "ln_2.bias": rnd(w)})
    return state


def reference_clip_tokens(state: dict, img: torch.Tensor, size: int, act=lambda x: x * torch.sigmoid(1.702 * x)):
    """OpenAI's VisionTransformer written out with its key names, stopped before ln_post."""
    s = {k.removeprefix("visual."): t for k, t in state.items() if k.startswith("visual.")}
    w, heads = s["class_embedding"].shape[0], ARCH.heads
    x = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=True)
    x = F.conv2d(x, s["conv1.weight"], stride=14).flatten(2).transpose(1, 2)
    x = torch.cat((s["class_embedding"].expand(len(x), 1, w), x), dim=1) + s["positional_embedding"]

    def ln(t, name):
        return F.layer_norm(t, (w,), s[name + ".weight"], s[name + ".bias"], eps=1e-5)

    x = ln(x, "ln_pre")
    for i in range(ARCH.layers):
        p = f"transformer.resblocks.{i}."
        q, k, v = (ln(x, p + "ln_1") @ s[p + "attn.in_proj_weight"].T + s[p + "attn.in_proj_bias"]).chunk(3, -1)
        q, k, v = (t.reshape(len(x), -1, heads, w // heads).transpose(1, 2) for t in (q, k, v))
        attn = ((q @ k.transpose(-2, -1)) / math.sqrt(w // heads)).softmax(-1) @ v
        merged = attn.transpose(1, 2).reshape(len(x), -1, w)
        x = x + merged @ s[p + "attn.out_proj.weight"].T + s[p + "attn.out_proj.bias"]
        y = act(ln(x, p + "ln_2") @ s[p + "mlp.c_fc.weight"].T + s[p + "mlp.c_fc.bias"])
        x = x + y @ s[p + "mlp.c_proj.weight"].T + s[p + "mlp.c_proj.bias"]
    return x[:, 1:]


def clip_teacher(tmp_path, state: dict, size: int = 28) -> ClipTeacher:
    path = tmp_path / "clip.pt"
    torch.save(state, path)
    teacher = ClipTeacher("tiny", size, renormalize=False).eval()
    load_clip_weights(teacher.visual, path, "teachers.clip.weights", "tiny")
    return teacher


def test_openai_clip_state_dict_round_trips_fp16(tmp_path):
    state = {k: t.half() for k, t in openai_clip_state().items()}
    teacher = clip_teacher(tmp_path, state)
    ours = teacher.visual.state_dict()
    visual = {k.removeprefix("visual."): t for k, t in state.items() if k.startswith("visual.")}
    assert set(ours) == set(visual)
    for key, value in ours.items():
        assert value.dtype == torch.float32 and torch.equal(value, visual[key].float()), key


def test_torchscript_archive_loads(tmp_path):
    class Archive(nn.Module):  # OpenAI ships a TorchScript module whose state dict has the visual.* keys
        def __init__(self) -> None:
            super().__init__()
            self.visual = build_clip_tower("tiny", 28)

        def forward(self, x):
            return x

    archive = Archive()
    archive.load_state_dict(openai_clip_state(), strict=False)
    path = tmp_path / "ViT-tiny.pt"
    with warnings.catch_warnings():  # torch.jit's deprecation notices
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(archive, torch.zeros(1)), str(path))
    tower = build_clip_tower("tiny", 28)
    load_clip_weights(tower, path, "teachers.clip.weights", "tiny")
    for key, value in tower.state_dict().items():
        assert torch.equal(value, archive.visual.state_dict()[key]), key


def test_a_clip_archive_is_not_dinov2(tmp_path):
    path = tmp_path / "ViT-L-14.pt"
    with warnings.catch_warnings():  # torch.jit's deprecation notices
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), str(path))
    with pytest.raises(WeightsError, match=r"teachers.dino.weights: .*ViT-L-14.pt is a TorchScript archive"):
        load_dinov2_weights(DinoEncoder("tiny"), path, "teachers.dino.weights")


def test_clip_teacher_gives_quickgelu_tokens_before_ln_post(tmp_path):
    state = openai_clip_state()
    teacher = clip_teacher(tmp_path, state)
    assert all(isinstance(b.mlp.gelu, QuickGELU) for b in teacher.visual.transformer.resblocks)
    teacher.double()  # float64 on both sides, so the comparison is about the definition, not rounding
    state = {k: t.double() for k, t in state.items()}
    img = torch.randn(2, 3, 56, 84, dtype=torch.float64)
    with torch.no_grad():
        tokens = teacher(img)
        teacher.visual.ln_post.weight.mul_(3.0)  # tokens are taken before ln_post: no effect
        again = teacher(img)
    assert tokens.shape == (2, 4, ARCH.width)
    torch.testing.assert_close(tokens, reference_clip_tokens(state, img, 28), atol=1e-9, rtol=1e-9)
    assert torch.equal(tokens, again)
    with_gelu = reference_clip_tokens(state, img, 28, act=F.gelu)
    assert (tokens - with_gelu).abs().max() > 1e-3


def test_renormalize_maps_imagenet_to_clip_statistics(tmp_path):
    teacher = clip_teacher(tmp_path, openai_clip_state())
    renorm = ClipTeacher("tiny", 28, renormalize=True).eval()
    renorm.load_state_dict(teacher.state_dict())
    teacher.double(), renorm.double()
    pixels = torch.rand(1, 3, 28, 28, dtype=torch.float64)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    imagenet = (pixels - mean) / std
    clip = (pixels - torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)) / \
        torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(renorm(imagenet), teacher(clip), atol=1e-5, rtol=1e-5)


def test_a_dinov2_file_is_not_clip(tmp_path):
    path = tmp_path / "dinov2_base.pth"
    torch.save(official_dinov2_state(), path)
    with pytest.raises(WeightsError, match=rf"teachers.clip.weights: {path} is not an OpenAI CLIP file"):
        load_clip_weights(build_clip_tower("tiny", 28), path, "teachers.clip.weights", "tiny")


def test_clip_of_another_width_lists_keys(tmp_path):
    path = tmp_path / "clip_b.pt"
    torch.save(openai_clip_state(width=48), path)
    with pytest.raises(WeightsError, match=r"clip_b\.pt.*wrong shapes: class_embedding \(48,\) vs \(96,\)"):
        load_clip_weights(build_clip_tower("tiny", 28), path, "teachers.clip.weights", "tiny")


def test_missing_clip_file_names_config_key(tmp_path):
    cfg = tiny_cfg(teachers={"clip": {"arch": "tiny", "input_size": 28, "weights": str(tmp_path / "ViT-L-14.pt")}})
    with pytest.raises(WeightsError, match=r"teachers\.clip\.weights: .*ViT-L-14\.pt not found"):
        build_teachers(cfg, "cpu")


def test_no_teachers_without_distillation():
    assert build_teachers(tiny_cfg(train={"method": "fixmatch"}), "cpu") is None


def test_dino_teacher_gives_last_block_normed_tokens(tmp_path):
    path = tmp_path / "dinov2_tiny.pth"
    state = official_dinov2_state(seed=3)
    torch.save(state, path)
    cfg = tiny_cfg(teachers={"dino": {"arch": "tiny", "weights": str(path)}, "clip": {"enabled": False}},
                   distill={"fusion_weights": {"student": 0.9, "dino": 0.1, "clip": 0.0}})
    teachers = build_teachers(cfg, "cpu")
    img = torch.randn(1, 3, 518, 518)
    out = teachers(img)
    assert set(out) == {"dino"}
    torch.testing.assert_close(out["dino"], reference_dinov2(state, img, 2, [3])[0], atol=1e-5, rtol=1e-5)


def test_teachers_are_frozen_and_return_ordinary_tensors():
    teachers = build_teachers(tiny_cfg(), "cpu")
    out = teachers(torch.randn(2, 3, 42, 56))
    assert out["dino"].shape == (2, 12, 64) and out["clip"].shape == (2, 4, ARCH.width)
    assert not any(t.is_inference() or t.requires_grad for t in out.values())
    for module in teachers.modules():
        assert not module.training and not any(p.requires_grad for p in module.parameters())


def test_teacher_precision_defaults_are_the_references_dino_fp32_clip_fp16():
    cfg = Config()
    assert (cfg.teachers.dino.precision, cfg.teachers.clip.precision) == ("fp32", "fp16")


def test_an_fp32_teacher_does_not_inherit_the_training_steps_autocast():
    """The step runs under bf16 autocast on GPUs; a teacher set to fp32 must compute in fp32 inside it."""
    teachers = build_teachers(tiny_cfg(), "cpu")
    img = torch.randn(2, 3, 42, 56)
    plain = teachers(img)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = teachers(img)
    for name in plain:
        torch.testing.assert_close(inside[name], plain[name], atol=0, rtol=0)
