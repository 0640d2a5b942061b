"""The student segmenter: shapes, the fused 4th DPT input, channel masks, parameter groups, gradients."""

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from test_model_encoder import official_dinov2_state
from test_model_teachers import tiny_cfg

from methods.rs_mtdf import distillation_loss
from model.fusion import tokens_to_map
from model.segmenter import Segmenter, build_segmenter
from model.teachers import build_teachers
from util.errors import WeightsError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_segmenter(tiny_cfg()).eval()


def test_shapes_for_non_square_input(model):
    out = model.forward_train(torch.randn(2, 3, 56, 84))
    assert out.logits.shape == (2, 7, 56, 84)
    assert {k: tuple(v.shape) for k, v in out.translated.items()} == {"dino": (2, 24, 64), "clip": (2, 4, 96)}


def test_shapes_at_518_with_a_224_clip_pass():
    cfg = tiny_cfg(teachers={"clip": {"arch": "tiny", "weights": None, "input_size": 224}})
    out = build_segmenter(cfg).forward_train(torch.randn(1, 3, 518, 518))
    assert out.logits.shape == (1, 7, 518, 518)
    assert out.translated["dino"].shape == (1, 1369, 64) and out.translated["clip"].shape == (1, 256, 96)


def test_forward_is_the_training_forward_without_translations(model):
    img = torch.randn(1, 3, 42, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(img), model.forward_train(img).logits)


