"""Maintainers: make the split lists shipped in splits/ again (users never need this; prepare checks against them).

    python -m dataset.shipped --reference DIR [--out splits] [--replace-lists]

Each dataset's spec says how (dataset/spec.py): Potsdam's and DeepGlobe's from the authors' published lists
under --reference (<dataset>/<percent>/{labeled,unlabeled}.txt, val.txt, test.txt), renamed to the crop names
prepare writes; LoveDA's from its official file names alone. Lists in --out that differ are replaced only with
--replace-lists.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: the repository root, not dataset/, first
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse

from dataset.registry import SPECS
from dataset.splits import SHIPPED, keep_existing, line_counts, write_lists
from util.cli import path_arg, refuse_renamed_flags, run_main
from util.errors import DataError
from util.io import check_output_folder


def reference_crop_name(dataset: str, image_path: str) -> str:
    """The crop name dataset.prepare gives to a tile of the authors' published lists of `dataset`.

    Potsdam 'image/top_potsdam_2_10_7_RGB.tif' -> 'top_potsdam_2_10_7'; DeepGlobe
    'data_cropped/100694_sat_3.jpg' -> '100694_3'. Both number crops 1-based, row-major, as prepare does.
    """
    rename = SPECS[dataset].reference_name if dataset in SPECS else None
    if rename is None:
        raise ValueError(f"no published lists of {dataset} to read {image_path} from")
    return rename(image_path)


def published_lists(reference_dir: str | Path) -> dict[str, dict[str, str]]:
    """{dataset: the texts of its lists in splits/<dataset>}, each made as its spec says (`shipped_lists`)."""
    return {name: spec.shipped_lists(Path(reference_dir)) for name, spec in SPECS.items()
            if spec.shipped_lists is not None}


def main(argv: list[str] | None = None) -> int:
    """Command line: write the shipped lists again."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--reference", type=path_arg, required=True,
                        help="folder of the authors' published lists, holding "
                             + " and ".join(f"{name}/" for name, s in SPECS.items() if s.reference_name))
    parser.add_argument("--out", type=path_arg, default=SHIPPED,
                        help="where to write (default: the repository's splits/)")
    parser.add_argument("--replace-lists", action="store_true",
                        help="replace lists in --out that differ from the regenerated ones (else refused)")
    refuse_renamed_flags(parser, {"--replace-splits": "--replace-lists"})
    args = parser.parse_args(argv)
    for name, spec in SPECS.items():
        if spec.reference_name and not (args.reference / name / "val.txt").is_file():
            raise DataError(f"--reference {args.reference} has no {name}/val.txt: not the published lists' folder")
    check_output_folder(args.out, "--out")
    try:
        texts = published_lists(args.reference)
    except ValueError as e:  # a line that is not a tile name of the published lists
        raise DataError(str(e)) from None
    kept = {dataset: keep_existing(lists, args.out / dataset, args.replace_lists, "--out")
            for dataset, lists in texts.items()}
    for dataset, lists in texts.items():
        if not kept[dataset]:
            write_lists(lists, args.out / dataset)
        print(dataset, "unchanged" if kept[dataset] else "written", line_counts(lists))
    return 0


if __name__ == "__main__":
    run_main(main)
