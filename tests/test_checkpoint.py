"""Checkpoint files: atomic replacement, safe loading, and one-line errors for broken files."""

import pytest
import torch

from util.checkpoint import atomic_save, load_own_checkpoint
from util.errors import WeightsError


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


def test_truncated_checkpoint_is_a_one_line_error(tmp_path):
    path = tmp_path / "latest.pth"
    atomic_save({"model": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(WeightsError, match="truncated or not a checkpoint") as e:
        load_own_checkpoint(path)
    assert "\n" not in str(e.value)


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
