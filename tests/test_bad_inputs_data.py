"""Bad inputs of issue 15, items 8 and 9, through the real entry points: split lists and pixels as users have
them (train.py) and dataset.prepare on raw trees and output folders (in-process `run_main`, the checks of
tests/train_fixtures.py). Each refusal: exit code 2, one `error:` line naming the file (and line) or the option, no
traceback, nothing left behind. Each accepted variant is a positive control that runs to the end.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import train
from dataset import prepare as prepare_cli
from dataset.synthetic import write_loveda, write_potsdam
from tests.train_fixtures import (
    DEMO,
    RUN_STARTED,
    assert_nothing_left,
    assert_one_line_error,
    invoke,
    snapshot,
    tiny_overrides,
    write_tiny_dataset,
)

pytestmark = pytest.mark.usefixtures("one_thread", "close_leaked_progress_bars")


# ----------------------------------------------------------------------------------------------------------
# train.py: split lists and pixels


class Data:
    """The tiny dataset (labelled 0-3, unlabelled 4-11, val 12-13) with test tiles of its own (t12, t13)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.root = tmp, tmp / "data"
        self.splits = write_tiny_dataset(self.root)
        lines = []
        for i in (12, 13):
            shutil.copy(self.root / "img" / f"{i}.png", self.root / "img" / f"t{i}.png")
            shutil.copy(self.root / "ann" / f"{i}.png", self.root / "ann" / f"t{i}.png")
            lines.append(f"img/t{i}.png ann/t{i}.png")
        self.test.write_text("\n".join(lines) + "\n")

    @property
    def labeled(self) -> Path:
        return self.splits / "10" / "labeled.txt"

    @property
    def unlabeled(self) -> Path:
        return self.splits / "10" / "unlabeled.txt"

    @property
    def val(self) -> Path:
        return self.splits / "val.txt"

    @property
    def test(self) -> Path:
        return self.splits / "test.txt"

    def argv(self, *extra: str) -> list[str]:
        return ["--config", DEMO, *tiny_overrides(self.root, self.splits, self.tmp / "run", "fixmatch", 1), *extra]


def run_train(data: Data, capfd: pytest.CaptureFixture) -> tuple[int, str]:
    argv = data.argv()
    return invoke(lambda: train.main(argv), capfd)


def latin1(data: Data):
    # A list edited in a Windows-1252 editor: 'é' is the byte 0xe9.
    data.labeled.write_bytes(data.labeled.read_bytes().replace(b"img/2.png", b"img/caf\xe9.png"))
    return [f"{data.labeled}:3", "not UTF-8", "0xe9", "must be UTF-8"]


def utf16_labeled(data: Data):
    # Windows Notepad's "Unicode".
    data.labeled.write_bytes(data.labeled.read_text().encode("utf-16"))
    return [str(data.labeled), "UTF-16", "must be UTF-8"]


def utf16_unlabeled(data: Data):
    data.unlabeled.write_bytes(data.unlabeled.read_text().encode("utf-16"))
    return [str(data.unlabeled), "UTF-16", "must be UTF-8"]


def nul_bytes_val(data: Data):
    data.val.write_bytes(data.val.read_bytes() + b"\x00\x00\n")
    return [f"{data.val}:3", "NUL byte", "UTF-8"]


def duplicate_labeled(data: Data):
    lines = data.labeled.read_text().splitlines()
    data.labeled.write_text("\n".join(lines + [lines[1]]) + "\n")
    return [f"{data.labeled}:5", "img/1.png", "lines 2 and 5"]


def duplicate_unlabeled(data: Data):
    # An error, not a warning: a repeated unlabelled image is drawn twice as often, silently.
    lines = data.unlabeled.read_text().splitlines()
    data.unlabeled.write_text("\n".join(lines + ["./" + lines[0]]) + "\n")
    return [f"{data.unlabeled}:9", "lines 1 and 9"]


def duplicate_val(data: Data):
    lines = data.val.read_text().splitlines()
    data.val.write_text("\r\n".join(lines + [lines[0]]) + "\r\n")
    return [f"{data.val}:3", "lines 1 and 3"]


def image_is_a_folder(data: Data):
    (data.root / "img" / "dir.png").mkdir()
    data.unlabeled.write_text(data.unlabeled.read_text() + "img/dir.png\n")
    return [f"{data.unlabeled}:9", "is a folder", "dir.png"]