def manual_logits(model, img, weights, feature_mask=None):
    """docs/method.md §1 literally: f4' = w_s f + w_d P_d(T_d(f)) + w_c P_c(up(T_c(f224))), then the DPT head."""
    grid = (img.shape[-2] // 14, img.shape[-1] // 14)
    feats = model.encoder.forward_features(img)
    f = feats[-1]
    fused = weights["student"] * f
    if "dino" in weights:
        fused = fused + weights["dino"] * model.projections["dino"](model.translators["dino"](f))
    if "clip" in weights:
        small = F.interpolate(img, size=(model.clip_size,) * 2, mode="bilinear", align_corners=True)
        t_c = model.translators["clip"](model.encoder.forward_features(small)[-1])
        n = model.clip_size // 14
        up = F.interpolate(tokens_to_map(t_c, (n, n)), size=grid, mode="bilinear", align_corners=True)
        fused = fused + weights["clip"] * model.projections["clip"](up.flatten(2).transpose(1, 2))
    feats[-1] = fused
    if feature_mask is not None:
        feats = [x * feature_mask[:, None] for x in feats]
    logits = model.head([tokens_to_map(x, grid) for x in feats])
    return F.interpolate(logits, size=img.shape[-2:], mode="bilinear", align_corners=True)


@pytest.mark.parametrize("size", [(56, 70), (28, 28)])  # 28: already at CLIP's input size
def test_fusion_follows_spec_formula(model, size):
    img = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = manual_logits(model, img, {"student": 0.8, "dino": 0.1, "clip": 0.1})
        torch.testing.assert_close(model(img), expected, atol=1e-5, rtol=1e-5)


def test_fusion_weights_come_from_config():
    torch.manual_seed(1)
    m = build_segmenter(tiny_cfg(distill={"fusion_weights": {"student": 0.5, "dino": 0.2, "clip": 0.3}})).eval()
    img = torch.randn(1, 3, 42, 42)
    with torch.no_grad():
        torch.testing.assert_close(m(img), manual_logits(m, img, {"student": 0.5, "dino": 0.2, "clip": 0.3}),
                                   atol=1e-5, rtol=1e-5)


def test_without_fusion_the_fourth_map_is_unchanged():
    m = build_segmenter(tiny_cfg(distill={"fusion_weights": {"student": 1.0, "dino": 0.0, "clip": 0.0}})).eval()
    assert len(m.projections) == 0 and set(m.translators) == {"dino", "clip"} and m.fusion_weights is None
    img = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        torch.testing.assert_close(m(img), manual_logits(m, img, {"student": 1.0}))


def test_zero_teacher_weights_build_the_model_that_no_fusion_built():
    """{student: 1, dino: 0, clip: 0} is what `distill.fusion: false` was: the same keys, the same output."""
    none = {"student": 1.0, "dino": 0.0, "clip": 0.0}
    torch.manual_seed(2)
    m = build_segmenter(tiny_cfg(distill={"fusion_weights": none})).eval()
    torch.manual_seed(2)
    unfused = Segmenter("tiny", 7, {"dino": 64, "clip": 96}, 32, None, 28).eval()
    assert list(m.state_dict()) == list(unfused.state_dict())
    unfused.load_state_dict(m.state_dict())
    img = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        assert torch.equal(m(img), unfused(img))
    # A student weight without fusion would scale the features in the name of fusing: the config (the one place
    # that decides what fuses) refuses it.
    with pytest.raises(ValidationError, match="set it to 1"):
        tiny_cfg(distill={"fusion_weights": {"student": 0.8, "dino": 0.0, "clip": 0.0}})


def test_single_teacher_has_only_its_branch():
    cfg = tiny_cfg(teachers={"clip": {"enabled": False}},
                   distill={"fusion_weights": {"student": 0.8, "dino": 0.2, "clip": 0.0}})
    m = build_segmenter(cfg)
    assert set(m.translators) == set(m.projections) == {"dino"}
    assert set(m.forward_train(torch.randn(1, 3, 28, 28)).translated) == {"dino"}


def test_plain_fixmatch_has_no_translators():
    m = build_segmenter(tiny_cfg(train={"method": "fixmatch"}))
    assert len(m.translators) == len(m.projections) == 0
    assert m.forward_train(torch.randn(1, 3, 28, 28)).translated == {}


def test_feature_mask_multiplies_all_four_maps(model):
    img = torch.randn(2, 3, 28, 42)
    mask = (torch.rand(2, 64) > 0.5).float() * 2
    with torch.no_grad():
        expected = manual_logits(model, img, {"student": 0.8, "dino": 0.1, "clip": 0.1}, feature_mask=mask)
        torch.testing.assert_close(model(img, mask), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(img, torch.ones(2, 64)), model(img))


def test_gradients_reach_student_translators_projections_never_teachers():
    cfg = tiny_cfg()
    student, teachers = build_segmenter(cfg), build_teachers(cfg, "cpu")
    img = torch.randn(2, 3, 42, 56)
    out = student.forward_train(img)
    loss_dis, per_teacher = distillation_loss(out.translated, teachers(img), cfg.distill.weights)
    (F.cross_entropy(out.logits, torch.randint(0, 7, (2, 42, 56))) + loss_dis).backward()
    assert set(per_teacher) == {"dino", "clip"}
    no_grad = [n for n, p in student.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    for teacher in teachers.modules():
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_distillation_loss_is_weighted_plain_mse():
    a, b = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    c, d = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    total, per = distillation_loss({"dino": a, "clip": c}, {"dino": b, "clip": d}, {"dino": 0.5, "clip": 0.25})
    torch.testing.assert_close(per["dino"], ((a - b) ** 2).mean())
    torch.testing.assert_close(total, 0.5 * ((a - b) ** 2).mean() + 0.25 * ((c - d) ** 2).mean())
    with pytest.raises(ValueError, match="differ in shape"):
        distillation_loss({"dino": a}, {"dino": c}, {"dino": 1.0})


def test_parameter_groups_split_encoder_and_rest():
    m = build_segmenter(tiny_cfg())
    enc, rest = list(m.encoder_parameters()), list(m.head_parameters())
    assert len(enc) + len(rest) == len(list(m.parameters()))
    assert {id(p) for p in enc} == {id(p) for p in m.encoder.parameters()}
    locked = build_segmenter(tiny_cfg(model={"backbone": "tiny", "pretrained": None, "lock_backbone": True}))
    assert list(locked.encoder_parameters()) == [] and len(list(locked.head_parameters())) == len(rest)


def test_the_encoder_learns_at_lr_and_everything_else_at_lr_times_lr_multi():
    """Where the groups are made: AdamW's first step already uses them, and the schedule scales each group's own."""
    from train import build_optimizer

    cfg = tiny_cfg(train={"method": "rs_mtdf", "lr": 5e-6, "lr_multi": 40.0})
    model = build_segmenter(cfg)
    optimizer = build_optimizer(model, cfg)
    by_param = {id(p): (group["lr"], group["initial_lr"]) for group in optimizer.param_groups for p in group["params"]}
    assert {by_param[id(p)] for p in model.encoder_parameters()} == {(5e-6, 5e-6)}
    assert all(by_param[id(p)] == pytest.approx((2e-4, 2e-4)) for p in model.head_parameters())
    assert len(by_param) == len([p for p in model.parameters() if p.requires_grad])


def test_grad_checkpointing_switch():
    cfg = tiny_cfg(model={"backbone": "tiny", "pretrained": None, "grad_checkpointing": True})
    assert build_segmenter(cfg).encoder.grad_checkpointing


def test_pretrained_encoder_weights_are_loaded(tmp_path):
    path = tmp_path / "dinov2_tiny.pth"
    state = official_dinov2_state()
    torch.save(state, path)
    m = build_segmenter(tiny_cfg(model={"backbone": "tiny", "pretrained": str(path)}))
    assert torch.equal(m.encoder.pos_embed, state["pos_embed"])


def test_missing_pretrained_file_names_config_key(tmp_path):
    cfg = tiny_cfg(model={"backbone": "tiny", "pretrained": str(tmp_path / "dinov2_small.pth")})
    with pytest.raises(WeightsError, match=r"^model\.pretrained: .*dinov2_small\.pth not found"):
        build_segmenter(cfg)
