"""The training step's arithmetic (docs/method.md §3), checked against hand computations on tiny tensors."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from methods.common import StepContext, mix, unsupervised_loss, weighted_total
from methods.fixmatch import fixmatch_step
from methods.rs_mtdf import rs_mtdf_step
from methods.supervised import supervised_step
from methods.unimatch_v2 import complementary_channel_masks, unimatch_v2_step
from util.config import Config, LossWeights
from util.ema import ema_update, make_ema
from util.schedule import ema_ratio, poly_lr, set_poly_lr

NCLASS, B, S = 3, 2, 4


def test_poly_lr_follows_the_formula_and_reaches_zero_at_the_end():
    assert poly_lr(1e-3, 0, 100) == pytest.approx(1e-3)
    assert poly_lr(1e-3, 50, 100, 0.9) == pytest.approx(1e-3 * 0.5 ** 0.9)
    assert poly_lr(1e-3, 100, 100) == 0.0


def test_the_schedule_scales_each_groups_own_base_lr():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [a], "lr": 5e-6, "initial_lr": 5e-6},
                             {"params": [b], "lr": 2e-4, "initial_lr": 2e-4}], lr=1.0)
    set_poly_lr(opt, 50, 100, 0.9)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-6 * 0.5 ** 0.9, 2e-4 * 0.5 ** 0.9])


def test_ema_ratio_sequence_starts_at_zero_and_is_capped():
    assert [ema_ratio(t, 0.996) for t in range(4)] == pytest.approx([0.0, 0.5, 2 / 3, 0.75])
    assert ema_ratio(10_000, 0.996) == 0.996


def test_ema_update_is_the_weighted_average_of_every_parameter():
    model = nn.Linear(3, 2)
    ema = make_ema(model)
    before = [p.clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema_update(ema, model, 0.9)
    for p_ema, p0, p in zip(ema.parameters(), before, model.parameters()):
        torch.testing.assert_close(p_ema, 0.9 * p0 + 0.1 * p)
        assert not p_ema.requires_grad


def test_cutmix_takes_the_flipped_batch_inside_the_box_only():
    x = torch.arange(3).view(3, 1, 1, 1).expand(3, 2, 2, 2).float()
    box = torch.zeros(3, 2, 2, dtype=torch.long)
    box[0, 0, 0] = 1
    mixed = mix(x, box)
    assert mixed[0, :, 0, 0].tolist() == [2.0, 2.0]    # sample 0 takes sample 2 inside its box
    assert mixed[0, :, 1, 1].tolist() == [0.0, 0.0]    # and keeps its own pixels outside
    assert torch.equal(mixed[1:], x[1:])               # empty boxes change nothing
    labels = torch.tensor([[[0, 1], [1, 0]], [[2, 2], [2, 2]], [[1, 1], [1, 1]]])
    assert mix(labels, box)[0].tolist() == [[1, 1], [1, 0]]
    # Sample i takes sample B-1-i: in a batch of 4, 1 takes 2 and 3 takes 0 (a shift by one would not).
    x4 = torch.arange(4).view(4, 1, 1, 1).expand(4, 1, 2, 2).float()
    full = torch.ones(4, 2, 2, dtype=torch.long)
    assert mix(x4, full)[:, 0, 0, 0].tolist() == [3.0, 2.0, 1.0, 0.0]


def test_a_cutmixed_strong_view_carries_its_partners_labels_confidence_and_padding_with_its_pixels():
    """Inside sample 0's box every target comes from sample 2, padding included: a pasted padded patch stays ignored."""
    from methods.fixmatch import cutmixed_targets

    size = 4
    box = torch.zeros(3, 1, size, size, dtype=torch.long)
    box[0, 0, :2, :2] = 1
    ignore = torch.zeros(3, size, size, dtype=torch.long)
    ignore[2] = 254                                       # sample 2 is padding only
    batch = {"img_u_s": torch.arange(3.0).view(3, 1, 1, 1, 1).expand(3, 1, 3, size, size), "cutmix_box": box,
             "ignore_mask": ignore}
    conf = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1).expand(3, size, size)
    labels = torch.tensor([0, 1, 2]).view(3, 1, 1).expand(3, size, size)
    img, mask_u, conf_u, ignore_u = cutmixed_targets(batch, (conf, labels))
    inside = box[0, 0].bool()
    for mixed, partner, own in ((img[0, 0], 2.0, 0.0), (mask_u[0], 2, 0), (conf_u[0], 0.3, 0.1),
                                (ignore_u[0], 254, 0)):
        assert mixed[inside].unique().tolist() == pytest.approx([partner])
        assert mixed[~inside].unique().tolist() == pytest.approx([own])
    assert torch.equal(ignore_u[1:], ignore[1:])          # empty boxes change nothing

