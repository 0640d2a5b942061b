"""scripts/reproduce.sh: every method x split x seed trained, scored on test, tabulated; re-runs skip finished work."""

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


def test_killed_part_way_and_run_again_it_finishes_the_table_without_retraining_finished_runs(tmp_path):
    root = tmp_path / "data"
    splits = write_tiny_dataset(root)
    # The tiny runs' settings, less the method and save path that reproduce.sh sets per run.
    overrides = [o for o in tiny_overrides(root, splits, tmp_path / "unused", "fixmatch", epochs=3)
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
    assert json.loads((first / "progress.json").read_text())["finished"]
    trained_at = (first / "latest.pth").stat().st_mtime_ns
    scored_at = next(first.glob("eval_best_test_*/metrics.json")).stat().st_mtime_ns

    proc = reproduce(exp, overrides)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "finished before: not retrained" in out
    assert (first / "latest.pth").stat().st_mtime_ns == trained_at
    assert next(first.glob("eval_best_test_*/metrics.json")).stat().st_mtime_ns == scored_at
    assert json.loads((second / "progress.json").read_text())["finished"]

    rows = json.loads((exp / "report" / "report.json").read_text())["rows"]
    assert sorted(r["method"] for r in rows) == ["fixmatch", "supervised"]
    for row in rows:
        assert row["test_miou"]["n"] == 1, row
    assert (exp / "report" / "report.md").is_file() and (exp / "report" / "report.png").is_file()


def test_train_sh_exits_with_the_trainers_status_and_ends_with_its_one_line_error(tmp_path):
    env = {**os.environ, "DATASET": "demo", "SAVE_PATH": str(tmp_path / "run")}
    done = subprocess.run(["sh", "scripts/train.sh", "1", str(free_port()), f"dataset.splits={tmp_path / 'none'}"],
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
