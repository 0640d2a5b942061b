"""dataset/semi.py: item layout per mode, determinism per sample seed, and a DataError for every bad input."""

import gc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dataset.sampler import SeededSampler
from dataset.semi import SemiDataset
from util.config import Config
from util.errors import DataError

CROP = 28


def write_pair(root: Path, name: str, size: tuple[int, int] = (20, 24), nclass: int = 7, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / f"{name}.png")
    Image.fromarray(rng.integers(0, nclass, size, dtype=np.uint8)).save(root / f"{name}_mask.png")
    return f"{name}.png {name}_mask.png"


@pytest.fixture
def data(tmp_path: Path) -> tuple[Config, Path]:
    """Three labelled pairs under tmp_path/root and a split list of them."""
    root = tmp_path / "root"
    root.mkdir()
    lines = [write_pair(root, f"t{i}", seed=i) for i in range(3)]
    split = tmp_path / "split.txt"
    split.write_text("\n".join(lines) + "\n")
    cfg = Config()
    cfg.dataset.root = str(root)
    cfg.dataset.crop_size = CROP
    return cfg, split


def write_split(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.txt"
    path.write_text(text)
    return path


def test_labelled_items_are_normalised_crops_with_long_masks(data):
    cfg, split = data
    item = SemiDataset(cfg, "train_l", split)[(0, 3)]
    assert item["img"].shape == (3, CROP, CROP) and item["img"].dtype == torch.float32
    assert item["mask"].shape == (CROP, CROP) and item["mask"].dtype == torch.long
    assert set(item["mask"].unique().tolist()) <= set(range(7)) | {255}


def test_unlabelled_items_have_n_strong_views_boxes_and_a_254_padding_mask(data):
    cfg, split = data
    cfg.augment.scale_range = (0.5, 0.5)  # 20x24 -> 10x12: most of the crop is padding
    item = SemiDataset(cfg, "train_u", split, n_strong=2)[(1, 9)]
    assert item["img_w"].shape == (3, CROP, CROP)
    assert item["img_s"].shape == (2, 3, CROP, CROP)
    assert item["cutmix_box"].shape == (2, CROP, CROP) and item["cutmix_box"].dtype == torch.long
    assert item["ignore_mask"].dtype == torch.long
    assert (item["ignore_mask"] == 0).sum() == 10 * 12 and (item["ignore_mask"] == 254).sum() == CROP**2 - 120


def test_strong_settings_never_change_the_weak_view_or_the_ignore_mask(data):
    cfg, split = data
    plain = SemiDataset(cfg, "train_u", split)[(0, 11)]
    cfg.augment.color_jitter_p, cfg.augment.grayscale_p, cfg.augment.blur_p = 1.0, 1.0, 1.0
    strong = SemiDataset(cfg, "train_u", split)[(0, 11)]
    assert torch.equal(plain["img_w"], strong["img_w"])
    assert torch.equal(plain["ignore_mask"], strong["ignore_mask"])
    assert not torch.equal(strong["img_s"][0], strong["img_w"])


def test_unlabelled_lines_may_hold_only_the_image(data, tmp_path):
    cfg, _ = data
    split = write_split(tmp_path, "t0.png\nt1.png\n")
    assert len(SemiDataset(cfg, "train_u", split)) == 2


def test_val_items_are_whole_images_with_their_names(data):
    cfg, split = data
    item = SemiDataset(cfg, "val", split)[2]
    assert item["img"].shape == (3, 20, 24) and item["mask"].shape == (20, 24) and item["name"] == "t2"
    expected = np.array(Image.open(Path(cfg.dataset.root) / "t2_mask.png"))
    assert torch.equal(item["mask"], torch.from_numpy(expected).long())


def test_items_depend_only_on_the_sample_seed_not_on_workers(data):
    cfg, split = data
    ds = SemiDataset(cfg, "train_u", split)
    sampler = SeededSampler(len(ds), 6, seed=0)

    def batches(workers: int) -> list[dict]:
        return list(DataLoader(ds, batch_size=2, sampler=sampler, num_workers=workers))

    serial, parallel = batches(0), batches(2)
    assert len(serial) == 3
    for a, b in zip(serial, parallel):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(ds[(0, 1)]["img_w"], ds[(0, 2)]["img_w"])


@pytest.mark.parametrize("text, message", [
    ("", "split file is empty"),
    ("\n\n", "split file is empty"),
    ("t0.png t0_mask.png\nt1.png\n", "bad.txt:2: expected '<image> <mask>'"),
    ("t0.png t0_mask.png extra\n", "bad.txt:1: expected"),
    ("t0.png t0_mask.png\nnope.png t1_mask.png\n", "bad.txt:2: image file not found:"),
    ("t0.png nope_mask.png\n", "bad.txt:1: mask file not found:"),
])
def test_bad_split_lists_name_the_file_and_line(data, tmp_path, text, message):
    cfg, _ = data
    with pytest.raises(DataError, match=message) as err:
        SemiDataset(cfg, "train_l", write_split(tmp_path, text))
    assert "\n" not in str(err.value)
    if "not found" in message:
        assert "nope" in str(err.value)


def test_missing_split_file_is_named(data, tmp_path):
    cfg, _ = data
    with pytest.raises(DataError, match="split file not found: .*missing.txt"):
        SemiDataset(cfg, "val", tmp_path / "missing.txt")


def corrupt(root: Path, case: str) -> None:
    if case == "garbage image":
        (root / "t0.png").write_bytes(b"not a png at all")
    elif case == "truncated image":
        data = (root / "t0.png").read_bytes()
        (root / "t0.png").write_bytes(data[: len(data) // 2])
    elif case == "mask size":
        Image.fromarray(np.zeros((20, 23), np.uint8)).save(root / "t0_mask.png")
    elif case == "mask value":
        mask = np.zeros((20, 24), np.uint8)
        mask[3, 4] = 7
        Image.fromarray(mask).save(root / "t0_mask.png")
    elif case == "rgb mask":
        Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(root / "t0_mask.png")


@pytest.mark.parametrize("case, culprit", [("garbage image", "t0.png"), ("truncated image", "t0.png"),
                                           ("mask size", "t0_mask.png"), ("mask value", "t0_mask.png"),
                                           ("rgb mask", "t0_mask.png")])
@pytest.mark.parametrize("mode", ["train_l", "val"])
def test_bad_files_raise_a_data_error_naming_the_file(data, case, culprit, mode):
    cfg, split = data
    corrupt(Path(cfg.dataset.root), case)
    ds = SemiDataset(cfg, mode, split)
    with pytest.raises(DataError) as err:
        ds[0]
    assert culprit in str(err.value) and "\n" not in str(err.value)


def test_ignore_value_255_is_a_valid_mask_value(data):
    cfg, split = data
    mask = np.full((20, 24), 255, np.uint8)
    Image.fromarray(mask).save(Path(cfg.dataset.root) / "t0_mask.png")
    assert (SemiDataset(cfg, "val", split)[0]["mask"] == 255).all()


def test_a_bad_file_read_in_a_worker_still_names_the_file(data, monkeypatch):
    # torch waits up to this long for a worker whose iterator died on an error; keep the test quick.
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.2)
    cfg, split = data
    corrupt(Path(cfg.dataset.root), "garbage image")
    batches = iter(DataLoader(SemiDataset(cfg, "train_l", split), batch_size=1, num_workers=1))
    with pytest.raises(DataError, match="cannot read image .*t0.png"):
        next(batches)
    del batches
    gc.collect()  # shut the worker down while the shorter timeout holds
