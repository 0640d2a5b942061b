"""Checkpoint files: atomic replacement, safe loading, and one-line errors for broken files."""

import pytest
import torch

from util.checkpoint import atomic_save, load_own_checkpoint
from util.errors import OutputError, WeightsError


def test_saved_checkpoint_loads_back_equal(tmp_path):
    state = {"model": {"w": torch.arange(4.0)}, "epoch": 3, "config": {"train": {"lr": 1e-4}}}
    atomic_save(state, tmp_path / "latest.pth")
    loaded = load_own_checkpoint(tmp_path / "latest.pth")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]   # no temporary file left


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "latest.pth"
    atomic_save({"model": {"w": torch.zeros(2)}, "epoch": 1}, path)
    before = path.read_bytes()

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(WeightsError, match="No space left on device.*previous file is unchanged"):
        atomic_save({"model": {"w": torch.ones(2)}, "epoch": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]


@pytest.mark.parametrize("keep", [0, 10, 300, -1])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_truncated_checkpoint_is_called_damaged_by_every_loader(tmp_path, keep, legacy):
    # Every loader of .pth files: ours (resume, run folders), eval/predict/export's, and the weight files'.
    from model.convert import read_checkpoint
    from model.weights import load_tensors

    path = tmp_path / "latest.pth"
    torch.save({"model": {"w": torch.zeros(1000)}, "epoch": 1}, path, _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    for load in (load_own_checkpoint, read_checkpoint, lambda p: load_tensors(p, "model.pretrained")):
        with pytest.raises(WeightsError) as e:
            load(path)
        message = str(e.value)
        assert "damaged or incomplete" in message and str(path) in message, message
        assert "not a checkpoint" not in message and "\n" not in message


def test_a_whole_file_of_another_kind_is_not_called_damaged(tmp_path):
    from model.convert import read_checkpoint

    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    for load in (load_own_checkpoint, read_checkpoint):
        with pytest.raises(WeightsError) as e:
            load(path)
        assert "damaged" not in str(e.value) and "not a checkpoint" in str(e.value)


class Foreign:
    """Any class a pickle would have to import and construct."""


def test_a_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "foreign.pth"
    torch.save({"model": Foreign()}, path)
    with pytest.raises(WeightsError, match="foreign.pth"):
        load_own_checkpoint(path)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(WeightsError, match="checkpoint not found: .*nope.pth"):
        load_own_checkpoint(tmp_path / "nope.pth")


FULL_DISK = """
import resource, signal, sys, torch
sys.path.insert(0, {repo!r})
from util.checkpoint import atomic_save
from util.cli import run_main
# A file-size limit makes writes past 64 KiB fail as a full disk does (EFBIG instead of ENOSPC).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
run_main(lambda: atomic_save({{"model": {{"w": torch.ones(100_000)}}}}, {path!r}))
"""


@pytest.mark.slow
def test_a_real_write_failure_is_one_line_and_removes_its_temporary_file(tmp_path):
    """Not a patched OSError: the kernel refuses the bytes (RLIMIT_FSIZE), as a full disk would."""
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "latest.pth"
    atomic_save({"model": {"w": torch.zeros(2)}, "epoch": 1}, path)
    before = path.read_bytes()
    script = FULL_DISK.format(repo=str(Path(__file__).resolve().parents[1]), path=str(path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: could not write checkpoint {path}") and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]


@pytest.mark.slow
def test_readers_never_see_a_half_written_checkpoint_while_another_process_rewrites_it(tmp_path):
    """A writer process replaces latest.pth over and over; every read in between gets one whole version."""
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "latest.pth"
    atomic_save({"model": {"w": torch.full((50_000,), 0.0)}, "version": 0}, path)
    writer = subprocess.Popen([sys.executable, "-c", f"""
import sys, torch
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from util.checkpoint import atomic_save
for v in range(1, 41):
    atomic_save({{"model": {{"w": torch.full((50_000,), float(v))}}, "version": v}}, {str(path)!r})
"""])
    versions = set()
    while writer.poll() is None:
        ckpt = load_own_checkpoint(path)
        w = ckpt["model"]["w"]
        assert torch.equal(w, torch.full_like(w, float(ckpt["version"])))
        versions.add(ckpt["version"])
    assert writer.returncode == 0
    assert load_own_checkpoint(path)["version"] == 40
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]


def test_a_run_folder_is_locked_while_its_run_lives(tmp_path):
    from util.run import RunFolder

    first = RunFolder(tmp_path)
    first.open()
    with pytest.raises(OutputError, match="in use by another training run"):
        RunFolder(tmp_path).open()
    first.close()
    assert not (tmp_path / ".lock").exists()
    second = RunFolder(tmp_path)
    second.open()
    second.close()


def test_a_sigkilled_run_leaves_no_stale_lock(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from util.run import RunFolder

    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from util.run import RunFolder
RunFolder({str(tmp_path)!r}).open()
print("locked", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(OutputError, match=f"pid {holder.pid}"):
        RunFolder(tmp_path).open()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    time.sleep(0.05)
    folder = RunFolder(tmp_path)
    folder.open()
    folder.close()