def test_unsupervised_loss_divides_by_non_padded_pixels_not_by_confident_ones():
    logits = torch.randn(1, NCLASS, 2, 2)
    pseudo = torch.tensor([[[0, 1], [2, 0]]])
    conf = torch.tensor([[[0.99, 0.5], [0.97, 0.99]]])
    ignore = torch.tensor([[[0, 0], [0, 254]]])          # one padded pixel
    loss, ratio = unsupervised_loss(logits, pseudo, conf, ignore, 0.95)
    ce = F.cross_entropy(logits, pseudo, reduction="none")[0]
    expected = (ce[0, 0] + ce[1, 0]) / 3                  # confident and not padded, over 3 real pixels
    torch.testing.assert_close(loss, expected)
    assert ratio.item() == pytest.approx(2 / 3)


def test_a_pseudo_label_exactly_at_the_threshold_counts():
    """The reference keeps conf >= threshold; a softmax can reach exactly the threshold (and 1.0 exactly)."""
    logits = torch.randn(1, NCLASS, 1, 2)
    pseudo = torch.tensor([[[0, 1]]])
    conf = torch.tensor([[[0.95, 0.9]]])
    loss, ratio = unsupervised_loss(logits, pseudo, conf, torch.zeros(1, 1, 2, dtype=torch.long), 0.95)
    torch.testing.assert_close(loss, F.cross_entropy(logits, pseudo, reduction="none")[0, 0, 0] / 2)
    assert ratio.item() == 0.5


def test_loss_weights_average_the_terms_present():
    one, two, three = torch.tensor(1.0), torch.tensor(2.0), torch.tensor(6.0)
    equal = LossWeights(x=1.0, u=1.0, dis=1.0)
    assert weighted_total(equal, one, two, three).item() == pytest.approx(3.0)
    assert weighted_total(equal, one, two).item() == pytest.approx(1.5)
    assert weighted_total(equal, one).item() == pytest.approx(1.0)
    assert weighted_total(LossWeights(x=2.0, u=1.0, dis=1.0), one, two, three).item() == pytest.approx((2 + 2 + 6) / 4)
    assert weighted_total(LossWeights(x=1.0, u=0.0, dis=3.0), one, two, three).item() == pytest.approx((1 + 18) / 4)


def test_unimatch_v2_takes_its_channel_dropout_from_the_config():
    """The step reads train.feature_drop where it uses it: p 0.3 scales kept channels by 1 / 0.7 and their
    complement by 1 / 0.3, on all but int(8 x (1 - 0.25)) = 6 of 8 pairs."""
    cfg = Config.model_validate({"train": {"method": "unimatch_v2", "conf_thresh": 0.0,
                                           "feature_drop": {"channel_p": 0.3, "pair_fraction": 0.25}},
                                 "teachers": {"dino": {"enabled": False}, "clip": {"enabled": False}},
                                 "distill": {"fusion_weights": {"student": 1.0, "dino": 0.0, "clip": 0.0}}})
    student = FakeSegmenter(0)
    batch = make_batch(n_strong=2)
    batch = {k: torch.cat([v] * 4) for k, v in batch.items()}  # 8 pairs
    unimatch_v2_step(make_ctx(cfg, student, FakeSegmenter(1)), batch)
    view1 = student.feature_masks[-1][8:16]
    dropped = (view1 != 1).any(1)
    assert dropped.sum().item() == 2
    assert view1[dropped].unique().tolist() == pytest.approx([0.0, 1 / 0.7])


