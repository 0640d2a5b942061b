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
from util.config import Config, load_config
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
    cfg = Config().replace({"dataset.root": str(root), "dataset.crop_size": CROP})
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
    cfg = cfg.replace({"augment.scale_range": (0.5, 0.5)})  # 20x24 -> 10x12: most of the crop is padding
    item = SemiDataset(cfg, "train_u", split, n_strong=2)[(1, 9)]
    assert item["img_w"].shape == (3, CROP, CROP)
    assert item["img_s"].shape == (2, 3, CROP, CROP)
    assert item["cutmix_box"].shape == (2, CROP, CROP) and item["cutmix_box"].dtype == torch.long
    assert item["ignore_mask"].dtype == torch.long
    assert (item["ignore_mask"] == 0).sum() == 10 * 12 and (item["ignore_mask"] == 254).sum() == CROP**2 - 120


def test_strong_settings_never_change_the_weak_view_or_the_ignore_mask(data):
    cfg, split = data
    plain = SemiDataset(cfg, "train_u", split)[(0, 11)]
    cfg = cfg.replace({"augment.color_jitter_p": 1.0, "augment.grayscale_p": 1.0, "augment.blur_p": 1.0})
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


# ----------------------------------------------------------------------------------------------------------
# Split lists as users save them (issue 15, item 8)


@pytest.mark.parametrize("raw", [
    b"\xef\xbb\xbft0.png t0_mask.png\r\nt1.png t1_mask.png\r\n",   # Windows Notepad: BOM and CRLF
    b"t0.png t0_mask.png\rt1.png t1_mask.png\r",                   # old Mac line ends
    b"t0.png\tt0_mask.png\n\n  t1.png  t1_mask.png  \n",            # tabs, blank lines, padding
    b"t0.png t0_mask.png\nt1.png t1_mask.png",                      # no newline at the end
], ids=["bom-crlf", "cr", "whitespace", "no-final-newline"])
def test_split_lists_in_any_text_layout_read_the_same(data, tmp_path, raw):
    cfg, _ = data
    path = tmp_path / "list.txt"
    path.write_bytes(raw)
    root = Path(cfg.dataset.root)
    assert SemiDataset(cfg, "train_l", path).samples == [(root / "t0.png", root / "t0_mask.png"),
                                                          (root / "t1.png", root / "t1_mask.png")]


def test_non_ascii_file_names_in_utf8_are_read(data, tmp_path):
    cfg, _ = data
    root = Path(cfg.dataset.root)
    (root / "t0.png").rename(root / "café_東京.png")
    path = tmp_path / "list.txt"
    path.write_bytes("café_東京.png t0_mask.png\n".encode())
    assert SemiDataset(cfg, "train_l", path).samples[0][0] == root / "café_東京.png"


@pytest.mark.parametrize("raw, message", [
    (b"t0.png t0_mask.png\nt1\xe9.png t1_mask.png\n", r"bad.txt:2: not UTF-8 \(byte 0xe9 at column 3 .*must be UTF-8"),
    ("t0.png t0_mask.png\n".encode("utf-16"), "bad.txt is UTF-16 text; split lists must be UTF-8"),
    (b"t0.png t0_mask.png\n\x00\x00\n", "bad.txt:2: holds a NUL byte .*UTF-8"),
    (b"t0.png t0_mask.png\nt1.png t1_mask.png\n./t0.png t2_mask.png\n",
     "bad.txt:3: ./t0.png is listed twice, on lines 1 and 3"),
], ids=["latin-1", "utf-16", "nul", "duplicate"])
def test_undecodable_or_repeated_lines_name_file_and_line(data, tmp_path, raw, message):
    cfg, _ = data
    (tmp_path / "bad.txt").write_bytes(raw)
    for mode in ("train_l", "train_u", "val"):
        with pytest.raises(DataError, match=message) as err:
            SemiDataset(cfg, mode, tmp_path / "bad.txt")
        assert "\n" not in str(err.value)


def test_a_folder_named_as_list_or_image_is_named_as_a_folder(data, tmp_path):
    cfg, _ = data
    with pytest.raises(DataError, match="split file .*sub is a folder"):
        SemiDataset(cfg, "val", (tmp_path / "sub").mkdir() or tmp_path / "sub")
    (Path(cfg.dataset.root) / "dir.png").mkdir()
    with pytest.raises(DataError, match=r"bad.txt:1: image is a folder, not a file: .*dir.png"):
        SemiDataset(cfg, "train_u", write_split(tmp_path, "dir.png\n"))


