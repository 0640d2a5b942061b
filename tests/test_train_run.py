"""train.py end to end on tiny models: every method runs, outputs are complete, resume is exact."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import train
from tests.train_fixtures import REPO, tiny_overrides, write_tiny_dataset
from util.checkpoint import load_own_checkpoint


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


@pytest.mark.parametrize("method", ["supervised", "fixmatch", "unimatch_v2", "rs_mtdf"])
def test_every_method_trains_and_writes_a_complete_run(data, tmp_path, method):
    save = tmp_path / method
    assert run(data, save, method=method, epochs=1) == 0
    assert {"config.yaml", "train.log", "latest.pth", "best.pth", "tb"} <= {p.name for p in save.iterdir()}
    ckpt = load_own_checkpoint(save / "latest.pth")
    assert ckpt["iteration"] == 4 and ckpt["epoch"] == 1
    assert not any(k.startswith(("teacher", "dino_teacher", "clip_teacher")) for k in ckpt["model"])
    assert ckpt["config"]["train"]["method"] == method
    assert 0.0 <= ckpt["best"]["ema"] <= 1.0


def test_stopped_run_resumes_to_the_same_weights_as_an_uninterrupted_one(data, tmp_path, monkeypatch):
    assert run(data, tmp_path / "full") == 0
    full = load_own_checkpoint(tmp_path / "full" / "latest.pth")

    # Stop (as on SIGTERM) after 3 of 8 iterations, mid-epoch; then run the same command again.
    original = train.Trainer.should_stop
    monkeypatch.setattr(train.Trainer, "should_stop", lambda self: self.iteration == 3 or original(self))
    assert run(data, tmp_path / "resumed") == 0
    stopped = load_own_checkpoint(tmp_path / "resumed" / "latest.pth")
    assert stopped["iteration"] == 3
    monkeypatch.setattr(train.Trainer, "should_stop", original)
    assert run(data, tmp_path / "resumed") == 0
    resumed = load_own_checkpoint(tmp_path / "resumed" / "latest.pth")
    assert resumed["iteration"] == full["iteration"] == 8
    assert_same_weights(full, resumed)
    assert resumed["best"] == full["best"]


def test_nonfinite_loss_stops_naming_the_iteration_and_keeps_the_last_checkpoint(data, tmp_path, monkeypatch):
    save = tmp_path / "nan"
    assert run(data, save, epochs=1) == 0
    before = (save / "latest.pth").read_bytes()
    original = train.Trainer.step

    def poisoned(self, batch):
        losses = original(self, batch)
        if self.iteration == 5:
            losses["loss_dis"] = torch.tensor(float("nan"))
            self.nonfinite[-1] = torch.ones_like(self.nonfinite[-1])
            self.loss_names = list(losses)
        return losses

    monkeypatch.setattr(train.Trainer, "step", poisoned)
    with pytest.raises(train.NonFiniteLoss, match="iteration 5"):
        run(data, save, "train.epochs=2")
    assert (save / "latest.pth").read_bytes() == before


def test_sigkill_at_any_moment_then_restart_ends_with_identical_weights(data, tmp_path):
    """A real process killed with SIGKILL mid-run (after its first iteration checkpoint) resumes exactly."""
    root, splits = data
    assert run(data, tmp_path / "full") == 0
    full = load_own_checkpoint(tmp_path / "full" / "latest.pth")

    save = tmp_path / "killed"
    cmd = [sys.executable, "train.py", "--config", "configs/demo.yaml",
           *tiny_overrides(root, splits, save), "train.checkpoint_interval=1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (save / "latest.pth").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = load_own_checkpoint(save / "latest.pth")
    assert partial["iteration"] < 8
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_weights(full, load_own_checkpoint(save / "latest.pth"))


def test_two_processes_under_torchrun_keep_identical_replicas(data, tmp_path):
    """torchrun with gloo on the CPU: DDP trains, evaluation is sharded, rank 0 alone writes the run."""
    root, splits = data
    save = tmp_path / "ddp"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "train.py", "--config", "configs/demo.yaml", *tiny_overrides(root, splits, save, epochs=1)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (save / "train.log").read_text()
    assert "parameters identical on all 2 processes" in log
    assert "2 process(es)" in log
    ckpt = load_own_checkpoint(save / "latest.pth")
    # 8 unlabelled items over 2 processes with 2 per batch: 2 iterations per epoch.
    assert ckpt["iteration"] == ckpt["iters_per_epoch"] == 2
