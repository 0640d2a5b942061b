"""Stops with real processes and real signals: Ctrl-C and SIGTERM under a plain `python train.py`, under
scripts/train.sh (torchrun's launcher), and two processes launched as SLURM launches them; and, where a SLURM
cluster answers, sbatch itself. Every stop saves, exits with its documented status, prints no traceback, and
resumes exactly."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.train_fixtures import REPO, tiny_overrides, write_tiny_dataset
from util.checkpoint import load_own_checkpoint

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return root, write_tiny_dataset(root, n_unlabeled=16)


def argv(data, save: Path, *extra: str) -> list[str]:
    root, splits = data
    return ["--config", "configs/demo.yaml", *tiny_overrides(root, splits, save, "fixmatch", epochs=3),
            "train.checkpoint_interval=1", *extra]


def wait_for(path: Path, proc: subprocess.Popen | None = None, timeout: float = 240) -> None:
    """Until `path` exists (the run has made a step), or fail if the process ended first."""
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc is None or proc.poll() is None, proc.communicate()[1][-2000:] if proc else ""
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def same_weights(a: Path, b: Path) -> None:
    x, y = load_own_checkpoint(a), load_own_checkpoint(b)
    assert x["iteration"] == y["iteration"]
    for key in ("model", "model_ema"):
        for name in x[key]:
            assert torch.equal(x[key][name], y[key][name]), f"{key}.{name}"


# SIGTERM to `python train.py`: the two SLURM tasks below, each a `python train.py` stopped as a requeue stops it.
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGUSR1, 0)])
def test_a_signal_to_python_train_py_saves_at_the_end_of_the_step_and_exits_cleanly(data, tmp_path, signum, status):
    save = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train.py", *argv(data, save)], cwd=REPO, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(save / "latest.pth", proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == status, err[-2000:]
    assert "Traceback" not in err + out
    progress = json.loads((save / "progress.json").read_text())
    assert not progress["finished"] and progress["stopped_by"] == signal.Signals(signum).name
    assert load_own_checkpoint(save / "latest.pth")["iteration"] == progress["iteration"]
    assert not list(save.glob(".*.tmp"))


def test_ctrl_c_under_train_sh_stops_every_process_with_130_and_no_traceback(data, tmp_path):
    """Ctrl-C reaches the whole foreground process group: the script, the launcher and both trainers."""
    save = tmp_path / "run"
    root, splits = data
    proc = subprocess.Popen(["sh", "scripts/train.sh", "2", str(free_port()), *argv(data, save)[2:]], cwd=REPO,
                            env={**ENV, "CONFIG": "configs/demo.yaml"}, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(save / "latest.pth", proc)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out and "SignalException" not in out
    progress = json.loads((save / "progress.json").read_text())
    assert progress["stopped_by"] == "SIGINT" and not progress["finished"]
    assert "stopped by SIGINT" in (save / "out.log").read_text()


def slurm_env(rank: int, port: int, restart: int = 0) -> dict[str, str]:
    return {**ENV, "SLURM_JOB_ID": "4711", "SLURM_STEP_ID": "0", "SLURM_PROCID": str(rank), "SLURM_NTASKS": "2",
            "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": str(rank), "SLURM_STEP_NODELIST": "localhost",
            "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_RESTART_COUNT": str(restart), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "RS_MTDF_TASKS": "2"}


def slurm_step(data, save: Path, restart: int = 0) -> list[subprocess.Popen]:
    """Two trainers as `srun` starts them: one per task, their ranks in SLURM's variables."""
    port = free_port()
    return [subprocess.Popen([sys.executable, "train.py", *argv(data, save)], cwd=REPO, env=slurm_env(rank, port,
                             restart), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for rank in (0, 1)]


def finish(procs: list[subprocess.Popen]) -> list[str]:
    errs = []
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        errs.append(err)
    return errs


def test_two_slurm_tasks_requeued_mid_run_end_with_the_weights_of_an_uninterrupted_run(data, tmp_path):
    whole = tmp_path / "whole"
    errs = finish(slurm_step(data, whole))
    assert "global batch 4 = 2 process(es) x 2 crops x 1 accumulated" in (whole / "train.log").read_text()
    assert not any("Traceback" in err for err in errs)

    requeued = tmp_path / "requeued"
    procs = slurm_step(data, requeued)
    wait_for(requeued / "latest.pth", procs[0])
    for proc in procs:  # what SLURM does on `scontrol requeue`: SIGTERM to every task
        proc.send_signal(signal.SIGTERM)
    errs = finish(procs)
    assert not any("Traceback" in err for err in errs)
    stopped = json.loads((requeued / "progress.json").read_text())
    assert not stopped["finished"] and stopped["stopped_by"] == "SIGTERM"
    assert load_own_checkpoint(requeued / "latest.pth")["iteration"] == stopped["iteration"]
    assert not list(requeued.glob(".*.tmp"))
    finish(slurm_step(data, requeued, restart=1))
    assert json.loads((requeued / "progress.json").read_text())["finished"]
    same_weights(whole / "latest.pth", requeued / "latest.pth")


# ----------------------------------------------------------------------------------------------------------
# A real SLURM cluster, where one answers (tests/slurm_cluster.sh starts a one-node cluster on Debian as root)


def idle_slurm() -> str | None:
    """Why the real-cluster tests cannot run here, or None."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "no SLURM here (sbatch, sinfo): tests/slurm_cluster.sh starts a one-node cluster"
    done = subprocess.run(["sinfo", "-h", "-t", "idle", "-o", "%n"], capture_output=True, text=True)
    return None if done.returncode == 0 and done.stdout.strip() else "no idle SLURM node"


def job_state(job: str) -> str:
    done = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
    return next((w.split("=", 1)[1] for w in done.stdout.split() if w.startswith("JobState=")), "GONE")


def wait_job(job: str, until: tuple[str, ...] = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "GONE"),
             timeout: float = 900) -> str:
    end = time.monotonic() + timeout
    while (state := job_state(job)) not in until:
        assert time.monotonic() < end, f"job {job} still {state}"
        time.sleep(2)
    return state


@pytest.mark.skipif(idle_slurm() is not None, reason=idle_slurm() or "")
def test_sbatch_trains_the_demo_as_two_ranks_and_a_requeue_resumes_it_to_the_end(data, tmp_path):
    root, splits = data
    save, out = tmp_path / "run", tmp_path / "job.out"
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/sh\nexport OMP_NUM_THREADS=1\nDATASET=demo sh {REPO}/scripts/slurm_train.sh "
                      f"dataset.root={root} dataset.lists={splits} save_path={save} train.epochs=6 "
                      f"train.num_workers=0 train.checkpoint_interval=1\n")
    submitted = subprocess.run(["sbatch", "--parsable", "--ntasks=2", "--requeue", f"--output={out}",
                                "--open-mode=append", str(script)], capture_output=True, text=True, env=ENV,
                               cwd=tmp_path, check=True)
    job = submitted.stdout.strip()
    wait_for(save / "latest.pth", timeout=600)
    subprocess.run(["scontrol", "requeue", job], check=True)
    wait_job(job, until=("PENDING",))
    assert wait_job(job) == "COMPLETED"
    log = out.read_text()
    assert "Traceback" not in log and "resumed from" in log and "stopped by SIGTERM" in log
    assert "2 process(es)" in (save / "train.log").read_text()
    assert json.loads((save / "progress.json").read_text())["finished"]


@pytest.mark.skipif(idle_slurm() is not None, reason=idle_slurm() or "")
def test_a_job_array_trains_a_small_table_and_the_dependent_job_writes_the_report(data, tmp_path):
    root, splits = data
    exp = tmp_path / "exp"
    done = subprocess.run(["sh", "scripts/slurm_reproduce.sh", "demo", "supervised,fixmatch", "10", "0",
                           f"dataset.root={root}", f"dataset.lists={splits}", "dataset.crop_size=42",
                           "train.epochs=1", "train.batch_size=2", "train.num_workers=0", "train.global_batch=null",
                           "teachers.clip.input_size=28", "distill.translator_hidden=16",
                           "train.supervised_protocol=same_iterations"],
                          cwd=REPO, env={**ENV, "CONFIG": "configs/demo.yaml", "EXP": str(exp),
                                         "SBATCH_ARGS": "--ntasks=1"}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    jobs = re.findall(r"submitted job (?:array )?(\d+)", done.stdout)
    assert len(jobs) == 2 and "2 run(s)" in done.stdout
    assert wait_job(jobs[1]) == "COMPLETED", next(exp.glob("slurm/report-*.out")).read_text()[-2000:]
    report = (exp / "report" / "report.md").read_text()
    assert "supervised" in report and "fixmatch" in report
    assert all(json.loads((exp / m / "10" / "seed0" / "progress.json").read_text())["finished"]
               for m in ("supervised", "fixmatch"))
