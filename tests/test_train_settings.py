"""Every training setting arrives where it acts, on the real state (train.build_state) and step (methods/step.py):
AdamW's groups and arithmetic, the schedule, the EMA ratio, the loss terms, the pseudo-label threshold, the channel
dropout and the batch plan. Each is set to a value unlike its default (and unlike the library's default), so that
a value that never arrives shows."""

from __future__ import annotations

import pytest
import torch

from methods.step import train_step
from scripts.costs import Step, step_batch, step_of
from tests.train_fixtures import DEMO, TINY_STEP
from util.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread")

# Unlike the defaults (lr 5e-6 and lr_multi 40; the demo's 2e-4 and 5) and unlike AdamW's own, which are the
# published weight decay 0.01 and betas (0.9, 0.999).
OPTIMIZER = ["train.lr=1e-3", "train.lr_multi=7", "train.weight_decay=0.2", "train.betas=[0.8, 0.95]"]


def state(method: str, *overrides: str, total_iters: int = 100) -> Step:
    """The demo's tiny model at TINY_STEP size under `method` and `overrides`, in fp32 on the CPU."""
    cfg = load_config(DEMO, [*TINY_STEP, f"train.method={method}", "train.precision=fp32", *overrides])
    return step_of(cfg, "cpu", total_iters)


def unmixed_batch(step: Step) -> dict[str, torch.Tensor]:
    """A synthetic micro-batch without CutMix boxes: each strong view's targets are its own weak view's."""
    batch = step_batch(step)
    batch["cutmix_box"].zero_()
    return batch


def test_adamw_groups_carry_the_configured_lr_lr_multi_weight_decay_and_betas():
    step = state("rs_mtdf", *OPTIMIZER)
    encoder, head = step.optimizer.param_groups
    assert {id(p) for p in encoder["params"]} == {id(p) for p in step.model.encoder_parameters()}
    assert {id(p) for p in head["params"]} == {id(p) for p in step.model.head_parameters()}
    assert (encoder["lr"], encoder["initial_lr"]) == (1e-3, 1e-3)
    assert (head["lr"], head["initial_lr"]) == pytest.approx((7e-3, 7e-3))
    for group in (encoder, head):
        assert (group["weight_decay"], group["betas"]) == (0.2, (0.8, 0.95))


def test_the_first_adamw_step_computes_with_the_configured_lr_weight_decay_and_betas():
    """AdamW's first step, written out: m = (1 - b1) g, v = (1 - b2) g^2, and with their bias corrections
    p <- p (1 - lr wd) - lr g / (|g| + eps), at each group's own lr."""
    step = state("supervised", *OPTIMIZER)
    before = {p: p.detach().clone() for p in step.model.parameters()}
    step.run(step_batch(step))
    for group in step.optimizer.param_groups:
        lr, eps = group["initial_lr"], group["eps"]
        for p in group["params"]:
            g, moments = p.grad, step.optimizer.state[p]
            torch.testing.assert_close(moments["exp_avg"], 0.2 * g)
            torch.testing.assert_close(moments["exp_avg_sq"], 0.05 * g * g)
            torch.testing.assert_close(p.detach(), before[p] * (1 - lr * 0.2) - lr * g / (g.abs() + eps),
                                       atol=1e-7, rtol=1e-6)


def test_the_schedule_takes_each_groups_base_lr_down_with_the_configured_power():
    """lr_t = base (1 - t / T) ** poly_power, T the run's steps: power 2 over 4 steps gives 1, 9/16, 1/4."""
    step = state("supervised", "train.lr=1e-3", "train.lr_multi=7", "train.poly_power=2", total_iters=4)
    batch = step_batch(step)
    for factor in (1.0, 9 / 16, 1 / 4):
        step.run(dict(batch))
        assert [g["lr"] for g in step.optimizer.param_groups] == pytest.approx([1e-3 * factor, 7e-3 * factor])


def test_the_ema_follows_the_student_at_the_configured_cap():
    """r_t = min(1 - 1 / (t + 1), ema_cap): a copy after step 0, then at most the cap (0.3 here, not 0.5)."""
    step = state("fixmatch", "train.ema_cap=0.3")
    batch = step_batch(step)
    step.run(dict(batch))
    for p_ema, p in zip(step.ema.parameters(), step.model.parameters()):
        assert torch.equal(p_ema, p)
    ema_before = [p.clone() for p in step.ema.parameters()]
    step.run(dict(batch))
    for p_ema, p0, p in zip(step.ema.parameters(), ema_before, step.model.parameters()):
        torch.testing.assert_close(p_ema, 0.3 * p0 + 0.7 * p)


@pytest.mark.parametrize(("method", "terms"), [("fixmatch", ("x", "u")), ("unimatch_v2", ("x", "u")),
                                               ("rs_mtdf", ("x", "u", "dis"))])
