"""train.py end to end on tiny models: every method runs, outputs are complete, resume is exact."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

import train
from tests.train_fixtures import REPO, tiny_overrides, write_tiny_dataset
from util.checkpoint import load_own_checkpoint
from util.flops import model_flops_utilisation

# Every test that trains is marked slow (`pytest -m 'not slow'` leaves them out): real processes, torchrun
# and kills take 10-25 s each on 2 cores, and the in-process runs of a few tiny iterations, about a second on
# an idle machine, take 10-30 s where other work shares the 2 cores (their two intra-op threads wait on each
# other). They keep the default threads: the killed runs' subprocesses must match the in-process reference
# bit for bit.
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return root, write_tiny_dataset(root)


def run(data, save, *extra, method="rs_mtdf", epochs=2) -> int:
    root, splits = data
    argv = ["--config", "configs/demo.yaml", *tiny_overrides(root, splits, save, method, epochs), *extra]
    return train.main(argv)


def assert_same_weights(a: dict, b: dict) -> None:
    for key in ("model", "model_ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"


@slow
@pytest.mark.parametrize("method", ["supervised", "fixmatch", "unimatch_v2", "rs_mtdf"])
def test_every_method_trains_and_writes_a_complete_run(data, tmp_path, method):
    save = tmp_path / method
    sigterm = signal.getsignal(signal.SIGTERM)
    assert run(data, save, method=method, epochs=1) == 0
    assert signal.getsignal(signal.SIGTERM) is sigterm  # main's SIGTERM handler is gone with the run
    assert {"config.yaml", "train.log", "latest.pth", "best.pth", "tb"} <= {p.name for p in save.iterdir()}
    ckpt = load_own_checkpoint(save / "latest.pth")
    assert ckpt["iteration"] == 4 and ckpt["epoch"] == 1
    assert not any(k.startswith(("teacher", "dino_teacher", "clip_teacher")) for k in ckpt["model"])
    assert ckpt["config"]["train"]["method"] == method
    assert 0.0 <= ckpt["best"]["ema"]["miou"] <= 100.0 and ckpt["best"]["ema"]["epoch"] == 1
    progress = json.loads((save / "progress.json").read_text())
    assert progress["finished"] and progress["unit"] == "percent" and progress["best"] == ckpt["best"]
    assert (progress["iteration"], progress["total_iters"], progress["method"]) == (4, 4, method)


@slow
def test_reference_supervised_protocol_doubles_the_batch_and_draws_a_fixed_number_of_samples(data, tmp_path):
    """The authors' supervised.py: batch 2 x batch_size, an epoch of supervised_epoch_samples labelled draws."""
    save = tmp_path / "run"
    assert run(data, save, "train.supervised_protocol=reference", "train.supervised_epoch_samples=12",
               method="supervised", epochs=1) == 0
    # 12 samples in batches of 2 x 2: 3 iterations (the same-iterations protocol would make 4 of 2).
    assert load_own_checkpoint(save / "latest.pth")["iteration"] == 3


SCRIPTED = {"student": [40.0, 50.0, 50.0], "ema": [60.0, 30.0, 20.0]}