def test_check_disjoint_names_the_image_and_both_files_and_lines(data, tmp_path):
    from dataset.semi import check_disjoint

    cfg, _ = data
    labeled, unlabeled, val = tmp_path / "l.txt", tmp_path / "u.txt", tmp_path / "v.txt"
    labeled.write_text("t0.png t0_mask.png\n")
    unlabeled.write_text("t1.png\n")
    val.write_text("t2.png t2_mask.png\n")
    check_disjoint([labeled, unlabeled, val, tmp_path / "absent_test.txt"], cfg.dataset.root)  # disjoint: fine
    val.write_text("t2.png t2_mask.png\n\n./t1.png t1_mask.png\n")
    with pytest.raises(DataError, match=rf"t1.png is listed in both {unlabeled}:1 and {val}:3; labelled, "
                                        rf"unlabelled, val and test lists must not share images"):
        check_disjoint([labeled, unlabeled, val], cfg.dataset.root)


def test_check_disjoint_sees_one_tile_by_absolute_and_relative_path_and_through_links(data, tmp_path):
    from dataset.semi import check_disjoint

    cfg, _ = data
    root = Path(cfg.dataset.root)
    labeled, val = tmp_path / "l.txt", tmp_path / "v.txt"
    labeled.write_text("t0.png t0_mask.png\nt1.png t1_mask.png\n")
    val.write_text(f"t2.png t2_mask.png\n{root / 't1.png'} t1_mask.png\n")
    with pytest.raises(DataError, match=rf"^{root / 't1.png'} is listed in both {labeled}:2 and {val}:2; .*"
                                        rf"\({labeled}:2 has it as t1.png\)$"):
        check_disjoint([labeled, val], root)
    (root / "link.png").symlink_to(root / "t0.png")
    val.write_text("t2.png t2_mask.png\nlink.png t0_mask.png\n")
    with pytest.raises(DataError, match=rf"link.png is listed in both {labeled}:1 and {val}:2"):
        check_disjoint([labeled, val], root)


def test_a_list_naming_one_tile_by_relative_and_absolute_path_is_refused(data, tmp_path):
    cfg, _ = data
    root = Path(cfg.dataset.root)
    path = write_split(tmp_path, f"t0.png t0_mask.png\nt1.png t1_mask.png\n{root / 't0.png'} t0_mask.png\n")
    with pytest.raises(DataError, match=rf"bad.txt:3: {root / 't0.png'} is listed twice, on lines 1 and 3 "
                                        rf"\(line 1 has it as t0.png\)"):
        SemiDataset(cfg, "val", path)


# ----------------------------------------------------------------------------------------------------------
# Every image mode PIL opens: 8-bit RGB exactly, or refused naming file and mode (issue 15, item 8)

H, W = 20, 24


def gradient() -> np.ndarray:
    return np.arange(H * W * 3, dtype=np.int64).reshape(H, W, 3) % 251