def labeled_also_unlabeled(data: Data):
    data.unlabeled.write_text(data.unlabeled.read_text() + "img/2.png\n")
    return [str(data.labeled) + ":3", str(data.unlabeled) + ":9", "img/2.png"]


def val_also_test(data: Data):
    data.test.write_text(data.test.read_text() + "img/13.png ann/13.png\n")
    return [str(data.val) + ":2", str(data.test) + ":3", "img/13.png"]


def val_by_absolute_path_also_labeled(data: Data):
    # One tile, spelled two ways: the same file all the same.
    data.val.write_text(data.val.read_text() + f"{data.root / 'img' / '1.png'} ann/1.png\n")
    return [str(data.labeled) + ":2", str(data.val) + ":3", str(data.root / "img" / "1.png")]


def unlabeled_also_test(data: Data):
    data.test.write_text("img/5.png ann/5.png\n")
    return [str(data.unlabeled) + ":2", str(data.test) + ":1", "img/5.png"]


@pytest.mark.parametrize("setup", [
    latin1, utf16_labeled, utf16_unlabeled, nul_bytes_val, duplicate_labeled, duplicate_unlabeled, duplicate_val,
    image_is_a_folder, labeled_also_unlabeled, val_also_test, unlabeled_also_test, val_by_absolute_path_also_labeled,
], ids=lambda f: f.__name__.replace("_", "-"))
def test_train_refuses_a_bad_split_list_in_one_line(setup, tmp_path, capfd):
    data = Data(tmp_path)
    needles = setup(data)
    before = snapshot(tmp_path)
    code, err = run_train(data, capfd)
    assert_one_line_error(code, err, needles)
    assert_nothing_left(before, snapshot(tmp_path))


def sixteen_bit_image(data: Data):
    path = data.root / "img" / "0.png"
    Image.fromarray(np.array(Image.open(path))[..., 0].astype(np.uint16) * 16).save(path)  # 12-bit data
    return [str(path), "16-bit grayscale (mode I;16)", "convert it to 8-bit"]


def sixteen_bit_rgb_image(data: Data):
    path = data.root / "img" / "0.png"
    cv2.imwrite(str(path), np.array(Image.open(path)).astype(np.uint16)[..., ::-1] * 16)
    return [str(path), "16-bit RGB", "RGB;16B", "convert it to 8-bit"]


def float_image(data: Data):
    path = data.root / "img" / "0.tif"
    Image.fromarray(np.array(Image.open(data.root / "img" / "0.png"))[..., 0].astype(np.float32) / 255).save(path)
    data.labeled.write_text(data.labeled.read_text().replace("img/0.png", "img/0.tif"))
    return [str(path), "mode F", "convert it to 8-bit"]


def sixteen_bit_mask_of_wide_values(data: Data):
    path = data.root / "ann" / "0.png"
    mask = np.array(Image.open(path)).astype(np.uint16)
    mask[4, 4] = 300
    Image.fromarray(mask).save(path)
    return [str(path), "mode I;16", "value 300"]


def rgba_mask(data: Data):
    path = data.root / "ann" / "0.png"
    mask = np.array(Image.open(path))
    Image.fromarray(np.dstack([mask] * 4)).save(path)
    return [str(path), "not mode RGBA"]


@pytest.mark.parametrize("setup", [sixteen_bit_image, sixteen_bit_rgb_image, float_image,
                                   sixteen_bit_mask_of_wide_values, rgba_mask],
                         ids=lambda f: f.__name__.replace("_", "-"))
def test_train_refuses_pixels_it_cannot_convert_exactly_naming_file_and_mode(setup, tmp_path, capfd):
    data = Data(tmp_path)
    needles = setup(data)
    lines = data.labeled.read_text().splitlines()
    data.labeled.write_text(lines[0] + "\n")   # the first batch reads it
    before = snapshot(tmp_path)
    code, err = run_train(data, capfd)
    assert_one_line_error(code, err, needles, started=True)
    assert_nothing_left(before, snapshot(tmp_path), RUN_STARTED)