@slow
def test_best_checkpoint_is_the_best_student_epoch_ties_going_to_the_later_one(data, tmp_path, monkeypatch):
    calls = []

    def scripted_evaluate(model, loader, cfg, device, info, max_visualize=0, excluded=None):
        which = "student" if len(calls) % 2 == 0 else "ema"
        miou = SCRIPTED[which][len(calls) // 2]
        calls.append(which)
        return {"miou": miou, "iou": [miou] * 7, "classes_in_mean": list(range(7)), "samples": []}

    monkeypatch.setattr(train, "evaluate", scripted_evaluate)
    save = tmp_path / "run"
    assert run(data, save, method="fixmatch", epochs=3) == 0
    best = load_own_checkpoint(save / "best.pth")
    assert best["selected_by"] == "student" and best["epoch"] == 3
    assert best["best"] == {"student": {"miou": 50.0, "epoch": 3}, "ema": {"miou": 60.0, "epoch": 1}}
    progress = json.loads((save / "progress.json").read_text())
    assert progress["best"] == best["best"] and progress["selected_by"] == "student"
    assert [h["student"] for h in progress["history"]] == SCRIPTED["student"]
    log = (save / "train.log").read_text()
    assert "best val mIoU student 50.00 (epoch 3), ema 60.00 (epoch 1)" in log.splitlines()[-1]


@slow
def test_best_by_ema_keeps_the_best_ema_epoch(data, tmp_path, monkeypatch):
    calls = []

    def scripted_evaluate(model, loader, cfg, device, info, max_visualize=0, excluded=None):
        which = "student" if len(calls) % 2 == 0 else "ema"
        calls.append(which)
        miou = SCRIPTED[which][(len(calls) - 1) // 2]
        return {"miou": miou, "iou": [miou] * 7, "classes_in_mean": list(range(7)), "samples": []}

    monkeypatch.setattr(train, "evaluate", scripted_evaluate)
    save = tmp_path / "run"
    assert run(data, save, "train.best_by=ema", method="fixmatch", epochs=3) == 0
    best = load_own_checkpoint(save / "best.pth")
    assert best["selected_by"] == "ema" and best["epoch"] == 1


@slow
def test_supervised_run_on_a_fully_labelled_split_takes_its_epoch_from_the_labelled_list(tmp_path):
    """DeepGlobe's 100 % split has an empty unlabeled.txt: the upper bound trains on the labelled list."""
    root = tmp_path / "data"
    splits = write_tiny_dataset(root)
    (splits / "10" / "unlabeled.txt").write_text("")
    argv = ["--config", "configs/demo.yaml", *tiny_overrides(root, splits, tmp_path / "run", "supervised", 1)]
    assert train.main(argv) == 0
    # 4 labelled tiles, batch size 2.
    assert load_own_checkpoint(tmp_path / "run" / "latest.pth")["iteration"] == 2


def signal_after(n: int, signum: int = signal.SIGTERM, then: Exception | None = None):
    """train.train_step that sends this process `signum` after step `n` (and raises `then` there, if given)."""
    original = train.train_step

    def step(state, cfg, micro, rank=0):
        losses = original(state, cfg, micro, rank)
        if state.iteration == n:
            signal.raise_signal(signum)
            if then is not None:
                raise then
        return losses

    return step


def test_the_runs_signal_handlers_live_as_long_as_main_also_after_an_error(data, tmp_path, monkeypatch):
    """main's handlers (stop at the end of the step, save, exit) live as long as main: afterwards, also after an
    error, SIGTERM does what the caller had it do."""
    received = []
    callers = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        monkeypatch.setattr(train, "train_step", signal_after(1, then=RuntimeError("failed mid-run")))
        with pytest.raises(RuntimeError, match="failed mid-run"):
            run(data, tmp_path / "failed", method="supervised", epochs=1)
        assert received == []  # the run got it, not the caller
        assert signal.getsignal(signal.SIGTERM) is not None and signal.getsignal(signal.SIGINT) is not None
        signal.raise_signal(signal.SIGTERM)
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, callers)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> dict:
    """The reference: the tiny two-epoch run of 8 iterations, never interrupted."""
    save = tmp_path_factory.mktemp("uninterrupted")
    assert run(data, save) == 0
    return load_own_checkpoint(save / "latest.pth")


@slow
def test_stopped_run_resumes_to_the_same_weights_as_an_uninterrupted_one(data, uninterrupted, tmp_path, monkeypatch):
    full = uninterrupted
    # SIGTERM after 3 of 8 iterations, mid-epoch; then run the same command again.
    original = train.train_step
    monkeypatch.setattr(train, "train_step", signal_after(3))
    assert run(data, tmp_path / "resumed") == 0
    stopped = load_own_checkpoint(tmp_path / "resumed" / "latest.pth")
    assert stopped["iteration"] == 3
    monkeypatch.setattr(train, "train_step", original)
    assert run(data, tmp_path / "resumed") == 0
    resumed = load_own_checkpoint(tmp_path / "resumed" / "latest.pth")
    assert resumed["iteration"] == full["iteration"] == 8
    assert_same_weights(full, resumed)
    assert resumed["best"] == full["best"]


@slow
def test_a_run_accumulating_forwards_says_so_and_resumes_exactly_mid_epoch(data, tmp_path, monkeypatch):
    """train.global_batch 4 on one process of 2 crops a forward: 2 forwards a step (a step takes 4 of the 8
    unlabelled tiles, 2 steps an epoch); stopped after 3 of 4 steps and resumed, it ends as the whole run."""
    accumulate = ["train.global_batch=4", "train.log_interval=1"]
    assert run(data, tmp_path / "full", *accumulate, method="fixmatch") == 0
    full = load_own_checkpoint(tmp_path / "full" / "latest.pth")
    assert (full["iters_per_epoch"], full["iteration"]) == (2, 4)
    assert "global batch 4 = 1 process(es) x 2 crops x 2 accumulated" in (tmp_path / "full" / "train.log").read_text()
    assert (tmp_path / "full" / "config.yaml").read_text().startswith(
        "# trained with global batch 4 = 1 process(es) x 2 crops x 2 accumulated\n")
    original = train.train_step
    monkeypatch.setattr(train, "train_step", signal_after(3))
    assert run(data, tmp_path / "resumed", *accumulate, method="fixmatch") == 0
    monkeypatch.setattr(train, "train_step", original)
    assert load_own_checkpoint(tmp_path / "resumed" / "latest.pth")["iteration"] == 3
    assert run(data, tmp_path / "resumed", *accumulate, method="fixmatch") == 0
    assert_same_weights(full, load_own_checkpoint(tmp_path / "resumed" / "latest.pth"))


@slow
def test_nonfinite_loss_stops_naming_the_iteration_and_keeps_the_last_checkpoint(data, tmp_path, monkeypatch):
    save = tmp_path / "nan"
    assert run(data, save, epochs=1) == 0
    before = (save / "latest.pth").read_bytes()
    original = train.train_step

    def poisoned(state, cfg, micro, rank=0):
        losses = original(state, cfg, micro, rank)
        if state.iteration == 6:  # the step of iteration 5 has just been made
            losses["loss_dis"] = torch.tensor(float("nan"))
        return losses

    monkeypatch.setattr(train, "train_step", poisoned)
    with pytest.raises(train.NonFiniteLoss, match="iteration 5"):
        run(data, save, "train.epochs=2", "--resume-changed")
    assert (save / "latest.pth").read_bytes() == before


# Saves in the killed runs (checkpoint_interval=3, 4 iterations per epoch): latest after iteration 3,
# best and latest at the end of epoch 1, latest after iteration 6, then epoch 2's end.
KILL_POINTS = {
    "mid-iteration": ("step", 6),  # in iteration 6's update: resumes from the epoch-1 checkpoint
    "mid-evaluation": ("evaluate", 3),  # in epoch 2's student pass, after best.pth exists
    "mid-save": ("save", 3),  # half-way through writing epoch 1's latest.pth
}


@slow
@pytest.mark.parametrize("where", KILL_POINTS)
def test_sigkill_then_restart_ends_with_identical_weights(data, uninterrupted, tmp_path, where):
    """A real process killed with SIGKILL, then started again with the same command, resumes exactly."""
    root, splits = data
    save = tmp_path / "killed"
    train_args = ["--config", "configs/demo.yaml", *tiny_overrides(root, splits, save),
                  "train.checkpoint_interval=3"]
    killed = subprocess.run([sys.executable, "tests/kill_at.py", *map(str, KILL_POINTS[where]), "--", *train_args],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    partial = load_own_checkpoint(save / "latest.pth")
    assert 0 < partial["iteration"] < 8
    assert bool(list(save.glob(".latest.pth.*.tmp"))) == (where == "mid-save")

    done = subprocess.run([sys.executable, "train.py", *train_args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed from {save / 'latest.pth'} at iteration {partial['iteration']}" in done.stderr + done.stdout
    resumed = load_own_checkpoint(save / "latest.pth")
    assert_same_weights(uninterrupted, resumed)
    assert resumed["best"] == uninterrupted["best"]
    assert not list(save.glob(".*.tmp"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args: str, max_restarts: int = 0) -> subprocess.CompletedProcess:
    """Two CPU processes under torchrun (gloo), one thread each, launched as scripts/train.sh launches them."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "--max-restarts", str(max_restarts), *args]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


@slow
def test_two_processes_under_torchrun_train_and_survive_a_killed_rank(data, tmp_path):
    """torchrun with gloo on the CPU: DDP trains, evaluation is sharded, rank 0 alone writes the run; a rank
    killed mid-step is restarted by torchrun (--max-restarts) and the run ends as if nothing had happened."""
    root, splits = data
    save = tmp_path / "ddp"
    done = torchrun("train.py", "--config", "configs/demo.yaml", *tiny_overrides(root, splits, save))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "global batch 4 = 2 process(es) x 2 crops x 1 accumulated" in (save / "train.log").read_text()
    full = load_own_checkpoint(save / "latest.pth")
    # 8 unlabelled items over 2 processes with 2 per batch: 2 iterations per epoch, 4 in all.
    assert full["iters_per_epoch"] == 2 and full["iteration"] == 4

    save = tmp_path / "ddp_killed"
    done = torchrun("tests/kill_at.py", "step", "4", "--rank", "1", "--", "--config", "configs/demo.yaml",
                    *tiny_overrides(root, splits, save), "train.checkpoint_interval=1", max_restarts=1)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {save / 'latest.pth'} at iteration 3" in (save / "train.log").read_text()
    resumed = load_own_checkpoint(save / "latest.pth")
    assert_same_weights(full, resumed)
    assert resumed["best"] == full["best"]


@slow
def test_two_processes_of_batch_one_train_like_one_process_of_batch_two(data, tmp_path):
    """Rank r takes global positions r, r + 2, ... and DDP averages the ranks' gradients, so the global batch
    decides where that holds: no per-process random draws (supervised: no CutMix partner, no channel
    dropout) and as many valid pixels on every process (no random downscaling, hence no padding, since
    each process divides its loss by its own count of valid pixels, as the reference does)."""
    root, splits = data
    same_pixels = "augment.scale_range=[1.0, 1.0]"
    one = tmp_path / "one"
    assert run(data, one, "train.batch_size=2", same_pixels, method="supervised", epochs=1) == 0
    two = tmp_path / "two"
    done = torchrun("train.py", "--config", "configs/demo.yaml",
                    *tiny_overrides(root, splits, two, "supervised", epochs=1), "train.batch_size=1", same_pixels)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = load_own_checkpoint(one / "latest.pth"), load_own_checkpoint(two / "latest.pth")
    assert a["iteration"] == b["iteration"] == 4
    for key in ("model", "model_ema"):
        for name in a[key]:
            # Equal up to the order of float additions (one batch mean vs the mean of two), which AdamW turns
            # into up to ~2e-5 where a gradient is near zero; other batches move weights by ~5e-3 here.
            torch.testing.assert_close(a[key][name], b[key][name], atol=1e-4, rtol=0,
                                       msg=lambda m, key=key, name=name: f"{key}.{name}: {m}")
    # The logged losses are the mean over the processes, so the two runs log the same curve.
    def logged(run_dir):
        lines = (run_dir / "train.log").read_text().splitlines()
        return [float(line.split(" loss ")[1].split(",")[0]) for line in lines
                if "iteration " in line and " loss " in line]

    assert len(logged(one)) == 2 and logged(two) == pytest.approx(logged(one), rel=1e-4)


@slow
def test_a_nonfinite_loss_before_any_checkpoint_does_not_name_one(data, tmp_path, monkeypatch):
    original = train.train_step

    def poisoned(state, cfg, micro, rank=0):
        return {**original(state, cfg, micro, rank), "loss": torch.tensor(float("inf"))}

    monkeypatch.setattr(train, "train_step", poisoned)
    with pytest.raises(train.NonFiniteLoss, match="no checkpoint was written yet") as info:
        run(data, tmp_path / "nan", "train.log_interval=1", epochs=1)
    assert "latest.pth" not in str(info.value)


def test_resume_restores_the_iteration_so_schedule_ema_and_draws_go_on_where_they_stopped(tmp_path):
    """In-process and fast: three steps, a checkpoint, a new trainer resumed from it; its next step equals the
    uninterrupted trainer's bit for bit (lr, EMA ratio and the step's random draws all follow the iteration)."""
    from scripts.costs import step_batch
    from tests.train_fixtures import step_trainer
    from util.run import Progress, resume_training, save_checkpoint

    full = step_trainer("cpu", "train.method=unimatch_v2")
    batch = step_batch(full)
    for _ in range(3):
        full.run(dict(batch))
    save_checkpoint(tmp_path / "latest.pth", full.state, 0, 1, Progress("student"), 0.0, full.cfg, {})
    resumed = step_trainer("cpu", "train.method=unimatch_v2")
    resume_training(tmp_path / "latest.pth", resumed.state, resumed.cfg, 1, Progress("student"), {})
    assert resumed.iteration == 3
    full.run(dict(batch))
    resumed.run(dict(batch))
    assert_same_weights({"model": full.model.state_dict(), "model_ema": full.ema.state_dict()},
                        {"model": resumed.model.state_dict(), "model_ema": resumed.ema.state_dict()})


@slow
def test_the_logged_mfu_is_model_flops_utilisation_of_the_first_steps_counted_flops(data, tmp_path, monkeypatch):
    """Where the GPU's peak is known (here: pretended), the trainer counts its first step's FLOPs and logs MFU
    through util.flops.model_flops_utilisation at every log point."""
    calls = []

    def recorded(flops, seconds, peak):
        value = model_flops_utilisation(flops, seconds, peak)
        calls.append((flops, peak, value))
        return value

    monkeypatch.setattr(train, "device_peak_tflops", lambda device: 2.0)
    monkeypatch.setattr(train, "model_flops_utilisation", recorded)
    save = tmp_path / "run"
    assert run(data, save, method="fixmatch", epochs=1) == 0
    assert len(calls) == 2  # 4 iterations, a log point every 2
    assert {flops for flops, _, _ in calls} == {calls[0][0]} and calls[0][0] > 0 and calls[0][1] == 2.0
    logged = [line for line in (save / "train.log").read_text().splitlines() if ", mfu " in line]
    assert [float(line.split(", mfu ")[1].split(",")[0]) for line in logged] == \
        [pytest.approx(value, rel=1e-3) for _, _, value in calls]


@slow
def test_config_yaml_keeps_describing_the_weights_beside_it_after_a_resume_with_other_settings(data, tmp_path):
    """--resume-changed records when the new settings began (config.yaml's header, progress.json, checkpoints);
    a finished run cannot take settings that no step would train under."""
    save = tmp_path / "run"
    assert run(data, save, method="supervised", epochs=1) == 0
    with pytest.raises(train.ConfigError, match="would train nothing; raise train.epochs"):
        run(data, save, "train.lr=1e-3", "--resume-changed", method="supervised", epochs=1)
    assert "train.lr" not in (save / "config.yaml").read_text().split("\n", 1)[0]
    assert run(data, save, "--resume-changed", method="supervised", epochs=2) == 0
    header = (save / "config.yaml").read_text().splitlines()[:2]
    assert header[1] == "# settings changed at iteration 4: train.epochs 1 -> 2"
    changes = json.loads((save / "progress.json").read_text())["settings_changes"]
    assert changes == [{"iteration": 4, "changes": {"train.epochs": [1, 2]}}]
    assert load_own_checkpoint(save / "latest.pth")["settings_changes"] == changes