def save_mode(root: Path, name: str, kind: str) -> tuple[Path, np.ndarray | None]:
    """Write t0 in `kind`; return the file and the RGB array read_image must give (None: must be refused)."""
    import cv2

    rgb = gradient().astype(np.uint8)
    gray = rgb[..., 0]
    path = root / name
    if kind == "RGBA":
        Image.fromarray(np.dstack([rgb, np.full((H, W), 7, np.uint8)])).save(path)
        return path, rgb
    if kind == "LA":
        Image.fromarray(np.dstack([gray, gray // 2]), "LA").save(path)
        return path, np.stack([gray] * 3, -1)
    if kind == "P":
        palette = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)
        im = Image.fromarray(gray, "L").convert("P")
        im.putpalette(palette.ravel().tolist())
        im.save(path)
        return path, palette[gray]
    if kind == "1":
        Image.fromarray(gray > 100).convert("1").save(path)
        return path, np.stack([np.where(gray > 100, 255, 0).astype(np.uint8)] * 3, -1)
    if kind == "CMYK":
        cmyk = np.dstack([255 - rgb, np.zeros((H, W), np.uint8)])
        Image.fromarray(cmyk, "CMYK").save(path)
        return path, rgb
    if kind == "I;16 8-bit values":
        Image.fromarray(gray.astype(np.uint16)).save(path)
        return path, np.stack([gray] * 3, -1)
    if kind == "I;16 x257":
        Image.fromarray(gray.astype(np.uint16) * 257).save(path)
        return path, np.stack([gray] * 3, -1)
    if kind == "I;16 12-bit":
        Image.fromarray(gray.astype(np.uint16) * 16).save(path)
        return path, None
    if kind == "I":
        Image.fromarray(gray.astype(np.int32)).save(path)
        return path, np.stack([gray] * 3, -1)
    if kind == "F":
        Image.fromarray(gray.astype(np.float32) / 255).save(path)
        return path, None
    if kind == "RGB 16-bit x257":
        cv2.imwrite(str(path), (rgb.astype(np.uint16) * 257)[..., ::-1])
        return path, rgb
    if kind == "RGB 16-bit 8-bit values":
        cv2.imwrite(str(path), rgb.astype(np.uint16)[..., ::-1])
        return path, rgb
    if kind == "RGB 16-bit 12-bit":
        cv2.imwrite(str(path), (rgb.astype(np.uint16) * 16)[..., ::-1])
        return path, None
    raise ValueError(kind)


@pytest.mark.parametrize("kind, name", [
    ("RGBA", "a.png"), ("LA", "a.png"), ("P", "a.png"), ("1", "a.png"), ("CMYK", "a.tif"), ("CMYK", "a.jpg"),
    ("I;16 8-bit values", "a.png"), ("I;16 x257", "a.png"), ("I;16 8-bit values", "a.tif"), ("I", "a.tif"),
    ("RGB 16-bit x257", "a.png"), ("RGB 16-bit 8-bit values", "a.png"), ("RGB 16-bit x257", "a.tif"),
    ("I;16 12-bit", "a.png"), ("F", "a.tif"), ("RGB 16-bit 12-bit", "a.png"), ("RGB 16-bit 12-bit", "a.tif"),
])
def test_every_image_mode_is_exact_8bit_rgb_or_refused_naming_file_and_mode(tmp_path, kind, name):
    from dataset.semi import read_image

    path, expected = save_mode(tmp_path, name, kind)
    if expected is None:
        with pytest.raises(DataError) as err:
            read_image(path)
        message = str(err.value)
        assert str(path) in message and "\n" not in message
        assert ("mode " in message or "16-bit" in message) and "convert it to 8-bit" in message
        return
    image = read_image(path)
    assert image.dtype == torch.uint8 and image.shape == (3, H, W)
    got = image.permute(1, 2, 0).numpy().astype(int)
    tolerance = 40 if name.endswith(".jpg") else 0   # JPEG is lossy
    assert np.abs(got - expected.astype(int)).max() <= tolerance, kind


def test_refusals_name_the_mode_and_the_value_range(tmp_path):
    from dataset.semi import read_image

    path, _ = save_mode(tmp_path, "a.png", "I;16 12-bit")
    with pytest.raises(DataError, match=r"a.png is 16-bit grayscale \(mode I;16\) with values 0..4000"):
        read_image(path)
    path, _ = save_mode(tmp_path, "b.tif", "RGB 16-bit 12-bit")
    with pytest.raises(DataError, match=r"b.tif is 16-bit RGB \(stored as RGB;16\w\)"):
        read_image(path)


@pytest.mark.parametrize("kind, accepted", [("L", True), ("P", True), ("I;16", True), ("I;16 300", False),
                                            ("RGB", False), ("LA", False), ("1", False), ("F", False)])
def test_masks_are_l_p_or_16_bit_below_256_else_the_mode_is_named(data, kind, accepted):
    cfg, split = data
    root = Path(cfg.dataset.root)
    labels = np.random.default_rng(0).integers(0, 7, (20, 24)).astype(np.uint8)
    labels[0, 0] = 255
    path = root / "t0_mask.png"
    if kind == "L":
        Image.fromarray(labels).save(path)
    elif kind == "P":
        im = Image.fromarray(labels, "L").convert("P")
        im.putpalette([v for i in range(256) for v in (255 - i, i, i // 2)])   # colours differ from indices
        im.save(path)
    elif kind.startswith("I;16"):
        wide = labels.astype(np.uint16)
        if kind.endswith("300"):
            wide[3, 3] = 300
        Image.fromarray(wide).save(path)
    elif kind == "RGB":
        Image.fromarray(np.stack([labels] * 3, -1)).save(path)
    elif kind == "LA":
        Image.fromarray(np.dstack([labels, labels]), "LA").save(path)
    elif kind == "1":
        Image.fromarray(labels > 3).convert("1").save(path)
    elif kind == "F":
        path = root / "t0_mask.tif"
        Image.fromarray(labels.astype(np.float32)).save(path)
        split.write_text(split.read_text().replace("t0_mask.png", "t0_mask.tif"))
    ds = SemiDataset(cfg, "val", split)
    if accepted:
        assert torch.equal(ds[0]["mask"], torch.from_numpy(labels).long())
        return
    with pytest.raises(DataError) as err:
        ds[0]
    message = str(err.value)
    assert path.name in message and "\n" not in message
    assert "mode I;16" in message and "value 300" in message if kind == "I;16 300" else f"not mode {kind}" in message


@pytest.mark.filterwarnings("ignore::UserWarning")   # PIL's notes on damaged TIFF tags
def test_a_corrupt_file_of_any_format_is_one_data_error_naming_it(tmp_path):
    """Decoders raise OSError, SyntaxError, ValueError, TypeError... on damaged files: each becomes a DataError."""
    import io
    import random

    from dataset.semi import read_image

    rng = random.Random(0)
    rgb = gradient().astype(np.uint8)
    for fmt in ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP"):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format=fmt)
        good = buffer.getvalue()
        for k in range(30):
            damaged = bytearray(good)
            for _ in range(rng.randint(1, 8)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            path = tmp_path / f"{k}.{fmt.lower()}"
            path.write_bytes(bytes(damaged[:rng.randrange(len(damaged) // 2, len(damaged) + 1)]))
            try:
                assert read_image(path).shape[0] == 3
            except DataError as e:
                assert str(path) in str(e) and "\n" not in str(e)


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG header that declares width x height RGB pixels, followed by almost no data."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def test_a_header_declaring_more_pixels_than_its_file_could_hold_is_refused_before_decoding(tmp_path, data):
    """A damaged TIFF of 1.5 KB once declared 24 x 1,979,711,508 pixels: PIL took 15 GB and a minute to fail."""
    from dataset.semi import read_image

    path = tmp_path / "damaged.png"
    path.write_bytes(png_declaring(20_000, 20_000))     # 1.1 GiB decoded from about 100 bytes
    with pytest.raises(DataError) as err:
        read_image(path)
    assert str(path) in str(err.value) and "declares 20000 x 20000 pixels" in str(err.value)
    cfg, split = data
    first_image = Path(cfg.dataset.root) / split.read_text().split()[0]
    first_image.write_bytes(png_declaring(20_000, 20_000))
    with pytest.raises(DataError, match="declares 20000 x 20000"):
        SemiDataset(cfg, "val", split)[0]


def test_images_compressed_as_far_as_real_codecs_go_are_read(tmp_path, monkeypatch):
    """The header check allows deflate's ceiling with room to spare: a constant image (about 1,000:1) reads."""
    import util.io
    from dataset.semi import read_image

    monkeypatch.setattr(util.io, "DECODED_FLOOR_BYTES", 0)   # the ratio alone decides, even for small files
    path = tmp_path / "flat.png"
    Image.fromarray(np.zeros((2000, 2000, 3), np.uint8)).save(path, optimize=True)
    assert 12e6 / path.stat().st_size > 500                  # it really is compressed that far
    assert read_image(path).shape == (3, 2000, 2000)


@pytest.mark.parametrize("old_folder", [True, False])
def test_tiles_missing_at_the_default_root_name_its_old_default_where_that_folder_exists(tmp_path, monkeypatch,
                                                                                        old_folder):
    monkeypatch.chdir(tmp_path)
    if old_folder:
        (tmp_path / "dataset" / "loveda").mkdir(parents=True)
    split = write_split(tmp_path, "t0.png t0_mask.png\n")
    (tmp_path / "cfg.yaml").write_text("{}\n")
    cfg = load_config(tmp_path / "cfg.yaml", [f"dataset.crop_size={CROP}"])  # dataset.root left at its default
    with pytest.raises(DataError) as info:
        SemiDataset(cfg, "val", split)
    message = str(info.value)
    assert f"image file not found: {tmp_path / 'data' / 'loveda' / 't0.png'}" in message and "\n" not in message
    hint = f"default dataset.root moved from dataset/loveda to data/loveda: set dataset.root={tmp_path}/dataset/loveda"
    assert (hint in message) == old_folder
