"""scripts/reproduce.sh and scripts/train.sh: every method x split x seed trained, scored on test, tabulated;
re-runs skip only work finished with the same settings; overrides reach the run in one order everywhere; a
SIGTERM to the whole process group saves and exits 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.train_fixtures import REPO, tiny_overrides, write_tiny_dataset
from util.checkpoint import load_own_checkpoint

# Real processes, torchrun and kills: minutes on 2 cores (`pytest -m 'not slow'` leaves them out).
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reproduce(exp: Path, overrides: list[str]) -> subprocess.Popen:
    env = {**os.environ, "CONFIG": "configs/demo.yaml", "EXP": str(exp), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(["sh", "scripts/reproduce.sh", "loveda", "1", str(free_port()), "supervised,fixmatch",
                             "10", "0", *overrides], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> dict:
    """A table of two tiny runs (supervised, then FixMatch) killed while the second trains, then run again to the
    end: what the first call had finished, when, and the second call's output (two tests read it)."""
    tmp_path = tmp_path_factory.mktemp("table")
    root = tmp_path / "data"
    splits = write_tiny_dataset(root)
    # The tiny runs' settings, less the method and save path that reproduce.sh sets per run.
    overrides = [o for o in tiny_overrides(root, splits, tmp_path / "unused", "fixmatch", epochs=2)
                 if not o.startswith(("train.method=", "save_path="))]
    exp = tmp_path / "exp"
    first, second = exp / "supervised/10/seed0", exp / "fixmatch/10/seed0"

    proc = reproduce(exp, overrides)
    deadline = time.monotonic() + 240
    while not (second / "config.yaml").exists():  # the second run has started training
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the second run never started"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = {"first_finished": json.loads((first / "progress.json").read_text())["finished"],
              "trained_at": (first / "latest.pth").stat().st_mtime_ns,
              "scored_at": next(first.glob("eval_best_test_*/metrics.json")).stat().st_mtime_ns}
    proc = reproduce(exp, overrides)
    out, _ = proc.communicate(timeout=300)
    return {**killed, "status": proc.returncode, "out": out, "exp": exp, "first": first, "second": second,
            "overrides": overrides, "splits": splits}


def test_killed_part_way_and_run_again_it_finishes_the_table_without_retraining_finished_runs(table):
    first, exp = table["first"], table["exp"]
    assert table["first_finished"]
    assert table["status"] == 0, table["out"]
    assert "finished before with these settings: not retrained" in table["out"]
    assert (first / "latest.pth").stat().st_mtime_ns == table["trained_at"]
    assert next(first.glob("eval_best_test_*/metrics.json")).stat().st_mtime_ns == table["scored_at"]
    assert json.loads((table["second"] / "progress.json").read_text())["finished"]

    rows = json.loads((exp / "report" / "report.json").read_text())["rows"]
    assert sorted(r["method"] for r in rows) == ["fixmatch", "supervised"]
    for row in rows:
        assert row["test_miou"]["n"] == 1, row
    assert (exp / "report" / "report.md").is_file() and (exp / "report" / "report.png").is_file()


