"""Shared by the tests: the project's packages import from the repository root, as the entry points do."""

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import methods  # noqa: E402, F401  (registers the training methods, as every entry point does)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with more slow tests first (a rough stand-in for the longest), the order of their tests unchanged: the
    workers (pytest-xdist, a module to a worker) take the long modules early rather than one of them last."""
    def module(item: pytest.Item) -> str:
        return item.nodeid.split("::")[0]

    slow = Counter(module(item) for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[module(item)])


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


@pytest.fixture(autouse=True, scope="session")
def onnx_cache_of_this_session(tmp_path_factory):
    """Graphs exported for ONNX Runtime (eval/backends.py) go to a folder of this session, never to the user's
    cache; the entry points the tests start as processes inherit it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RS_MTDF_CACHE", str(tmp_path_factory.mktemp("rs_mtdf_cache")))
        yield


@pytest.fixture(autouse=True)
def torch_unless_asked(monkeypatch):
    """`--backend auto` runs PyTorch in tests run in this process: exporting a graph for ONNX Runtime takes seconds,
    and only the tests of the backends need one (tests/test_backends.py, which shares one export and overrides
    this fixture to see the real choice)."""
    monkeypatch.setattr("eval.backends.CPU_DEFAULT", {"original": "torch", "sliding_window": "torch"})
