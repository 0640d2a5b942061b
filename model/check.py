"""Check the weight files a config names: build the student and the teachers, print parameter counts per part.

    python -m model.check --config configs/loveda.yaml [key.sub=value ...]
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from torch import nn

import methods  # noqa: F401  (registers the training methods a config may name)
from model.segmenter import build_segmenter
from model.teachers import build_teachers
from model.weights import check_weight_files
from util.cli import add_config_args, config_from_args, run_main
from util.config import Config


def count(params: Iterable[nn.Parameter]) -> int:
    """Number of scalars in `params`."""
    return sum(p.numel() for p in params)


def report(cfg: Config) -> list[tuple[str, int]]:
    """(part, parameter count) for every part the config builds, weight files loaded and checked."""
    check_weight_files(cfg.weight_files)
    model = build_segmenter(cfg)
    source = cfg.model.pretrained or "random init"
    rows = [(f"student encoder (DINOv2 {cfg.model.backbone}, {source})", count(model.encoder.parameters())),
            ("DPT head", count(model.head.parameters()))]
    if len(model.translators):
        names = ", ".join(model.translators.keys())
        rows.append((f"translators + projections ({names})",
                     count(model.translators.parameters()) + count(model.projections.parameters())))
    teachers = build_teachers(cfg, "cpu")
    for name, teacher in (teachers.models.items() if teachers else ()):
        t = getattr(cfg.teachers, name)
        rows.append((f"teacher {name} ({t.arch}, {t.weights or 'random init'})", count(teacher.parameters())))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    rows = report(cfg)
    width = max(len(part) for part, _ in rows)
    for part, n in rows:
        print(f"{part:<{width}}  {n / 1e6:9.2f} M")
    if not cfg.distill_teachers:
        print(f"no teachers: train.method={cfg.train.method} does not distil")
    print("ok: every weight file the config names loads")
    return 0


if __name__ == "__main__":
    run_main(main)