def test_train_reads_lists_and_pixels_as_users_save_them(tmp_path, capfd):
    """Positive control: BOM + CRLF and CR-only lists, and labelled tiles in every mode that converts exactly."""
    data = Data(tmp_path)
    img, ann = data.root / "img", data.root / "ann"
    rgb = {i: np.array(Image.open(img / f"{i}.png")) for i in range(4)}
    Image.fromarray(np.dstack([rgb[0], np.full(rgb[0].shape[:2], 9, np.uint8)])).save(img / "0.png")   # RGBA
    Image.fromarray(rgb[1]).convert("P").save(img / "1.png")                                            # palette
    Image.fromarray(np.dstack([255 - rgb[2], np.zeros(rgb[2].shape[:2], np.uint8)]), "CMYK").save(img / "2.tif")
    cv2.imwrite(str(img / "3.png"), (rgb[3].astype(np.uint16) * 257)[..., ::-1])                       # 16-bit RGB
    Image.fromarray(rgb[0][..., 0].astype(np.uint16)).save(img / "4.png")                                # 16-bit gray
    mask = np.array(Image.open(ann / "0.png"))
    Image.fromarray(mask.astype(np.uint16)).save(ann / "0.png")                                          # 16-bit mask
    Image.fromarray(np.array(Image.open(ann / "1.png"))).convert("P").save(ann / "1.png")               # P mask
    labeled = data.labeled.read_text().replace("img/2.png", "img/2.tif").splitlines()
    data.labeled.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(labeled).encode() + b"\r\n")
    data.unlabeled.write_bytes(data.unlabeled.read_text().replace("\n", "\r").encode())
    code, err = run_train(data, capfd)
    assert code == 0, err
    assert (tmp_path / "run" / "latest.pth").is_file()


# ----------------------------------------------------------------------------------------------------------
# dataset.prepare


def prepare_main(argv: list[str]) -> Callable[[], int]:
    return lambda: prepare_cli.main(argv)


def potsdam_argv(tmp: Path, *extra: str, raw: str = "raw", out: str = "out", tile: int = 10) -> list[str]:
    return ["potsdam", "--raw", str(tmp / raw), "--out", str(tmp / out), "--lists", str(tmp / "lists"),
            "--resplit", "--workers", "1", "--tile", str(tile), *extra]


def prepared(tmp: Path, dataset: str = "potsdam", tile: int = 10) -> None:
    """A finished preparation into tmp/out (raw of both datasets under tmp/raw, tmp/raw_loveda)."""
    from dataset.prepare import prepare

    write_potsdam(tmp / "raw", np.random.default_rng(0), size=20, count=1)
    write_loveda(tmp / "raw_loveda", np.random.default_rng(0), size=16, count=1)
    raw = tmp / ("raw" if dataset == "potsdam" else "raw_loveda")
    prepare(dataset, raw, tmp / "out", tmp / "first_lists", tile=tile, resplit=True)


def out_is_a_file(tmp: Path):
    prepared(tmp)
    shutil.rmtree(tmp / "out")
    (tmp / "out").write_text("notes")
    return potsdam_argv(tmp), ["--out", str(tmp / "out"), "is a file, not a folder"]


def out_under_a_file(tmp: Path):
    prepared(tmp)
    (tmp / "notes.txt").write_text("notes")
    return potsdam_argv(tmp, out="notes.txt/out"), [str(tmp / "notes.txt/out"), str(tmp / "notes.txt"),
                                                    "is a file, not a folder"]


def out_not_writable(tmp: Path):
    prepared(tmp)
    (tmp / "locked").mkdir()
    (tmp / "locked").chmod(0o555)
    return potsdam_argv(tmp, out="locked/out"), [str(tmp / "locked/out"), str(tmp / "locked"), "not writable"]


def splits_is_a_file(tmp: Path):
    prepared(tmp)
    (tmp / "lists").write_text("not a folder")
    return potsdam_argv(tmp, out="out2"), ["--lists", str(tmp / "lists"), "is a file, not a folder"]


def splits_under_a_file(tmp: Path):
    prepared(tmp)
    (tmp / "notes.txt").write_text("notes")
    argv = potsdam_argv(tmp, out="out2")
    argv[argv.index("--lists") + 1] = str(tmp / "notes.txt" / "lists")
    return argv, ["--lists", str(tmp / "notes.txt"), "is a file, not a folder"]


def other_tile(tmp: Path):
    prepared(tmp, tile=10)
    return potsdam_argv(tmp, tile=8), [str(tmp / "out"), "--tile 10, not 8", ".prepare_options.json",
                                       "--overwrite", "another --out"]


def other_dataset(tmp: Path):
    prepared(tmp, dataset="loveda")
    return potsdam_argv(tmp), [str(tmp / "out"), "loveda tiles, not potsdam", "--overwrite"]