def test_train_sh_exits_with_the_trainers_status_and_ends_with_its_one_line_error(tmp_path):
    env = {**os.environ, "DATASET": "demo", "SAVE_PATH": str(tmp_path / "run")}
    done = subprocess.run(["sh", "scripts/train.sh", "1", str(free_port()), f"dataset.lists={tmp_path / 'none'}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: split file not found: {tmp_path / 'none'}")


def test_reproduce_refuses_a_seed_that_is_not_a_number_before_any_run(tmp_path):
    env = {**os.environ, "EXP": str(tmp_path / "exp")}
    done = subprocess.run(["sh", "scripts/reproduce.sh", "demo", "1", "29500", "fixmatch", "10", "0,x"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.strip() == (
        "error: seed 'x' is not a whole number (seeds are comma-separated, e.g. 0,1,2)")
    assert not (tmp_path / "exp").exists()


def test_reproduce_refuses_missing_weight_files_before_any_run(tmp_path):
    """A table of runs that could only fail (every weight file missing) is refused before the first launch."""
    splits = write_tiny_dataset(tmp_path / "data")
    env = {**os.environ, "EXP": str(tmp_path / "exp"), "CONFIG": "configs/demo.yaml"}
    done = subprocess.run(["sh", "scripts/reproduce.sh", "demo", "1", "29500", "fixmatch", "10", "0",
                           f"dataset.root={tmp_path / 'data'}", f"dataset.lists={splits}",
                           f"model.pretrained={tmp_path / 'dinov2_small.pth'}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("error: model.pretrained: ")
    assert "dinov2_small.pth" in done.stderr and not (tmp_path / "exp").exists()


def test_a_rerun_with_another_setting_is_refused_before_anything_runs(table):
    """The finished table's command with train.epochs=3 instead of 2, or on a labelled list that changed since: not
    'finished before'. (The last test to read the table: it rewrites a list.)"""
    exp, run, overrides = table["exp"], table["first"], table["overrides"]
    env = {**os.environ, "CONFIG": "configs/demo.yaml", "EXP": str(exp), "OMP_NUM_THREADS": "1"}
    cmd = ["sh", "scripts/reproduce.sh", "loveda", "1", str(free_port()), "supervised,fixmatch", "10", "0"]
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    changed = [o.replace("train.epochs=2", "train.epochs=3") for o in overrides]
    done = subprocess.run(cmd + changed, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"error: {run} holds a run with other settings (train.epochs=2 (this config: 3)); "
                                   f"it would not be retrained and its scores would enter the table: remove or move "
                                   f"it, or set EXP to another folder for runs with these settings")
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before
    # The same settings on a labelled list rewritten since (a resplit with another seed): refused as well.
    labeled = table["splits"] / "10" / "labeled.txt"
    labeled.write_text("".join(labeled.read_text().splitlines(keepends=True)[:-1]))
    done = subprocess.run(cmd + overrides, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and f"error: {run} holds a run with other settings (labeled.txt=" in done.stderr
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_train_sh_passes_overrides_in_one_order_and_the_run_folder_follows_the_final_settings(tmp_path):
    """SPLIT and METHOD from the environment are overrides before the command line's: the command line wins, and
    save_path's {method}/{split} name the run that is trained."""
    root = tmp_path / "data"
    splits = write_tiny_dataset(root)
    (splits / "1").mkdir()
    for name in ("labeled.txt", "unlabeled.txt"):
        (splits / "1" / name).write_text((splits / "10" / name).read_text())
    overrides = [o for o in tiny_overrides(root, splits, tmp_path / "unused", "fixmatch", epochs=1)
                 if not o.startswith("save_path=")]
    env = {**os.environ, "DATASET": "demo", "SPLIT": "10", "METHOD": "supervised", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["sh", "scripts/train.sh", "1", str(free_port()), *overrides, "dataset.split=1",
                           f"save_path={tmp_path}/runs/{{method}}/{{split}}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    run = tmp_path / "runs" / "fixmatch" / "1"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["fixmatch"]
    saved = json.loads((run / "progress.json").read_text())
    assert (saved["method"], saved["split"], saved["finished"]) == ("fixmatch", "1", True)
    assert (run / "out.log").is_file()


def test_sigterm_to_the_process_group_saves_and_exits_0(tmp_path):
    """What timeout, SLURM and Kubernetes send: every process of the group, DataLoader workers included, gets
    SIGTERM at once. The workers leave it to the trainers, which agree on an iteration and save; train.sh, its
    launcher and its log survive it, and nothing prints a traceback."""
    root = tmp_path / "data"
    splits = write_tiny_dataset(root, n_unlabeled=40)
    save = tmp_path / "run"
    env = {**os.environ, "DATASET": "demo", "SAVE_PATH": str(save), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(["sh", "scripts/train.sh", "2", str(free_port()),
                             *tiny_overrides(root, splits, save, "fixmatch", epochs=100), "train.num_workers=1"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while not (save / "progress.json").exists() or json.loads((save / "progress.json").read_text())["epoch"] < 1:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    log = (save / "out.log").read_text()
    stopped = [line for line in log.splitlines() if "stopped by SIGTERM at iteration" in line]
    assert stopped, log[-3000:]
    iteration = int(stopped[-1].split("at iteration ")[1].split(";")[0])
    assert load_own_checkpoint(save / "latest.pth")["iteration"] == iteration
    assert "Traceback" not in out and "run the same command to resume" in out.splitlines()[-1]
