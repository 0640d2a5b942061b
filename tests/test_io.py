"""util.io: atomic writes of one or several files, the temporary names, and torch_load's refusals."""

import os
import pickle

import numpy as np
import pytest
import torch

from util.io import (
    atomic_path,
    atomic_paths,
    is_temporary,
    save_png,
    temporary_path,
    torch_load,
    write_bytes,
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