def other_raw(tmp: Path):
    prepared(tmp)
    shutil.copytree(tmp / "raw", tmp / "raw_copy")
    return potsdam_argv(tmp, raw="raw_copy"), ["--raw", str((tmp / "raw").resolve()), str(tmp / "raw_copy"),
                                               "--overwrite"]


def tiles_without_record(tmp: Path):
    prepared(tmp)
    for name in (".prepare_options.json", "prepare_summary.json"):
        (tmp / "out" / name).unlink()   # tiles copied in from elsewhere: their options are unknown
    return potsdam_argv(tmp), [str(tmp / "out"), "no record", "--overwrite"]


def unreadable_record(tmp: Path):
    prepared(tmp)
    (tmp / "out" / ".prepare_options.json").write_bytes(b"\x00\x01 not json")
    return potsdam_argv(tmp), [str(tmp / "out" / ".prepare_options.json"), "cannot be read", "--overwrite"]


def checked_list_not_utf8(tmp: Path):
    prepared(tmp)
    lists = tmp / "first_lists"
    (lists / "val.txt").write_bytes((lists / "val.txt").read_bytes() + b"images/caf\xe9.png masks/x.png\n")
    argv = potsdam_argv(tmp, out="out2")
    argv.remove("--resplit")
    argv[argv.index("--lists") + 1] = str(lists)
    return argv, [f"{lists / 'val.txt'}:2", "not UTF-8"]


@pytest.mark.parametrize("setup", [
    out_is_a_file, out_under_a_file,
    pytest.param(out_not_writable, marks=pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")),
    splits_is_a_file, splits_under_a_file, other_tile, other_dataset, other_raw, tiles_without_record,
    unreadable_record, checked_list_not_utf8,
], ids=lambda f: f.__name__.replace("_", "-"))
def test_prepare_refuses_in_one_line_before_writing_anything(setup, tmp_path, capfd):
    argv, needles = setup(tmp_path)
    before = snapshot(tmp_path)
    code, err = invoke(prepare_main(argv), capfd)
    assert_one_line_error(code, err, needles)
    assert_nothing_left(before, snapshot(tmp_path))


def test_prepare_refuses_an_output_folder_it_may_not_write(tmp_path, capfd, monkeypatch):
    """The not-writable check, also where the tests run as root (which may write anywhere)."""
    prepared(tmp_path)
    (tmp_path / "locked").mkdir()
    real_access = os.access
    monkeypatch.setattr(prepare_cli.os, "access",
                        lambda path, mode, **kw: Path(path) != tmp_path / "locked" and real_access(path, mode, **kw))
    before = snapshot(tmp_path)
    code, err = invoke(prepare_main(potsdam_argv(tmp_path, out="locked/out")), capfd)
    assert_one_line_error(code, err, [str(tmp_path / "locked/out"), "cannot be created", "not writable"])
    assert_nothing_left(before, snapshot(tmp_path))


def test_a_second_preparation_into_a_locked_out_is_refused(tmp_path, capfd):
    prepared(tmp_path)
    lock = tmp_path / "out" / ".prepare.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)   # what a running preparation holds
    try:
        # flock locks conflict between open files, also within one process: this one stands for another.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242\n")
        before = snapshot(tmp_path)
        code, err = invoke(prepare_main(potsdam_argv(tmp_path)), capfd)
        assert_one_line_error(code, err, ["another dataset.prepare (process 4242)", str(tmp_path / "out"), str(lock)])
        assert_nothing_left(before, snapshot(tmp_path))
    finally:
        os.close(fd)
    # The holder is gone: the same command now runs (and skips the tiles that exist).
    capfd.readouterr()
    assert prepare_cli.main(potsdam_argv(tmp_path)) == 0
    assert "0 crops written, 4 already there" in capfd.readouterr().out and not lock.exists()


def test_prepare_follows_a_symlinked_download_with_a_link_loop(tmp_path, capfd):
    """Positive control: the raw tree is a symbolic link to a download elsewhere that links back to itself."""
    download = tmp_path / "disk2" / "LoveDA"
    write_loveda(download, np.random.default_rng(0), size=16, count=1)
    (download / "Train" / "Rural" / "back").symlink_to(download, target_is_directory=True)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "LoveDA").symlink_to(download, target_is_directory=True)
    capfd.readouterr()
    assert prepare_cli.main(["loveda", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--lists",
                             str(tmp_path / "lists"), "--resplit", "--workers", "1"]) == 0
    assert "4 raw images -> 16 crops written" in capfd.readouterr().out