class FakeSegmenter(nn.Module):
    """Logits from a fixed 1x1 convolution: a model whose output a test can recompute by hand."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, NCLASS, 1)
        self.feature_masks = []

    def forward(self, img, feature_mask=None):
        return self.forward_train(img, feature_mask).logits

    def forward_train(self, img, feature_mask=None):
        self.feature_masks.append(feature_mask)
        return SimpleNamespace(logits=self.conv(img), translated={})


def make_batch(n_strong: int = 1) -> dict:
    g = torch.Generator().manual_seed(0)
    box = torch.zeros(B, n_strong, S, S, dtype=torch.long)
    box[0, :, :2, :2] = 1
    ignore = torch.zeros(B, S, S, dtype=torch.long)
    ignore[1, -1] = 254
    return {"img_x": torch.randn(B, 3, S, S, generator=g), "mask_x": torch.randint(0, NCLASS, (B, S, S), generator=g),
            "img_u_w": torch.randn(B, 3, S, S, generator=g), "img_u_s": torch.randn(B, n_strong, 3, S, S, generator=g),
            "ignore_mask": ignore, "cutmix_box": box}


def make_ctx(cfg: Config, student: FakeSegmenter, ema: FakeSegmenter) -> StepContext:
    return StepContext(cfg=cfg, student=student.forward_train, ema=ema, teachers=None,
                       generator=torch.Generator().manual_seed(1), embed_dim=8)


def hand_fixmatch_loss(cfg, student, ema, batch, view=0):
    """docs/method.md §3 written out step by step, independently of methods/."""
    with torch.no_grad():
        probs = ema.conv(batch["img_u_w"]).softmax(1)
    conf, pseudo = probs.max(1)
    box = batch["cutmix_box"][:, view].bool()
    img_s = batch["img_u_s"][:, view].clone()
    img_s[0][:, box[0]] = batch["img_u_s"][1, view][:, box[0]]     # sample 0 takes sample B-1 = 1
    pseudo_m, conf_m, ign_m = pseudo.clone(), conf.clone(), batch["ignore_mask"].clone()
    pseudo_m[0][box[0]], conf_m[0][box[0]], ign_m[0][box[0]] = pseudo[1][box[0]], conf[1][box[0]], \
        batch["ignore_mask"][1][box[0]]
    loss_x = F.cross_entropy(student.conv(batch["img_x"]), batch["mask_x"], ignore_index=255)
    ce = F.cross_entropy(student.conv(img_s), pseudo_m, reduction="none")
    valid = ign_m != 254
    loss_u = (ce * ((conf_m >= cfg.train.conf_thresh) & valid)).sum() / valid.sum()
    return loss_x, loss_u


@pytest.mark.parametrize("thresh", [0.0, 0.5, 0.95])
def test_fixmatch_loss_equals_the_hand_computation(thresh):
    cfg = Config.model_validate({"train": {"method": "fixmatch", "conf_thresh": thresh},
                                 "teachers": {"dino": {"enabled": False}, "clip": {"enabled": False}},
                                 "distill": {"fusion_weights": {"student": 1.0, "dino": 0.0, "clip": 0.0}}})
    student, ema = FakeSegmenter(0), FakeSegmenter(1)
    batch = make_batch()
    losses = fixmatch_step(make_ctx(cfg, student, ema), dict(batch))
    loss_x, loss_u = hand_fixmatch_loss(cfg, student, ema, batch)
    torch.testing.assert_close(losses["loss"], (loss_x + loss_u) / 2)
    losses["loss"].backward()
    assert student.conv.weight.grad is not None and ema.conv.weight.grad is None


def test_supervised_loss_is_plain_cross_entropy_on_labelled_images():
    cfg = Config.model_validate({"train": {"method": "supervised"},
                                 "teachers": {"dino": {"enabled": False}, "clip": {"enabled": False}},
                                 "distill": {"fusion_weights": {"student": 1.0, "dino": 0.0, "clip": 0.0}}})
    student = FakeSegmenter(0)
    batch = make_batch()
    losses = supervised_step(make_ctx(cfg, student, student), batch)
    torch.testing.assert_close(losses["loss"], F.cross_entropy(student.conv(batch["img_x"]), batch["mask_x"]))


def test_unimatch_v2_channel_masks_are_complementary_on_a_random_half_of_the_pairs():
    g = torch.Generator().manual_seed(0)
    m1, m2 = complementary_channel_masks(8, 64, 0.5, 0.5, g)
    dropped = (m1 != 1).any(1) | (m2 != 1).any(1)
    assert dropped.sum().item() == 4
    assert torch.equal(m1[dropped] + m2[dropped], torch.full((4, 64), 2.0))
    assert set(m1[dropped].unique().tolist()) == {0.0, 2.0}
    assert torch.equal(m1[~dropped], torch.ones(4, 64))


def test_unimatch_v2_loss_averages_the_two_strong_views_and_masks_only_unlabelled_features():
    cfg = Config.model_validate({"train": {"method": "unimatch_v2", "conf_thresh": 0.0},
                                 "teachers": {"dino": {"enabled": False}, "clip": {"enabled": False}},
                                 "distill": {"fusion_weights": {"student": 1.0, "dino": 0.0, "clip": 0.0}}})
    student, ema = FakeSegmenter(0), FakeSegmenter(1)
    batch = make_batch(n_strong=2)
    losses = unimatch_v2_step(make_ctx(cfg, student, ema), dict(batch))
    loss_x, loss_u1 = hand_fixmatch_loss(cfg, student, ema, batch, view=0)
    _, loss_u2 = hand_fixmatch_loss(cfg, student, ema, batch, view=1)
    torch.testing.assert_close(losses["loss"], (loss_x + (loss_u1 + loss_u2) / 2) / 2)
    mask = student.feature_masks[-1]
    assert mask.shape == (3 * B, 8) and torch.equal(mask[:B], torch.ones(B, 8))


class FakeDistillingSegmenter(FakeSegmenter):
    """FakeSegmenter that also translates: its logits as tokens (B, H*W, NCLASS) for DINO, twice them for CLIP."""

    def forward_train(self, img, feature_mask=None):
        out = super().forward_train(img, feature_mask)
        tokens = self.conv(img).flatten(2).transpose(1, 2)
        out.translated = {"dino": tokens, "clip": 2 * tokens}
        return out


def test_rs_mtdf_loss_adds_the_distillation_terms_with_their_weights():
    cfg = Config.model_validate({"train": {"method": "rs_mtdf", "conf_thresh": 0.5},
                                 "distill": {"weights": {"dino": 0.25, "clip": 2.0}}})
    student, ema = FakeDistillingSegmenter(0), FakeSegmenter(1)
    batch = make_batch()
    seen = []

    def teachers(img):
        seen.append(img)
        g = torch.Generator().manual_seed(3)
        return {name: torch.randn(len(img), S * S, NCLASS, generator=g) for name in ("dino", "clip")}

    ctx = make_ctx(cfg, student, ema)
    losses = rs_mtdf_step(StepContext(**{**vars(ctx), "teachers": teachers}), dict(batch))
    loss_x, loss_u = hand_fixmatch_loss(cfg, student, ema, batch)
    translated = student.forward_train(seen[0]).translated
    targets = teachers(seen[0])
    mse = {name: F.mse_loss(translated[name], targets[name]) for name in ("dino", "clip")}
    loss_dis = 0.25 * mse["dino"] + 2.0 * mse["clip"]
    torch.testing.assert_close(losses["loss_dis"], loss_dis)
    torch.testing.assert_close(losses["loss_dis_clip"], mse["clip"])
    torch.testing.assert_close(losses["loss"], (loss_x + loss_u + loss_dis) / 3)
    with pytest.raises(ValueError, match="teachers"):
        rs_mtdf_step(ctx, dict(batch))  # no teachers given


def test_a_labelled_batch_without_one_labelled_pixel_contributes_zero_loss_not_nan():
    from methods.common import cross_entropy_x

    logits = torch.randn(2, 7, 6, 6, requires_grad=True)
    loss = cross_entropy_x(logits, torch.full((2, 6, 6), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() == 0
    # Elsewhere it is the usual mean over labelled pixels.
    mask = torch.randint(0, 7, (2, 6, 6))
    mask[0, :3] = 255
    expected = torch.nn.functional.cross_entropy(logits, mask, ignore_index=255)
    torch.testing.assert_close(cross_entropy_x(logits, mask), expected)