def test_the_loss_is_the_mean_of_its_terms_under_the_configured_weights(method, terms):
    """loss = sum(w_k L_k) / sum(w_k) over the method's terms, with train.loss_weights x 2, u 0.5, dis 3, and
    L_dis = 0.25 L_dino + 2 L_clip with distill.weights."""
    step = state(method, "train.loss_weights={x: 2, u: 0.5, dis: 3}", "distill.weights={dino: 0.25, clip: 2}")
    losses = step.run(step_batch(step))
    weights = {"x": 2.0, "u": 0.5, "dis": 3.0}
    expected = sum(weights[k] * losses[f"loss_{k}"] for k in terms) / sum(weights[k] for k in terms)
    torch.testing.assert_close(losses["loss"], expected)
    if method == "rs_mtdf":
        torch.testing.assert_close(losses["loss_dis"], 0.25 * losses["loss_dis_dino"] + 2 * losses["loss_dis_clip"])


@pytest.mark.parametrize("method", ["fixmatch", "unimatch_v2", "rs_mtdf"])
def test_pseudo_labels_count_from_the_configured_confidence_threshold(method):
    """mask_ratio is the share of pixels whose EMA confidence reaches train.conf_thresh: at the median confidence
    of this untrained model, about half (the default 0.95 would keep none)."""
    step = state(method)
    batch = unmixed_batch(step)
    with torch.no_grad():
        conf = step.ema(batch["img_u_w"]).softmax(dim=1).amax(dim=1)
    thresh = round(conf.median().item(), 6)
    losses = train_step(step.state, step.cfg.replace({"train.conf_thresh": thresh}), [batch])
    expected = (conf >= thresh).float().mean()
    assert 0.3 < expected < 0.7
    torch.testing.assert_close(losses["mask_ratio"], expected)


def test_unimatch_v2_drops_the_configured_share_of_channels_on_the_configured_pairs():
    """channel_p 0.3 and pair_fraction 1: every pair's two views get complementary masks of 1 / 0.7 and 1 / 0.3
    (the defaults would leave one of the two pairs whole and scale by 2)."""
    step = state("unimatch_v2", "train.feature_drop={channel_p: 0.3, pair_fraction: 1.0}")
    seen = []
    forward = step.state.forward

    def recording(img, feature_mask=None):
        seen.append(feature_mask)
        return forward(img, feature_mask)

    step.state.forward = recording
    step.run(step_batch(step))
    b = step.plan.micro_batch
    labelled, view1, view2 = seen[0].split(b)
    assert torch.equal(labelled, torch.ones_like(labelled))
    for mask, kept in ((view1, 1 / 0.7), (view2, 1 / 0.3)):
        for row in mask:
            assert row.unique().tolist() == pytest.approx([0.0, kept])
    assert torch.equal(view1 == 0, view2 != 0)


def test_the_batch_plan_pairs_cutmix_partners_only_where_augment_cutmix_p_mixes():
    """6 crops a step, at most 4 a forward: with CutMix, forwards of 3 would leave a crop without a partner (3
    forwards of 2); without CutMix (cutmix_p 0), 2 forwards of 3."""
    from methods import METHODS
    from methods.plan import plan_batches

    def plan(cutmix_p: float):
        cfg = load_config(DEMO, ["train.method=fixmatch", "train.global_batch=6", "train.batch_size=4",
                                 f"augment.cutmix_p={cutmix_p}"])
        p = plan_batches(METHODS["fixmatch"], cfg, 1)
        return p.micro_batch, p.accumulation

    assert plan(0.5) == (2, 3)
    assert plan(0.0) == (3, 2)


def test_the_schedule_spans_train_epochs_of_optimizer_steps(monkeypatch, tmp_path):
    """T of the poly schedule is train.epochs x the optimizer steps of an epoch (3 x 2 here), not the forwards
    (each step accumulates 2): what train.py hands build_state, which the run stops at here."""
    import train
    from tests.train_fixtures import tiny_overrides, write_tiny_dataset
    from util.dist import DistInfo
    from util.run import RunFolder

    class Built(Exception):
        pass

    seen = []

    def build_state(cfg, device, total_iters):
        seen.append(total_iters)
        raise Built

    monkeypatch.setattr(train, "build_state", build_state)
    splits = write_tiny_dataset(tmp_path / "data", size=16)
    cfg = load_config(DEMO, [*tiny_overrides(tmp_path / "data", splits, tmp_path / "run", "fixmatch", epochs=3),
                             "train.global_batch=4", "train.epoch_samples=8"])
    with pytest.raises(Built):
        train.train(cfg, DistInfo(0, 1, 0, torch.device("cpu"), True), RunFolder(cfg.run_dir))
    assert seen == [6]
