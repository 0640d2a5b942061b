"""The global batch (train.global_batch) on any number of processes: how it is split into forwards, and that one
process accumulating two forwards makes the update two processes make with one forward each (gloo, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scripts.costs import Step, step_of
from tests.train_fixtures import DEMO, TINY_STEP
from util.config import load_config
from util.dist import DistInfo

METHODS = ("supervised", "fixmatch", "unimatch_v2", "rs_mtdf")


def plan(method: str, processes: int, *overrides: str):
    from methods import METHODS
    from methods.plan import plan_batches

    cfg = load_config(DEMO, ["train.global_batch=32", "train.batch_size=8", f"train.method={method}",
                             "train.supervised_protocol=same_iterations", *overrides])
    return plan_batches(METHODS[method], cfg, processes)


def test_the_published_global_batch_is_reached_on_any_number_of_gpus_that_splits_it():
    """32 crops a step, at most 8 a forward: 1 GPU accumulates 4 forwards, 2 GPUs 2, 4 GPUs none, 8 GPUs take
    4 crops each, 16 take 2; a share of 12 a process is 2 forwards of 6, the fewest that fit."""
    plans = {n: plan("fixmatch", n) for n in (1, 2, 4, 8, 16)}
    assert {n: (p.micro_batch, p.accumulation, p.global_batch) for n, p in plans.items()} == {
        1: (8, 4, 32), 2: (8, 2, 32), 4: (8, 1, 32), 8: (4, 1, 32), 16: (2, 1, 32)}
    assert plans[1].describe() == "global batch 32 = 1 process(es) x 8 crops x 4 accumulated"
    six = plan("fixmatch", 2, "train.global_batch=24")
    assert (six.micro_batch, six.accumulation) == (6, 2)
    # null: the process count sets the global batch.
    assert plan("fixmatch", 4, "train.global_batch=null").global_batch == 32
    # The authors' supervised protocol doubles both: 64 crops a step, at most 16 a forward.
    reference = plan("supervised", 1, "train.supervised_protocol=reference")
    assert (reference.micro_batch, reference.accumulation, reference.global_batch) == (16, 4, 64)


@pytest.mark.parametrize(("processes", "method", "named"), [
    (3, "fixmatch", "process counts that do: 1, 2, 4, 8, 16"),      # 32 does not split over 3 (it was 24)
    (5, "supervised", "process counts that do: 1, 2, 4, 8, 16, 32"),  # nor over 5 (it was 30)
    (32, "fixmatch", "without a CutMix partner"),                   # 1 crop a forward: CutMix with itself
])
def test_a_global_batch_that_does_not_split_is_refused_naming_the_keys_and_the_counts_that_work(
        processes, method, named):
    from util.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        plan(method, processes)
    message = str(error.value)
    assert message.startswith("train.global_batch 32 does not split over") and "train.batch_size 8" in message
    assert named in message


def test_unimatch_v2_keeps_its_share_of_whole_pairs_or_is_refused():
    """int(B / 2) of a forward's B pairs keep their features whole: 4 of 8, 2 of 4, but 1 of 3 (not a half)."""
    from methods.unimatch_v2 import channel_dropout_pairs

    cfg = load_config(DEMO, ["train.method=unimatch_v2", "train.batch_size=8"])
    assert channel_dropout_pairs(4, cfg) is None and channel_dropout_pairs(8, cfg) is None
    assert "33%" in channel_dropout_pairs(3, cfg) and "50%" in channel_dropout_pairs(3, cfg)
    assert plan("unimatch_v2", 8).micro_batch == 4
    with pytest.raises(Exception, match="of the pairs without channel dropout"):
        plan("unimatch_v2", 8, "train.global_batch=24")   # 3 a forward


