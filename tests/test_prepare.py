"""dataset/prepare.py and dataset/synthetic.py on tiny raw trees: crops, label conversion, padding, splits, re-runs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset.prepare import prepare
from dataset.semi import SemiDataset
from dataset.synthetic import write_deepglobe, write_loveda, write_potsdam
from util.catalog import DATASETS
from util.config import Config
from util.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def split_names(splits: Path, percent: str) -> dict[str, set[str]]:
    return {kind: {line.split()[0] for line in lines(file)} for kind, file in
            {"labeled": splits / percent / "labeled.txt", "unlabeled": splits / percent / "unlabeled.txt",
             "val": splits / "val.txt", "test": splits / "test.txt"}.items()}


@pytest.fixture
def loveda_raw(tmp_path: Path) -> Path:
    """Train: 2 rural + 2 urban images; Val: 1 + 1; 32x32 each."""
    raw = tmp_path / "raw"
    write_loveda(raw, np.random.default_rng(0), size=32, count=2)
    return raw


def test_loveda_images_become_quadrants_with_shifted_labels(loveda_raw, tmp_path):
    out, splits = tmp_path / "out", tmp_path / "splits"
    summary = prepare("loveda", loveda_raw, out, splits, resplit=True)
    assert summary["raw_images"] == 6 and summary["crops_written"] == 24 and not summary["failed"]
    image = np.array(Image.open(loveda_raw / "Train/Urban/images_png/2.png"))
    raw_mask = np.array(Image.open(loveda_raw / "Train/Urban/masks_png/2.png"))
    expected = np.where(raw_mask == 0, 255, raw_mask.astype(int) - 1)
    for q, (top, left) in enumerate([(0, 0), (0, 16), (16, 0), (16, 16)], start=1):
        assert np.array_equal(np.array(Image.open(out / f"train/images/train_urban_2_{q}.png")),
                              image[top:top + 16, left:left + 16])
        assert np.array_equal(np.array(Image.open(out / f"train/masks/train_urban_2_{q}.png")),
                              expected[top:top + 16, left:left + 16])


def test_loveda_splits_are_disjoint_nested_and_val_test_come_from_official_val(loveda_raw, tmp_path):
    prepare("loveda", loveda_raw, tmp_path / "out", tmp_path / "splits", resplit=True)
    s = split_names(tmp_path / "splits", "10")
    # One quadrant per domain (a share is at least one tile).
    assert sorted(n.split("_")[1] for n in s["labeled"]) == ["rural", "urban"]
    assert all(n.startswith("train/images/train_") for n in s["labeled"] | s["unlabeled"])
    assert all(n.startswith("val/images/val_") for n in s["val"] | s["test"]) and len(s["val"]) == len(s["test"]) == 4
    assert len(s["labeled"] | s["unlabeled"]) == 16 and not s["labeled"] & s["unlabeled"]
    assert split_names(tmp_path / "splits", "1")["labeled"] <= s["labeled"]


def test_prepared_loveda_reads_through_the_dataset(loveda_raw, tmp_path):
    prepare("loveda", loveda_raw, tmp_path / "out", tmp_path / "splits", resplit=True)
    cfg = Config().replace({"dataset.root": str(tmp_path / "out"), "dataset.crop_size": 14})
    item = SemiDataset(cfg, "val", tmp_path / "splits" / "val.txt")[0]
    assert item["img"].shape == (3, 16, 16) and item["mask"].shape == (16, 16)
    unlabeled = SemiDataset(cfg, "train_u", tmp_path / "splits" / "5" / "unlabeled.txt")
    assert unlabeled[(0, 1)]["img_w"].shape == (3, 14, 14)


def test_rerun_skips_existing_crops_and_writes_identical_splits(loveda_raw, tmp_path):
    out = tmp_path / "out"
    prepare("loveda", loveda_raw, out, tmp_path / "a", seed=3, resplit=True)
    again = prepare("loveda", loveda_raw, out, tmp_path / "b", seed=3, resplit=True)
    assert again["crops_written"] == 0 and again["crops_skipped"] == 24
    for rel in ("val.txt", "test.txt", "1/labeled.txt", "10/unlabeled.txt"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert prepare("loveda", loveda_raw, out, tmp_path / "c", overwrite=True, resplit=True)["crops_written"] == 24
    assert not list(out.rglob("*.tmp"))


def test_a_broken_raw_image_is_reported_and_no_splits_are_written(loveda_raw, tmp_path):
    (loveda_raw / "Train/Rural/images_png/1.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="1 of 6 raw images failed .*train_rural_1"):
        prepare("loveda", loveda_raw, tmp_path / "out", tmp_path / "splits", resplit=True)
    summary = json.loads((tmp_path / "out" / "prepare_summary.json").read_text())
    assert [f["name"] for f in summary["failed"]] == ["train_rural_1"] and summary["crops_written"] == 20
    assert not (tmp_path / "splits").exists()


def test_potsdam_grid_pads_edges_with_ignore_and_maps_off_palette_colours(tmp_path):
    raw = tmp_path / "raw"
    write_potsdam(raw / "nested", np.random.default_rng(1), size=40, count=2)  # nested like unpacked zips
    label_file = raw / "nested/5_Labels_all/top_potsdam_2_10_label.tif"
    colours = np.array(Image.open(label_file))
    palette = np.array(DATASETS["potsdam"].palette)
    off_palette = int((~(colours[:, :, None, :] == palette).all(-1).any(-1)).sum())
    summary = prepare("potsdam", raw, tmp_path / "out", tmp_path / "splits", tile=16, resplit=True)
    assert summary["crops_written"] == 18  # ceil(40/16)^2 per tile, numbered row-major from 1
    last = np.array(Image.open(tmp_path / "out/masks/top_potsdam_2_10_9.png"))
    image = np.array(Image.open(tmp_path / "out/images/top_potsdam_2_10_9.png"))
    assert last.shape == (16, 16) and (last[8:] == 255).all() and (last[:, 8:] == 255).all()
    assert (image[8:] == 0).all() and (last[:8, :8] != 255).all()
    first = np.array(Image.open(tmp_path / "out/masks/top_potsdam_2_10_1.png"))
    exact = (colours[:16, :16, None, :] == palette).all(-1)
    assert np.array_equal(first[exact.any(-1)], exact.argmax(-1)[exact.any(-1)])
    assert summary["remapped_pixels"] >= off_palette > 0


def test_deepglobe_thresholds_impure_colours_before_matching(tmp_path):
    raw = tmp_path / "raw" / "train"
    raw.mkdir(parents=True)
    mask = np.zeros((24, 24, 3), np.uint8)
    mask[:12] = (250, 10, 245)   # rangeland, blurred
    mask[12:, :12] = (200, 201, 40)  # agriculture, blurred
    mask[12:, 12:] = (255, 0, 0)   # no DeepGlobe class
    Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(raw / "7_sat.jpg")
    Image.fromarray(mask).save(raw / "7_mask.png")
    Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(raw / "8_sat.jpg")  # a test image: no mask
    summary = prepare("deepglobe", tmp_path / "raw", tmp_path / "out", tmp_path / "splits", tile=16, resplit=True)
    assert summary["raw_images"] == 1 and summary["crops_written"] == 4
    labels = np.array(Image.open(tmp_path / "out/masks/7_1.png"))
    assert (labels[:12] == 2).all() and (labels[12:, :12] == 1).all() and (labels[12:, 12:] == 255).all()
    assert summary["remapped_pixels"] == 144
    assert (tmp_path / "splits" / "100" / "labeled.txt").is_file()


def test_synthetic_deepglobe_prepares_with_every_class_learnable_from_colour(tmp_path):
    write_deepglobe(tmp_path / "raw", np.random.default_rng(0), size=96, count=1)
    prepare("deepglobe", tmp_path / "raw", tmp_path / "out", tmp_path / "splits", tile=48, resplit=True)
    img = np.concatenate([np.array(Image.open(p)).reshape(-1, 3) for p in sorted((tmp_path / "out/images").glob("*"))])
    lab = np.concatenate([np.array(Image.open(p)).ravel() for p in sorted((tmp_path / "out/masks").glob("*"))])
    means = {c: img[lab == c].mean(0) for c in np.unique(lab) if c != 255 and (lab == c).sum() > 50}
    assert len(means) >= 3
    for a in means:
        for b in means:
            assert a == b or np.abs(means[a] - means[b]).max() > 10, (a, b)


def test_duplicate_raw_tiles_are_an_error(tmp_path):
    write_potsdam(tmp_path / "raw/a", np.random.default_rng(0), size=20, count=1)
    write_potsdam(tmp_path / "raw/b", np.random.default_rng(0), size=20, count=1)
    with pytest.raises(DataError, match="appears twice"):
        prepare("potsdam", tmp_path / "raw", tmp_path / "out", tmp_path / "splits", resplit=True)


def test_command_line_synthetic_then_prepare_with_workers(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", *a], cwd=REPO, capture_output=True, text=True, timeout=120)
    made = run("dataset.synthetic", "--out", str(tmp_path / "raw"), "--size", "32", "--count", "1")
    assert made.returncode == 0, made.stderr
    done = run("dataset.prepare", "loveda", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out"),
               "--lists", str(tmp_path / "splits"), "--resplit", "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert "16 crops written" in done.stdout and len(lines(tmp_path / "splits" / "val.txt")) == 4
    missing = run("dataset.prepare", "potsdam", "--raw", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: raw dataset folder not found")


def test_without_resplit_the_lists_are_checked_and_a_missing_tile_is_named_with_the_count(loveda_raw, tmp_path):
    made = tmp_path / "made"
    prepare("loveda", loveda_raw, tmp_path / "out", made, resplit=True)
    # A second preparation into another folder checks against those lists and writes none itself.
    summary = prepare("loveda", loveda_raw, tmp_path / "again", made)
    assert summary["missing_listed_files"] == 0 and summary["split_counts"] == {}
    (made / "val.txt").write_text((made / "val.txt").read_text() + "val/images/val_rural_9999_1.png "
                                  "val/masks/val_rural_9999_1.png\n")
    with pytest.raises(DataError, match=r"^2 files named by the split lists .* missing, first .*val_rural_9999_1.png"):
        prepare("loveda", loveda_raw, tmp_path / "again", made)


def test_without_resplit_a_folder_without_lists_is_an_error(loveda_raw, tmp_path):
    with pytest.raises(DataError, match="no split lists in .*--resplit"):
        prepare("loveda", loveda_raw, tmp_path / "out", tmp_path / "nothing")


def test_resplit_on_the_command_line_needs_its_own_splits_folder(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dataset.prepare", "loveda", "--raw", str(tmp_path), "--resplit"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--resplit needs --lists DIR" in done.stderr


def test_tile_is_refused_for_loveda_whose_tiles_are_its_quadrants(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dataset.prepare", "loveda", "--raw", str(tmp_path), "--tile", "128"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--tile does not apply to loveda" in done.stderr


# ----------------------------------------------------------------------------------------------------------
# The raw tree as a user expects it, and one cutting per --out (issue 15, item 9)


def test_symlinked_folders_are_followed_once_and_a_link_loop_ends(tmp_path):
    """rglob would skip a linked folder (Python 3.11); a loop or a second link to one folder is walked once."""
    elsewhere = tmp_path / "disk2"
    write_potsdam(elsewhere, np.random.default_rng(0), size=20, count=2)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "2_Ortho_RGB").symlink_to(elsewhere / "2_Ortho_RGB", target_is_directory=True)
    (raw / "labels").symlink_to(elsewhere / "5_Labels_all", target_is_directory=True)
    (raw / "labels_again").symlink_to(elsewhere / "5_Labels_all", target_is_directory=True)  # not a duplicate
    (elsewhere / "5_Labels_all" / "loop").symlink_to(raw, target_is_directory=True)          # back to the top
    assert not list(raw.rglob("*_RGB.tif"))
    summary = prepare("potsdam", raw, tmp_path / "out", tmp_path / "splits", tile=10, resplit=True)
    assert summary["raw_images"] == 2 and summary["crops_written"] == 8 and not summary["failed"]


def test_output_under_raw_is_not_walked_as_raw_files(loveda_raw, tmp_path):
    out = loveda_raw / "tiles"
    prepare("loveda", loveda_raw, out, tmp_path / "a", resplit=True)
    # Quadrant tiles in images_png-like places would be found as raw images if the walk entered --out.
    (out / "Train" / "Rural" / "images_png").mkdir(parents=True)
    (out / "Train" / "Rural" / "images_png" / "99.png").write_bytes(b"junk")
    assert prepare("loveda", loveda_raw, out, tmp_path / "b", resplit=True)["raw_images"] == 6


def test_sixteen_bit_raw_rasters_are_cut_exactly_or_reported(tmp_path):
    import cv2

    raw = tmp_path / "raw"
    write_potsdam(raw, np.random.default_rng(0), size=20, count=2)
    first, second = sorted((raw / "2_Ortho_RGB").glob("*.tif"))
    rgb = np.array(Image.open(first))
    cv2.imwrite(str(first), (rgb.astype(np.uint16) * 257)[..., ::-1])    # an 8-bit image exported as 16-bit
    cv2.imwrite(str(second), (np.array(Image.open(second)).astype(np.uint16) * 16)[..., ::-1])  # 12-bit data
    with pytest.raises(DataError, match=r"1 of 2 raw images failed .*is 16-bit RGB .*convert it to 8-bit"):
        prepare("potsdam", raw, tmp_path / "out", tmp_path / "splits", tile=10, resplit=True)
    stem = first.name.removesuffix("_RGB.tif")
    assert np.array_equal(np.array(Image.open(tmp_path / "out" / "images" / f"{stem}_1.png")), rgb[:10, :10])


def test_options_are_recorded_before_cutting_and_a_rerun_with_others_is_refused(tmp_path):
    raw = tmp_path / "raw"
    write_potsdam(raw, np.random.default_rng(0), size=40, count=1)
    out = tmp_path / "out"
    prepare("potsdam", raw, out, tmp_path / "s1", tile=16, resplit=True)
    recorded = json.loads((out / ".prepare_options.json").read_text())
    assert recorded == {"dataset": "potsdam", "raw": str(raw.resolve()), "tile": 16, "label_rule": None}
    assert prepare("potsdam", raw, out, tmp_path / "s2", tile=16, resplit=True)["crops_skipped"] == 9
    with pytest.raises(DataError, match=r"holds tiles cut with --tile 16, not 20 .*--overwrite"):
        prepare("potsdam", raw, out, tmp_path / "s3", tile=20, resplit=True)
    # --overwrite re-cuts and removes the 3x3 grid's tiles: no 16-px tile is left among the 20-px ones.
    summary = prepare("potsdam", raw, out, tmp_path / "s4", tile=20, resplit=True, overwrite=True)
    assert summary["crops_written"] == 4 and len(list((out / "images").iterdir())) == 4
    assert {Image.open(p).size for p in (out / "masks").iterdir()} == {(20, 20)}
    assert json.loads((out / ".prepare_options.json").read_text())["tile"] == 20
    assert not (out / ".prepare.lock").exists()


def test_a_summary_is_no_record_of_the_options_the_tiles_were_cut_with(tmp_path):
    raw = tmp_path / "raw"
    write_potsdam(raw, np.random.default_rng(0), size=20, count=1)
    out = tmp_path / "out"
    prepare("potsdam", raw, out, tmp_path / "s1", tile=10, resplit=True)
    (out / ".prepare_options.json").unlink()
    with pytest.raises(DataError, match=r"holds tiles but no record of the options .*--overwrite"):
        prepare("potsdam", raw, out, tmp_path / "s2", tile=10, resplit=True)


def test_a_truncated_raw_jpeg_is_reported_not_filled_with_grey(tmp_path):
    """OpenCV decodes half a JPEG without complaint; only files PIL has no decoder for may go to it."""
    write_deepglobe(tmp_path / "raw", np.random.default_rng(0), size=32, count=2)
    sat = sorted((tmp_path / "raw").rglob("*_sat.jpg"))[0]
    sat.write_bytes(sat.read_bytes()[: sat.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"1 of 2 raw images failed .*cannot read image {sat}: .*runcated"):
        prepare("deepglobe", tmp_path / "raw", tmp_path / "out", tmp_path / "splits", tile=16, resplit=True)


def test_a_tiff_pil_cannot_open_is_read_by_opencv_when_exact(tmp_path):
    import cv2

    from dataset.images import open_rgb

    rgb = np.random.default_rng(0).integers(0, 256, (6, 7, 3)).astype(np.float32)
    cv2.imwrite(str(tmp_path / "a.tif"), rgb[..., ::-1])           # float RGB: no PIL mode
    with pytest.raises((OSError, ValueError)):  # PIL: "cannot identify image file"
        Image.open(tmp_path / "a.tif")
    assert np.array_equal(np.asarray(open_rgb(tmp_path / "a.tif")), rgb.astype(np.uint8))
    cv2.imwrite(str(tmp_path / "b.tif"), rgb[..., ::-1] / 255)
    with pytest.raises(DataError, match=r"b.tif is 32-bit float data in 3 channel\(s\).*convert it to 8-bit"):
        open_rgb(tmp_path / "b.tif")
