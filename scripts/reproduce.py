"""The published table in one command: every method x labelled split (x seed) trained with scripts/train.sh,
each best.pth scored on the test subset by the published protocol, and the report written.

    sh scripts/reproduce.sh <dataset> <num_gpu> <port> [methods] [splits] [seeds] [key.sub=value ...]
    sh scripts/reproduce.sh potsdam 4 29500                                  # all methods, 1/5/10 %, seed 42
    sh scripts/reproduce.sh deepglobe 8 29500 fixmatch,rs_mtdf 1,5 0,1,2 train.epochs=40
    sh scripts/slurm_reproduce.sh <dataset> [methods] [splits] [seeds] [key.sub=value ...]   # on SLURM

On SLURM (--slurm, what slurm_reproduce.sh runs) the unfinished runs are submitted as one job array of
scripts/slurm_train.sh (an element per run; SBATCH_ARGS adds sbatch options to each, e.g. "--nodes 1
--ntasks-per-node 4 --gpus-per-node 4"), and one job that depends on the array scores every finished run and
writes the report (--score; SBATCH_SCORE_ARGS adds its options). The same checks run before anything is submitted.

methods, splits and seeds are comma-separated (defaults: every method; 1,5,10; the config's seed); arguments
with '=' are config overrides given to every run. Each run goes to $EXP/<method>/<split>/seed<seed> (EXP
defaults to exp/<dataset>); the table and plot to $EXP/report/. CONFIG (default configs/<dataset>.yaml) picks
the config file.

Everything is checked before the first launch: the names, the splits, every run's config, its weight files,
and every run folder already there. A folder whose run was trained with other settings than this command's is refused in
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
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from dataset.splits import split_file, training_list_digests
from methods import METHODS
from model.weights import check_weight_files
from util.cli import from_folder_override, run_main, user_path
from util.config import Config, describe_differences, load_config, parse_override
from util.errors import ConfigError, UserError
from util.io import write_text
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
    argv = list(sys.argv[1:] if argv is None else argv)
    stage = next((a for a in argv[:1] if a in ("--slurm", "--score")), None)
    if stage:
        argv.remove(stage)
    parser = argparse.ArgumentParser(prog="sh scripts/reproduce.sh", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("dataset", help="loveda | potsdam | deepglobe (picks configs/<dataset>.yaml)")
    if stage is None:
        parser.add_argument("num_gpu", type=int, help="processes (GPUs) per run")
        parser.add_argument("port", type=int, help="torchrun's master port")
    parser.add_argument("rest", nargs="*", metavar="[methods] [splits] [seeds] [key.sub=value ...]")
    args = parser.parse_args(argv)
    args.stage = stage
    if stage:
        args.num_gpu, args.port = 1, 0
    overrides = [a for a in args.rest if "=" in a]
    lists = [a for a in args.rest if "=" not in a]
    if len(lists) > 3:
        raise ConfigError(f"unexpected argument '{lists[3]}': methods, splits and seeds are each one "
                          f"comma-separated argument (e.g. fixmatch,rs_mtdf 1,5 0,1)")
    args.methods, args.splits, args.seeds = (lists + [None] * 3)[:3]
    if args.num_gpu < 1:
        raise ConfigError(f"num_gpu {args.num_gpu}: give the number of processes per run, at least 1")
    if not stage and not 1 <= args.port <= 65535:
        raise ConfigError(f"port {args.port}: give a port number (1-65535) for torchrun")
    return args, overrides


def check_methods(text: str | None) -> list[str]:
    methods = comma_list(text, "methods") if text else list(tuple(METHODS))
    for method in methods:
        if method not in tuple(METHODS):
            close = difflib.get_close_matches(method, tuple(METHODS), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"unknown method '{method}'; {hint}methods are {','.join(tuple(METHODS))} "
                              f"(comma-separated)")
    return methods


def check_splits(text: str | None, base: Config) -> list[str]:
    splits = comma_list(text, "splits") if text else ["1", "5", "10"]
    for split in splits:
        if split in tuple(METHODS):
            raise ConfigError(f"'{split}' is a method, not a labelled split: methods are one comma-separated "
                              f"argument (e.g. fixmatch,rs_mtdf)")
        if not split_file(base.dataset.lists, "labeled", split).is_file():
            raise ConfigError(f"split '{split}': no {split_file(base.dataset.lists, 'labeled', split)} "
                              f"(dataset.lists={base.dataset.lists})")
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
        lists = training_list_digests(run.cfg.dataset.lists, run.cfg.dataset.split)
        diffs = saved_setting_differences(run.folder, run.cfg, lists)
        if diffs:
            raise ConfigError(f"{run.folder} holds a run with other settings ({describe_differences(diffs)}); it "
                              f"would not be retrained and its scores would enter the table: remove or move it, or "
                              f"set EXP to another folder for runs with these settings")


def check_weights(runs: list[Run]) -> None:
    """Every weight file any run reads exists (train.py checks the same at its start): one line naming every missing
    file and its key, before a first run is launched or a job submitted."""
    seen: list[dict[str, str | None]] = []
    for run in runs:
        files = run.cfg.weight_files
        if files not in seen and not finished(run):
            seen.append(files)
            check_weight_files(files)


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


def score(run: Run, launch: Launcher) -> bool:
    """The protocol's test score of a finished run's best.pth, unless it is there already; False if it failed."""
    scored = protocol_evaluation(run.folder, split_file(run.cfg.dataset.lists, "test"), PROTOCOL_MODE)
    if scored is not None:
        print(f"test score of this best.pth already there: {scored}", flush=True)
        return True
    # The published protocol: the test split, the run's own resolved config (its model and class exclusions),
    # mode original, the weights best.pth was selected by.
    if launch([sys.executable, "eval/eval.py", "--config", str(run.folder / CONFIG), "--checkpoint",
               str(run.folder / "best.pth"), "--subset", "test", "--mode", PROTOCOL_MODE]) != 0:
        print(f"FAILED: test evaluation of {run.folder}; going on with the others", file=sys.stderr, flush=True)
        return False
    return True


def report(exp: Path, launch: Launcher, failed: list[str]) -> int:
    if launch([sys.executable, "scripts/report.py", str(exp), "--out", str(exp / "report")]) != 0:
        failed.append("report")
    if failed:
        print(f"error: {len(failed)} of the runs failed: {' '.join(failed)}", file=sys.stderr)
        return 1
    print(f"all runs done; table and plot in {exp / 'report'}")
    return 0


def train_here(args: argparse.Namespace, runs: list[Run], overrides: list[str], config: Path, exp: Path) -> int:
    """Train, score and tabulate on this machine, one run at a time."""
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
        if not score(run, launch):
            failed.append(str(run.folder))
    if launch.stopped:
        print("stopped by SIGTERM; run the same command to go on", file=sys.stderr)
        return 0
    return report(exp, launch, failed)


def score_all(runs: list[Run], exp: Path) -> int:
    """--score (the job that depends on the array): score every finished run, then tabulate."""
    launch = Launcher()
    failed = [str(run.folder) for run in runs if not finished(run)]
    for folder in failed:
        print(f"not finished: {folder}", file=sys.stderr, flush=True)
    for run in runs:
        if finished(run) and not score(run, launch):
            failed.append(str(run.folder))
    return report(exp, launch, failed)


def sbatch(options: list[str], env: dict[str, str]) -> str:
    """Submit with sbatch --parsable; the job id (an array's id), or a UserError with sbatch's own line."""
    try:
        done = subprocess.run(["sbatch", "--parsable", *options], capture_output=True, text=True, env=env, cwd=REPO)
    except FileNotFoundError:
        raise UserError("sbatch not found: --slurm submits to a SLURM cluster (here: scripts/reproduce.sh)") from None
    if done.returncode != 0:
        raise UserError(f"sbatch refused the job: {(done.stderr.strip().splitlines() or ['no reason given'])[-1]}")
    return done.stdout.strip().split(";")[0]


def submit(args: argparse.Namespace, argv: list[str], runs: list[Run], overrides: list[str], config: Path,
           exp: Path) -> int:
    """--slurm: the unfinished runs as one job array of scripts/slurm_train.sh, then the scoring job after it."""
    todo = [run for run in runs if not finished(run)]
    env = {**os.environ, "CONFIG": str(config.absolute()), "EXP": str(exp.absolute()), "RS_MTDF_REPO": str(REPO)}
    ids = []
    if todo:
        plan_file = (exp / "slurm" / f"plan-{time.strftime('%Y%m%d-%H%M%S')}.tsv").absolute()
        plan_file.parent.mkdir(parents=True, exist_ok=True)
        write_text(plan_file, "".join("\t".join(run.overrides) + "\n" for run in todo))
        options = [f"--array=0-{len(todo) - 1}", f"--job-name=rs-mtdf-{args.dataset}",
                   f"--output={(exp / 'slurm' / 'train-%A_%a.out').absolute()}",
                   *shlex.split(os.environ.get("SBATCH_ARGS", "")), str(REPO / "scripts" / "slurm_train.sh"),
                   *overrides]
        ids.append(sbatch(options, {**env, "RS_MTDF_PLAN": str(plan_file)}))
        print(f"submitted job array {ids[0]}: {len(todo)} run(s) ({plan_file})")
    for run in runs:
        if run not in todo:
            print(f"finished before with these settings: not retrained: {run.folder}")
    command = shlex.join([sys.executable, "-m", "scripts.reproduce", "--score", *argv])
    options = [*([f"--dependency=afterany:{ids[0]}"] if ids else []), "--ntasks=1",
               f"--job-name=rs-mtdf-{args.dataset}-report", f"--chdir={REPO}",
               f"--output={(exp / 'slurm' / 'report-%j.out').absolute()}",
               *shlex.split(os.environ.get("SBATCH_SCORE_ARGS", "")), f"--wrap={command}"]
    (exp / "slurm").mkdir(parents=True, exist_ok=True)
    report_id = sbatch(options, env)
    print(f"submitted job {report_id}: scores the runs and writes {exp / 'report'} after the array")
    return 0


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    # The shell launchers change to the repository: relative paths of overrides are the user's folder's.
    overrides = [from_folder_override(text, os.environ.get("RS_MTDF_HERE")) for text in overrides]
    config = Path(user_path(os.environ.get("CONFIG") or f"configs/{args.dataset}.yaml"))
    if not config.is_file():
        raise ConfigError(f"config file not found: {config} (set CONFIG=... or use loveda, potsdam, deepglobe)")
    exp = Path(user_path(os.environ.get("EXP") or f"exp/{args.dataset}"))
    runs = plan(args, overrides, config, exp)
    refuse_other_settings(runs)
    check_weights(runs)
    if args.stage == "--slurm":
        given = list(sys.argv[1:] if argv is None else argv)
        return submit(args, [a for a in given if a != "--slurm"], runs, overrides, config, exp)
    if args.stage == "--score":
        return score_all(runs, exp)
    return train_here(args, runs, overrides, config, exp)


if __name__ == "__main__":
    run_main(main)