def micro_batch(seed: int, size: int = 56, b: int = 2, n_strong: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    box = torch.zeros(b, n_strong, size, size, dtype=torch.long)
    box[0, :, 8:30, 10:40] = 1
    return {"img_x": torch.randn(b, 3, size, size, generator=g),
            "mask_x": torch.randint(0, 7, (b, size, size), generator=g),
            "img_u_w": torch.randn(b, 3, size, size, generator=g),
            "img_u_s": torch.randn(b, n_strong, 3, size, size, generator=g),
            "ignore_mask": torch.zeros(b, size, size, dtype=torch.long), "cutmix_box": box}


def trainer(method: str, rank: int, world: int, global_batch: int = 4) -> Step:
    """The demo's tiny model at TINY_STEP size, a global batch of 4 crops (or `global_batch`), at most 2 a forward."""
    fusion = "{student: 0.8, dino: 0.1, clip: 0.1}" if method == "rs_mtdf" else "{student: 1, dino: 0, clip: 0}"
    teachers = str(method == "rs_mtdf").lower()
    cfg = load_config(DEMO, [*TINY_STEP, f"train.method={method}", f"train.global_batch={global_batch}",
                             "train.batch_size=2", "train.precision=fp32", f"teachers.dino.enabled={teachers}",
                             f"teachers.clip.enabled={teachers}", f"distill.fusion_weights={fusion}",
                             "train.supervised_protocol=same_iterations"])
    return step_of(cfg, "cpu", 100, rank, world)


def updated(t: Step) -> dict[str, torch.Tensor]:
    """The weights after the step, and AdamW's first moments: the gradient itself, which the first update (about
    lr x its sign) would hide a wrong scale of."""
    moments = {f"exp_avg.{name}": t.optimizer.state[p]["exp_avg"].clone() for name, p in t.model.named_parameters()}
    return {**{k: v.clone() for k, v in t.model.state_dict().items()}, **moments}


def one_step_per_process(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    states = {}
    for method in METHODS:
        t = trainer(method, rank, world)
        assert (t.plan.micro_batch, t.plan.accumulation) == (2, 1) and t.state.ddp is not None
        t.run(micro_batch(seed=rank))
        states[method] = updated(t)
    if rank == 0:
        torch.save(states, out)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_one_process_accumulating_two_forwards_updates_as_two_processes_do(tmp_path: Path):
    """For every method: the same 4 crops as 2 processes x 2 (DDP averages their gradients) and as 1 process x 2
    forwards x 2 crops (gradients of loss / 2 summed). Each forward draws what its process would draw (CutMix
    partners and UniMatch V2's dropped pairs within its 2 crops, the channel masks from the virtual rank), so
    the update is the same up to the order of float additions."""
    out = tmp_path / "two_processes.pt"
    mp.spawn(one_step_per_process, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    two = torch.load(out, weights_only=True)
    for method in METHODS:
        one = trainer(method, 0, 1)
        assert (one.plan.micro_batch, one.plan.accumulation) == (2, 2)
        one.run(micro_batch(seed=0), micro_batch(seed=1))
        for name, value in updated(one).items():
            torch.testing.assert_close(value, two[method][name], atol=2e-6, rtol=0,
                                       msg=lambda m, method=method, name=name: f"{method} {name}: {m}")


@pytest.mark.parametrize("method", ["supervised", "unimatch_v2"])
@pytest.mark.usefixtures("one_thread")
def test_accumulated_forwards_average_what_each_forward_would_compute_as_a_process_of_its_own(method: str):
    """In-process and fast, beside the two-process test above: forward j of an accumulating step is the forward
    of virtual process j (its own draws: UniMatch V2's channel masks), and the step's gradient is their mean.
    The same crops twice: the mean of the two single-forward gradients, not their sum, not one of them twice."""
    batch = micro_batch(seed=0)
    accumulating = trainer(method, 0, 1)
    start = {k: v.clone() for k, v in accumulating.model.state_dict().items()}
    accumulating.run(batch, batch)
    singles = []
    for virtual_rank in (0, 1):
        single = trainer(method, virtual_rank, 1, global_batch=2)
        assert single.plan.accumulation == 1
        single.model.load_state_dict(start)
        single.run(batch)
        singles.append(updated(single))
    for name, value in updated(accumulating).items():
        if name.startswith("exp_avg."):   # AdamW's first moment after one step: (1 - beta1) x the gradient
            torch.testing.assert_close(value, (singles[0][name] + singles[1][name]) / 2, atol=1e-7, rtol=1e-5,
                                       msg=lambda m, name=name: f"{method} {name}: {m}")
    if method == "unimatch_v2":   # the premise: the two forwards drew differently
        assert any(not torch.equal(singles[0][n], singles[1][n]) for n in singles[0] if n.startswith("exp_avg."))


def train_data(cfg, method: str | None = None, processes: int = 1):
    """The run's loaders (dataset.loaders.build_train_data) as process 0 of `processes` plans them."""
    from dataset.loaders import build_train_data
    from methods import METHODS
    from methods.plan import plan_batches

    m = METHODS[method or cfg.train.method]
    info = DistInfo(0, processes, 0, torch.device("cpu"), True)
    return build_train_data(cfg, m, plan_batches(m, cfg, processes), info)


def test_a_step_takes_as_many_micro_batches_as_the_plan_accumulates(tmp_path: Path):
    from tests.train_fixtures import tiny_overrides, write_tiny_dataset

    splits = write_tiny_dataset(tmp_path / "data", size=16)
    cfg = load_config(DEMO, [*tiny_overrides(tmp_path / "data", splits, tmp_path / "run", "fixmatch"),
                             "train.global_batch=4", "train.epoch_samples=8"])
    data = train_data(cfg)
    assert (data.plan.micro_batch, data.plan.accumulation, data.steps_per_epoch) == (2, 2, 2)
    steps = list(data.steps(0, 0, torch.device("cpu")))
    assert [len(micro) for micro in steps] == [2, 2]
    assert all(len(batch["img_x"]) == 2 for micro in steps for batch in micro)


@pytest.mark.parametrize(("labeled", "samples", "epoch"), [(4, 12, 12), (40, 12, 40)])
def test_the_reference_supervised_epoch_is_the_labelled_list_repeated_to_at_least_the_samples(
        tmp_path: Path, labeled: int, samples: int, epoch: int):
    """The authors' SemiDataset repeats the labelled list to supervised_epoch_samples (3,000) only where it is
    shorter: at 1 % an epoch is 3,000 draws, at DeepGlobe 100 % (12,045 tiles) one pass over the list."""
    from tests.train_fixtures import tiny_overrides, write_tiny_dataset

    splits = write_tiny_dataset(tmp_path / "data", n_labeled=labeled, size=16)
    cfg = load_config(DEMO, [*tiny_overrides(tmp_path / "data", splits, tmp_path / "run", "supervised"),
                             "train.supervised_protocol=reference", f"train.supervised_epoch_samples={samples}"])
    data = train_data(cfg)
    # Batches doubled (2 x 2 crops) as supervised.py does, with drop_last.
    assert (data.epoch_length, data.plan.micro_batch, data.steps_per_epoch) == (epoch, 4, epoch // 4)


def scripted_evaluation(monkeypatch: pytest.MonkeyPatch) -> list:
    """train.evaluate replaced by a fixed score of 50 %; returns the list of the `excluded` it is called with."""
    import train

    seen: list = []

    def scripted(model, loader, cfg, device, info, max_visualize=0, excluded=None):
        seen.append(excluded)
        return {"miou": 50.0, "iou": [50.0] * 7, "classes_in_mean": list(range(7)), "samples": []}

    monkeypatch.setattr(train, "evaluate", scripted)
    return seen


@pytest.mark.slow
def test_best_pth_is_chosen_on_every_class_unless_told_to_use_the_scored_ones(monkeypatch, tmp_path: Path):
    """The authors validate on every class (clutter, unknown) and keep best.pth by that; the test-time exclusions
    apply at test only, or at validation too with train.best_on=scored_classes."""
    import train
    from tests.train_fixtures import tiny_overrides, write_tiny_dataset

    seen = scripted_evaluation(monkeypatch)
    splits = write_tiny_dataset(tmp_path / "data", size=16)
    for best_on, excluded in (("all_classes", ()), ("scored_classes", None)):
        seen.clear()
        argv = ["--config", DEMO, *tiny_overrides(tmp_path / "data", splits, tmp_path / best_on, "supervised", 1),
                f"train.best_on={best_on}"]
        assert train.main(argv) == 0
        assert seen == [excluded, excluded]
        progress = (tmp_path / best_on / "progress.json").read_text()
        assert f'"selected_on": "{best_on}"' in progress


@pytest.mark.parametrize(("best_on", "excluded"), [("all_classes", ()), ("scored_classes", None)])
def test_validation_scores_every_class_or_the_scored_ones_as_best_on_says(best_on, excluded, monkeypatch, tmp_path):
    """Fast, in-process: what train.validate asks the scorer to exclude (the end-to-end run is above)."""
    import logging

    import train
    from util.run import Progress

    seen = scripted_evaluation(monkeypatch)
    cfg = load_config(DEMO, [*TINY_STEP, "train.method=supervised", f"train.best_on={best_on}"])
    step = step_of(cfg, "cpu")
    train.validate(step.state, cfg, None, DistInfo(0, 1, 0, torch.device("cpu"), True), Progress("student", best_on),
                   1, None, logging.getLogger("test"))
    assert seen == [excluded, excluded]   # student and EMA alike

def test_epoch_samples_sets_the_draws_of_an_epoch_for_every_method(tmp_path: Path):
    """train.epoch_samples: an epoch of that many draws from each list (a random part of a long unlabelled list,
    the labelled list repeated), instead of one pass over the unlabelled list."""
    from tests.train_fixtures import tiny_overrides, write_tiny_dataset

    splits = write_tiny_dataset(tmp_path / "data", size=16)
    for method, steps in (("fixmatch", 3), ("supervised", 3)):
        cfg = load_config(DEMO, [*tiny_overrides(tmp_path / "data", splits, tmp_path / "run", method),
                                 "train.epoch_samples=6"])
        data = train_data(cfg)
        assert (data.epoch_length, data.steps_per_epoch) == (6, steps)


def test_an_epoch_shorter_than_one_step_names_the_keys_that_make_it(tmp_path: Path):
    """train.epoch_samples=1 with train.global_batch unset: the epoch and the step are named, not global_batch."""
    from tests.train_fixtures import tiny_overrides, write_tiny_dataset
    from util.errors import ConfigError

    splits = write_tiny_dataset(tmp_path / "data", size=16)
    cfg = load_config(DEMO, [*tiny_overrides(tmp_path / "data", splits, tmp_path / "run", "fixmatch"),
                             "train.epoch_samples=1", "train.global_batch=null"])
    with pytest.raises(ConfigError) as error:
        train_data(cfg)
    message = str(error.value)
    assert message.startswith("train.epoch_samples: an epoch of 1 draws is less than one optimizer step of 2 crops")
    assert "train.batch_size" in message and "global_batch" not in message
