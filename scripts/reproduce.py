"""The published table in one command: every method x labelled split (x seed) trained with scripts/train.sh,
each best.pth scored on the test subset by the published protocol, and the report written.

    sh scripts/reproduce.sh <dataset> <num_gpu> <port> [methods] [splits] [seeds] [key.sub=value ...]
    sh scripts/reproduce.sh potsdam 4 29500                                  # all methods, 1/5/10 %, seed 42
    sh scripts/reproduce.sh deepglobe 8 29500 fixmatch,rs_mtdf 1,5 0,1,2 train.epochs=40

methods, splits and seeds are comma-separated (defaults: every method; 1,5,10; the config's seed); arguments
with '=' are config overrides given to every run. Each run goes to $EXP/<method>/<split>/seed<seed> (EXP
defaults to exp/<dataset>); the table and plot to $EXP/report/. CONFIG (default configs/<dataset>.yaml) picks
the config file.

Everything is checked before the first launch: the names, the splits, every run's config, and every run
folder already there. A folder whose run was trained with other settings than this command's is refused in
one line naming the difference (nothing is retrained over it, nothing of it enters the table). Run it again
after an interruption: runs that finished with these settings are not retrained, unfinished ones resume, and
a test score is kept only if it is the protocol's (mode original, the weights best.pth was selected by) of
the run's current best.pth on its current test list. A run that fails is reported and the others go on; the
exit status is 1 if any failed. SIGTERM stops after the current run, which saves (scripts/train.sh).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: the repository root, not scripts/, first
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import difflib
import os
import signal
import subprocess
from dataclasses import dataclass
from typing import Any

from dataset.splits import split_file, training_list_digests
from util.cli import run_main, user_path
from util.config import METHOD_NAMES, Config, describe_differences, load_config, parse_override
from util.errors import ConfigError
from util.run import CONFIG, protocol_evaluation, read_progress, saved_setting_differences

REPO = Path(__file__).resolve().parents[1]
# Keys this command sets per run; an override of one of them would be silently replaced.
PER_RUN = ("train.method", "dataset.split", "train.seed", "save_path")
# The published protocol's test evaluation.
PROTOCOL_MODE = "original"


@dataclass
class Run:
    method: str
    split: str
    seed: int
    folder: Path
    cfg: Config

    @property
    def overrides(self) -> list[str]:
        return [f"train.method={self.method}", f"dataset.split={self.split}", f"train.seed={self.seed}",
                f"save_path={self.folder}"]


def comma_list(text: str, what: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise ConfigError(f"{what} '{text}': an empty item (lists are comma-separated without spaces, e.g. 1,5,10)")
    return items


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="sh scripts/reproduce.sh", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="loveda | potsdam | deepglobe (picks configs/<dataset>.yaml)")
    parser.add_argument("num_gpu", type=int, help="processes (GPUs) per run")
    parser.add_argument("port", type=int, help="torchrun's master port")
    parser.add_argument("rest", nargs="*", metavar="[methods] [splits] [seeds] [key.sub=value ...]")
    args = parser.parse_args(argv)
    overrides = [a for a in args.rest if "=" in a]
    lists = [a for a in args.rest if "=" not in a]
    if len(lists) > 3:
        raise ConfigError(f"unexpected argument '{lists[3]}': methods, splits and seeds are each one "
                          f"comma-separated argument (e.g. fixmatch,rs_mtdf 1,5 0,1)")
    args.methods, args.splits, args.seeds = (lists + [None] * 3)[:3]
    if args.num_gpu < 1:
        raise ConfigError(f"num_gpu {args.num_gpu}: give the number of processes per run, at least 1")
    return args, overrides


def check_methods(text: str | None) -> list[str]:
    methods = comma_list(text, "methods") if text else list(METHOD_NAMES)
    for method in methods:
        if method not in METHOD_NAMES:
            close = difflib.get_close_matches(method, METHOD_NAMES, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"unknown method '{method}'; {hint}methods are {','.join(METHOD_NAMES)} "
                              f"(comma-separated)")
    return methods


def check_splits(text: str | None, base: Config) -> list[str]:
    splits = comma_list(text, "splits") if text else ["1", "5", "10"]
    for split in splits:
        if split in METHOD_NAMES:
            raise ConfigError(f"'{split}' is a method, not a labelled split: methods are one comma-separated "
                              f"argument (e.g. fixmatch,rs_mtdf)")
        if not split_file(base.dataset.splits, "labeled", split).is_file():
            raise ConfigError(f"split '{split}': no {split_file(base.dataset.splits, 'labeled', split)} "
                              f"(dataset.splits={base.dataset.splits})")
    return splits


def check_seeds(text: str | None, base: Config) -> list[int]:
    seeds = comma_list(text, "seeds") if text else [str(base.train.seed)]
    for seed in seeds:
        if not seed.isdigit():
            raise ConfigError(f"seed '{seed}' is not a whole number (seeds are comma-separated, e.g. 0,1,2)")
    return [int(s) for s in seeds]


def plan(args: argparse.Namespace, overrides: list[str], config: Path, exp: Path) -> list[Run]:
    """Every run of the table with its resolved config: all names, splits and values checked here."""
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key in PER_RUN:
            raise ConfigError(f"override '{text}': {key} is set per run by this command (methods, splits and seeds "
                              f"are its arguments; the folder is $EXP/<method>/<split>/seed<seed>)")
    methods = check_methods(args.methods)
    base = load_config(config, overrides + [f"train.method={methods[0]}"])
    seeds, splits = check_seeds(args.seeds, base), check_splits(args.splits, base)
    runs = []
    for method in methods:
        for split in splits:
            for seed in seeds:
                folder = (exp / method / split / f"seed{seed}").absolute()
                run = Run(method, split, seed, folder, base)
                run.cfg = load_config(config, overrides + run.overrides)
                runs.append(run)
    return runs


def refuse_other_settings(runs: list[Run]) -> None:
    """A run folder that holds a run trained with other settings or on other split lists: one line naming it and
    the difference."""
    for run in runs:
        lists = training_list_digests(run.cfg.dataset.splits, run.cfg.dataset.split)
        diffs = saved_setting_differences(run.folder, run.cfg, lists)
        if diffs:
            raise ConfigError(f"{run.folder} holds a run with other settings ({describe_differences(diffs)}); it "
                              f"would not be retrained and its scores would enter the table: remove or move it, or "
                              f"set EXP to another folder for runs with these settings")


def finished(run: Run) -> bool:
    progress = read_progress(run.folder)
    return bool(progress and progress.get("finished"))


class Launcher:
    """Runs the commands one at a time; SIGTERM lets the current one finish (it saves) and launches no more."""

    def __init__(self) -> None:
        self.stopped = False
        self.child: subprocess.Popen | None = None
        signal.signal(signal.SIGTERM, self.stop)

    def stop(self, *_: Any) -> None:
        self.stopped = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def __call__(self, cmd: list[str], env: dict[str, str] | None = None) -> int:
        self.child = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})})
        while True:
            try:
                return self.child.wait()
            except InterruptedError:
                continue


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    config = Path(user_path(os.environ.get("CONFIG") or f"configs/{args.dataset}.yaml"))
    if not config.is_file():
        raise ConfigError(f"config file not found: {config} (set CONFIG=... or use loveda, potsdam, deepglobe)")
    exp = Path(user_path(os.environ.get("EXP") or f"exp/{args.dataset}"))
    runs = plan(args, overrides, config, exp)
    refuse_other_settings(runs)
    launch = Launcher()
    failed = []
    for run in runs:
        if launch.stopped:
            break
        print(f"=== {run.method}, {run.split} % labelled, seed {run.seed} -> {run.folder}", flush=True)
        if finished(run):
            print("finished before with these settings: not retrained", flush=True)
        elif launch(["sh", "scripts/train.sh", str(args.num_gpu), str(args.port), *overrides, *run.overrides],
                    {"CONFIG": str(config)}) != 0:
            print(f"FAILED: training of {run.folder} (see {run.folder / 'out.log'}); going on with the others",
                  file=sys.stderr, flush=True)
            failed.append(str(run.folder))
            continue
        if launch.stopped or not finished(run):
            continue
        scored = protocol_evaluation(run.folder, split_file(run.cfg.dataset.splits, "test"), PROTOCOL_MODE)
        if scored is not None:
            print(f"test score of this best.pth already there: {scored}", flush=True)
            continue
        # The published protocol: the test subset, the run's own resolved config (its model and class
        # exclusions), mode original, the weights best.pth was selected by.
        if launch([sys.executable, "eval/eval.py", "--config", str(run.folder / CONFIG), "--checkpoint",
                   str(run.folder / "best.pth"), "--subset", "test", "--mode", PROTOCOL_MODE]) != 0:
            print(f"FAILED: test evaluation of {run.folder}; going on with the others", file=sys.stderr, flush=True)
            failed.append(str(run.folder))
    if launch.stopped:
        print("stopped by SIGTERM; run the same command to go on", file=sys.stderr)
        return 0
    if launch([sys.executable, "scripts/report.py", str(exp), "--out", str(exp / "report")]) != 0:
        failed.append("report")
    if failed:
        print(f"error: {len(failed)} of the runs failed: {' '.join(failed)}", file=sys.stderr)
        return 1
    print(f"all runs done; table and plot in {exp / 'report'}")
    return 0


if __name__ == "__main__":
    run_main(main)
