"""Shared by the tests: the project's packages import from the repository root, as the entry points do."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import methods  # noqa: E402, F401  (registers the training methods, as every entry point does)


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny tensors on a shared 2-core machine run faster so, and every call reduces in
    the same order (a module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def close_leaked_progress_bars():
    """Close the tqdm bars a failed in-process run left open: they would shift every later bar (tqdm
    positions) and so the lines a later test sees (opted into like one_thread)."""
    yield
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


@pytest.fixture
def dead_pid() -> int:
    """The process id of a process that has exited: what a killed writer leaves in its temporary files' names
    (this test process's own id stands for a living writer)."""
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid
