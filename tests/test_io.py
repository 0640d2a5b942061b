"""util.io: atomic writes of one or several files, the temporary names, and torch_load's refusals."""

import errno
import os
import pickle
from contextlib import contextmanager

import numpy as np
import pytest
import torch

import util.io
from util.errors import OutputError
from util.io import (
    atomic_path,
    atomic_paths,
    check_output_file,
    check_output_folder,
    is_temporary,
    save_png,
    temporary_path,
    torch_load,
    write_bytes,
    write_files,
    write_text,
)


def test_temporary_path_is_hidden_beside_the_target_and_names_the_process(tmp_path):
    assert temporary_path(tmp_path / "a.json") == tmp_path / f".a.json.{os.getpid()}.tmp"


def test_is_temporary_recognises_exactly_the_temporary_names():
    assert is_temporary(temporary_path("run/latest.pth")) and is_temporary(".x_1.png.123.tmp")
    for name in ("latest.pth", ".latest.pth", "a.png.tmp", ".a.png.tmp", ".a.png.12x.tmp", ".tmp", "notes.tmp"):
        assert not is_temporary(name), name


def test_files_written_together_appear_together_and_a_failure_leaves_the_old_ones(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    write_text(a, "old a")
    with atomic_paths([a, b]) as (ta, tb):
        ta.write_text("new a")
        tb.write_text("new b")
        assert a.read_text() == "old a" and not b.exists()  # nothing visible before the block ends
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    with pytest.raises(RuntimeError), atomic_paths([a, b]) as (ta, tb):
        ta.write_text("half")
        raise RuntimeError("rendering failed")
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]  # no temporary file left


def test_write_helpers_replace_whole_files(tmp_path):
    write_bytes(tmp_path / "x.bin", b"\x00\x01")
    write_text(tmp_path / "x.txt", "é\n")
    save_png(np.full((2, 3), 7, np.uint8), tmp_path / "x.png")
    with atomic_path(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"\x02")
    assert (tmp_path / "x.bin").read_bytes() == b"\x02" and (tmp_path / "x.txt").read_text("utf-8") == "é\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin", "x.png", "x.txt"]


class Foreign:
    """A class a pickle would have to import and construct."""


def test_torch_load_reads_tensors_refuses_code_and_takes_allowed_types(tmp_path):
    torch.save({"w": torch.arange(3)}, tmp_path / "ok.pth")
    assert torch.equal(torch_load(tmp_path / "ok.pth")["w"], torch.arange(3))
    torch.save({"w": Foreign()}, tmp_path / "code.pth")
    with pytest.raises(pickle.UnpicklingError):
        torch_load(tmp_path / "code.pth")
    assert isinstance(torch_load(tmp_path / "code.pth", allow=[Foreign])["w"], Foreign)


def test_a_folder_lock_refuses_a_second_holder_and_dies_with_its_holder(tmp_path):
    import fcntl

    from util.io import FolderLock

    def busy(pid: str) -> str:
        return f"held by process {pid}"

    with FolderLock(tmp_path, ".lock", busy):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(OutputError, match=rf"held by process {os.getpid()}"):
            FolderLock(tmp_path, ".lock", busy)
    assert not (tmp_path / ".lock").exists()
    # A holder that dies (its descriptor closed by the kernel) leaves the file but not the lock.
    fd = os.open(tmp_path / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.close(fd)
    with FolderLock(tmp_path, ".lock", busy):
        pass
    assert not (tmp_path / ".lock").exists()


def test_stale_temporaries_of_dead_writers_go_and_those_of_living_ones_stay(tmp_path):
    import subprocess
    import sys

    from util.io import remove_stale_temporaries, temporary_path

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".latest.pth.{int(dead.stdout)}.tmp"
    stale.write_bytes(b"half")
    alive = temporary_path(tmp_path / "best.pth")  # this process's: a writer still at work
    alive.write_bytes(b"half")
    (tmp_path / "latest.pth").write_bytes(b"whole")
    assert remove_stale_temporaries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, "latest.pth"])


def test_a_name_over_the_file_systems_limit_is_one_output_error_for_folders_and_files(tmp_path):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    fits = "a" * limit
    assert check_output_folder(tmp_path / fits / "b", "--out") == tmp_path / fits / "b"
    for path in (tmp_path / ("a" * (limit + 1)) / "b", tmp_path / "b" / ("é" * (limit // 2 + 1))):
        with pytest.raises(OutputError, match=rf"^--out: the name '.*' is \d+ bytes, more than the {limit} "):
            check_output_folder(path, "--out")
    # A file is first written under its temporary name, which is longer: the room left is what counts.
    room = limit - (len(temporary_path("x").name) - 1)
    assert check_output_file(tmp_path / ("f" * room), "--out") == tmp_path / ("f" * room)
    with pytest.raises(OutputError, match=rf"is {room + 1} bytes, more than the {room} .*temporary name"):
        check_output_file(tmp_path / ("f" * (room + 1)), "--out")


def test_a_path_over_the_file_systems_limit_is_one_output_error(tmp_path):
    deep = tmp_path.joinpath(*["d" * 200] * (os.pathconf(tmp_path, "PC_PATH_MAX") // 200 + 1))
    with pytest.raises(OutputError, match=r"^save_path: the path is \d+ bytes long, more than the"):
        check_output_folder(deep, "save_path")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_files_written_together_fail_as_one_line_and_leave_the_old_ones(tmp_path, monkeypatch, code):
    assert write_files(tmp_path / "old", {"a.md": b"new", "b.json": b"{}"}) == [tmp_path / "old" / "a.md",
                                                                                tmp_path / "old" / "b.json"]

    @contextmanager
    def failing(targets):
        raise OSError(code, os.strerror(code))
        yield  # a generator: what contextmanager takes

    monkeypatch.setattr(util.io, "atomic_paths", failing)
    with pytest.raises(OutputError) as e:
        write_files(tmp_path / "old", {"a.md": b"newer", "b.json": b"[]"})
    assert str(e.value) == (f"could not write a.md, b.json into {tmp_path / 'old'}: {os.strerror(code)}; none of "
                            f"them was written")
    assert (tmp_path / "old" / "a.md").read_bytes() == b"new" and (tmp_path / "old" / "b.json").read_bytes() == b"{}"
    with pytest.raises(OutputError):
        write_files(tmp_path / "new" / "folder", {"a.md": b""})
    assert not (tmp_path / "new" / "folder").exists()  # a folder made for the files goes with them
