"""Table and plot of a set of training runs: best val mIoU (student, EMA), test scores, seeds pooled.

    python scripts/report.py exp/ [more folders ...] [--out report/]

Walks the folders (symbolic links followed) for run folders (config.yaml beside progress.json), reads each run's
progress.json and the metrics.json of its evaluations, prints the table, and writes report.md, report.json and
report.png into --out (default <first folder>/report), together and atomically; a failed write is one line
after the table. mIoU in percent, mean ± sample standard deviation over seeds.

A run is what it is, not where it sits: folders holding one run (one run id, trained with the same settings and
lists: a copy, an archived copy, one folder reached through a link or two of the folders given) count once, the
furthest on, the others listed with the reason; a copy resumed under other settings is a run of its own.
Nothing under the folders is left out without a line: folders that look like runs and cannot be counted, and
evaluations outside run folders, are listed with why.

Every number says where it came from. A test score counts only if its metrics.json scored this run's current
best.pth (the run id and iteration that progress.json names) on the test list the run's config names, with
the same content; any other evaluation (of latest.pth, of an earlier best.pth, of another list) is listed
under "Ignored evaluations" with the reason. The table shows each test score's mode and weights. Seeds are
pooled into one row only where every other setting is the same and they trained on lists of the same content
(progress.json's split_lists); runs that differ in more (FREE_KEYS aside: paths, workers, logging) get rows of
their own, labelled with what differs. Folders that look like runs but cannot be read are listed, never
fatal.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: the repository root, not scripts/, first
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import io
import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO, NamedTuple

from dataset.splits import split_file
from methods import METHODS
from util.cli import path_arg, run_main
from util.config import FREE_KEYS, Config, flatten, method_distils, method_names, read_run_config, under
from util.errors import OutputError, UserError, short_reason
from util.io import check_output_folder, write_files
from util.run import CONFIG, PROGRESS, evaluation_problem, scored_subset

REQUIRED = object()
# The evaluation the published tables use: one forward per tile, the weights best.pth was selected by.
PROTOCOL_MODE = "original"


class SkipRun(Exception):
    """A run folder that cannot be reported; the message is the one-line reason."""


@dataclass
class Run:
    """What the report needs of one run folder, mIoU values in percent."""

    folder: str
    # What the run is, wherever its folder sits: progress.json's run id (copies of a folder share it).
    run_id: str
    dataset: str
    method: str
    split: str
    seed: int | None
    ablation: str
    # Every setting outside FREE_KEYS and the seed: runs pooled into one row must agree on all of them.
    settings: dict[str, Any]
    selected_by: str
    finished: bool
    epoch: int | None
    epochs: int | None
    iteration: int | None
    total_iters: int | None
    wall_seconds: float | None
    best_student: float | None
    best_student_epoch: int | None
    best_ema: float | None
    best_ema_epoch: int | None
    test: dict[str, Any] | None = None
    evals: list[dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------
# Finding and reading runs


@dataclass
class Found:
    """What a walk of the folders found: each run folder once (as first reached), the folders that look like
    runs but cannot be one, and evaluations outside any run folder, each with why."""

    runs: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    stray_evals: list[tuple[str, str]] = field(default_factory=list)


def find_run_folders(roots: list[Path]) -> Found:
    """Run folders under `roots` (sorted; symbolic links followed), each real folder once: one reached again (a
    link to it, a root inside another, one folder given twice) is a line of `skipped`, as is a folder that looks
    like a run without being one; metrics.json files outside run folders are lines of `stray_evals`."""
    found = Found()
    first: dict[str, Path] = {}  # real path -> the path it was first reached by

    def unreadable(error: OSError) -> None:
        found.skipped.append((str(error.filename), f"cannot be read ({error.strerror or error}): not searched"))

    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
            folder = Path(dirpath)
            real = os.path.realpath(folder)
            if real in first:
                dirnames[:] = []
                if first[real] != folder:
                    found.skipped.append((str(folder), f"the same folder as {first[real]} (a symbolic link, or a "
                                                       f"folder given twice): counted once, there"))
                continue
            first[real] = folder
            # Links last: a folder is named by its own path where the walk can reach it both ways.
            dirnames.sort(key=lambda d: (os.path.islink(os.path.join(dirpath, d)), d))
            names = set(filenames)
            checkpoints = sorted(names & {"latest.pth", "best.pth"})
            if CONFIG in names and PROGRESS in names:
                found.runs.append(folder)
            elif PROGRESS in names:
                found.skipped.append((str(folder), f"has {PROGRESS} but no {CONFIG}"))
            elif CONFIG in names and (checkpoints or "train.log" in names):
                found.skipped.append((str(folder), f"has {CONFIG} but no {PROGRESS} (a run from before it existed?)"))
            elif checkpoints:
                found.skipped.append((str(folder), f"has {' and '.join(checkpoints)} but no {CONFIG} or {PROGRESS}: "
                                                   f"not a run folder train.py wrote"))
            if "metrics.json" in names and not all((folder.parent / n).is_file() for n in (CONFIG, PROGRESS)):
                found.stray_evals.append((str(folder), "not in a run folder: an evaluation counts from a folder "
                                                       "directly inside its run's folder (beside progress.json)"))
    return found


def _lookup(raw: dict[str, Any], key: str, default: Any = REQUIRED) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is REQUIRED:
                raise SkipRun(f"{CONFIG} has no '{key}'")
            return default
        node = node[part]
    return node


def ablation_label(raw: dict[str, Any]) -> str:
    """rs_mtdf: 'dino+clip' | 'dino only' | 'clip only' [', no fusion'] [', teachers: <folder>']; others: '-'."""
    method = _lookup(raw, "train.method")
    if method in METHODS and not METHODS[method].unlabeled:
        # The baseline on the semi-supervised schedule makes other steps than the reference one: its own row.
        protocol = _lookup(raw, "train.supervised_protocol", "reference")
        return "-" if protocol == "reference" else str(protocol).replace("_", " ")
    if not method_distils(method):
        return "-"
    enabled = [name for name in ("dino", "clip") if _lookup(raw, f"teachers.{name}.enabled", True)]
    label = {("dino", "clip"): "dino+clip", ("dino",): "dino only", ("clip",): "clip only"}.get(tuple(enabled),
                                                                                                  "no teachers")
    fusion = _lookup(raw, "distill.fusion_weights", Config().distill.fusion_weights)
    if enabled and isinstance(fusion, dict) and not any(fusion.get(name, 0.0) for name in enabled):
        label += ", no fusion"
    if enabled:
        default = getattr(Config().teachers, enabled[0]).weights
        weights = _lookup(raw, f"teachers.{enabled[0]}.weights", default)
        # Random-teacher controls differ from the real run only in where the teacher weights come from:
        # they must get a row of their own.
        if weights is None:
            label += ", teachers: random init"
        else:
            folder = Path(str(weights)).parent.name or "."
            if folder != "pretrained":
                label += f", teachers: {folder}"
    return label


def read_config(folder: Path) -> dict[str, Any]:
    """The fields of config.yaml the report needs: dataset, method, split, seed, ablation, best_by, settings."""
    try:
        raw = read_run_config(folder / CONFIG)
    except UserError as e:
        # The message names the file by its full path; the skipped list names the folder already.
        raise SkipRun(short_reason(e).replace(str(folder / CONFIG), CONFIG)) from None
    dataset, method, split = (_lookup(raw, k) for k in ("dataset.name", "train.method", "dataset.split"))
    for key, value in (("dataset.name", dataset), ("train.method", method)):
        if not isinstance(value, str) or not value:
            raise SkipRun(f"{CONFIG}: '{key}' is {value!r}, not a name")
    if isinstance(split, bool) or not isinstance(split, (str, int)):
        raise SkipRun(f"{CONFIG}: 'dataset.split' is {split!r}, not a labelled percent")
    seed = _lookup(raw, "train.seed", None)
    lists = _lookup(raw, "dataset.lists", None)
    return {"dataset": dataset, "method": method, "split": str(split),
            "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            "ablation": ablation_label(raw), "best_by": str(_lookup(raw, "train.best_by", Config().train.best_by)),
            "settings": {k: v for k, v in flatten(raw).items() if not under(k, FREE_KEYS + ("train.seed",))},
            "test_list": split_file(lists, "test") if isinstance(lists, str) else None,
            "home": run_home(raw, dataset, method, str(split))}


def run_home(raw: dict[str, Any], dataset: str, method: str, split: str) -> str | None:
    """The real path of the folder the run was trained in (its config's save_path), None where that is unknown."""
    save_path = _lookup(raw, "save_path", None)
    try:
        return os.path.realpath(str(save_path).format(dataset=dataset, method=method, split=split))
    except (KeyError, IndexError, ValueError):
        return None


def _number(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SkipRun(f"{what} is {value!r}, not a number")
    return float(value)


def _int(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SkipRun(f"{what} is {value!r}, not an integer")
    return value


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SkipRun(f"{path.name} is not readable JSON ({short_reason(e)})") from None


def read_progress(path: Path) -> dict[str, Any]:
    """progress.json as written by train.py, checked field by field: scores (percent), epochs, iterations, wall
    time, whether the run has finished, and which checkpoint best.pth is."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise SkipRun(f"{PROGRESS} is not a JSON object")
    for key in ("best", "finished", "run_id"):
        if key not in data:
            raise SkipRun(f"{PROGRESS} has no '{key}'")
    best = data["best"]
    if not isinstance(best, dict):
        raise SkipRun(f"{PROGRESS} has no 'best' object")
    out: dict[str, Any] = {"raw": data}
    for which in ("student", "ema"):
        entry = best.get(which) or {}
        if not isinstance(entry, dict):
            raise SkipRun(f"{PROGRESS}: best.{which} is not an object")
        out[f"best_{which}"] = _number(entry.get("miou"), f"{PROGRESS} best.{which}.miou")
        out[f"best_{which}_epoch"] = _int(entry.get("epoch"), f"{PROGRESS} best.{which}.epoch")
    if not isinstance(data["run_id"], str) or not data["run_id"]:
        raise SkipRun(f"{PROGRESS}: run_id is {data['run_id']!r}, not a run's id")
    out.update(run_id=data["run_id"], finished=bool(data["finished"]),
               epoch=_int(data.get("epoch"), f"{PROGRESS} epoch"),
               epochs=_int(data.get("epochs"), f"{PROGRESS} epochs"),
               iteration=_int(data.get("iteration"), f"{PROGRESS} iteration"),
               total_iters=_int(data.get("total_iters"), f"{PROGRESS} total_iters"),
               wall_seconds=_number(data.get("wall_seconds"), f"{PROGRESS} wall_seconds"),
               selected_by=data.get("selected_by") if data.get("selected_by") in ("student", "ema") else None)
    return out


def read_evals(folder: Path, progress: dict[str, Any], test_list: Path | None
               ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """The metrics.json of direct subfolders that scored this run's best.pth (scores in percent), and the others
    as (folder, why it is ignored)."""
    evals, ignored = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and (p / "metrics.json").is_file()):
        try:
            data = _read_json(sub / "metrics.json")
            if not isinstance(data, dict) or scored_subset(data) not in ("val", "test"):
                raise SkipRun("metrics.json has no 'subset' of val or test")
            problem = evaluation_problem(progress, data, test_list)
            if problem:
                raise SkipRun(problem)
            evals.append({"folder": str(sub), "subset": scored_subset(data), "mode": data.get("mode"),
                          "weights": data.get("weights"), "checkpoint": data["checkpoint"],
                          **{k: _number(data.get(k), f"metrics.json {k}") for k in ("miou", "mean_f1", "oa", "kappa")}})
        except SkipRun as e:
            ignored.append((str(sub), str(e)))
    return evals, ignored


def pick_test(evals: list[dict[str, Any]], selected_by: str) -> dict[str, Any] | None:
    """The test score to report: the published protocol's (mode original, the weights best.pth was selected by)
    if there is one, else the closest (the table shows its mode and weights)."""
    tests = [e for e in evals if e["subset"] == "test" and e["miou"] is not None]
    tests.sort(key=lambda e: (e["mode"] != PROTOCOL_MODE, e["weights"] != selected_by, e["folder"]))
    return tests[0] if tests else None


class ReadRun(NamedTuple):
    """A run as read from its folder: the Run, its evaluations not counted (folder, why), and what its
    evaluations are judged by (progress.json as read, the test list its config names)."""

    run: Run
    ignored: list[tuple[str, str]]
    progress: dict[str, Any]
    test_list: Path | None
    home: bool  # the folder is the one the run was trained in (its save_path), not a copy elsewhere


def read_run(folder: Path) -> ReadRun:
    """One run folder and the evaluations in it that are ignored; raises SkipRun when it cannot be reported."""
    cfg = read_config(folder)
    state = read_progress(folder / PROGRESS)
    raw = state.pop("raw")
    state["selected_by"] = state["selected_by"] or cfg["best_by"]
    evals, ignored = read_evals(folder, raw, cfg["test_list"])
    settings = dict(cfg["settings"])
    lists = raw.get("split_lists")
    if isinstance(lists, dict) and lists:
        # Seeds pool only where they trained on the same lists, not merely on lists at the same path.
        settings["split_lists"] = {kind: str(digest)[:12] for kind, digest in sorted(lists.items())}
    run = Run(folder=str(folder), dataset=cfg["dataset"], method=cfg["method"], split=cfg["split"], seed=cfg["seed"],
              ablation=cfg["ablation"], settings=settings, **state, evals=evals)
    run.test = pick_test(evals, run.selected_by)
    return ReadRun(run, ignored, raw, cfg["test_list"], os.path.realpath(folder) == cfg["home"])


def count_once(read: list[ReadRun]) -> tuple[list[Run], list[tuple[str, str]], list[tuple[str, str]]]:
    """Each run once, whatever folders hold it: folders of one run id, seed, settings and lists (a copy, an
    archived copy beside the original) are counted as the one furthest on (finished first, then the latest
    iteration; of equals, the one it was trained in, else the first found), the others listed with why; the
    evaluations in the copies count where they scored the run's best.pth, an evaluation found twice once.
    Returns the runs, the folders not counted and the evaluations not counted, (folder, why) each."""
    groups: dict[tuple[str, str], list[ReadRun]] = {}
    for entry in read:
        # A copy resumed under other settings (--resume-changed) or on other lists is another run from there on.
        what = json.dumps([entry.run.seed, entry.run.settings], sort_keys=True, default=str)
        groups.setdefault((entry.run.run_id, what), []).append(entry)
    runs, copies, ignored = [], [], []
    for group in groups.values():
        kept = max(group, key=lambda e: (e.run.finished, e.run.iteration or -1, e.home, -group.index(e)))
        run = kept.run
        ignored += kept.ignored
        for other in group:
            if other is kept:
                continue
            moment = (other.run.finished, other.run.iteration) == (run.finished, run.iteration)
            copies.append((other.run.folder, (
                f"a copy of the run in {run.folder} (run id {run.run_id}, the same iteration): counted there"
                if moment else f"an earlier copy of the run in {run.folder} (run id {run.run_id}: iteration "
                               f"{other.run.iteration} here, {run.iteration} there): counted there")))
            evals, not_counted = read_evals(Path(other.run.folder), kept.progress, kept.test_list)
            run.evals += evals
            ignored += not_counted
        run.evals, twice = once_each(run.evals)
        ignored += twice
        run.test = pick_test(run.evals, run.selected_by)
        runs.append(run)
    return runs, copies, ignored


def once_each(evals: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """The evaluations with every one found twice (a copied folder: the same scores of the same checkpoint)
    kept once, and the second finds as (folder, why)."""
    kept: list[dict[str, Any]] = []
    again = []
    for entry in evals:
        content = {k: v for k, v in entry.items() if k != "folder"}
        twin = next((k for k in kept if {key: v for key, v in k.items() if key != "folder"} == content), None)
        if twin is None:
            kept.append(entry)
        else:
            again.append((entry["folder"], f"the same evaluation as {twin['folder']} (a copy): counted once"))
    return kept, again


# ----------------------------------------------------------------------------------------------------------
# Pooling seeds into rows


def _split_key(split: str) -> tuple[int, float, str]:
    try:
        return 0, float(split), split
    except ValueError:
        return 1, 0.0, split


def row_key(row: dict[str, Any]) -> tuple:
    """Sort order: dataset, split (numeric), method (baselines first), full method before its ablations."""
    method = row["method"]
    names = method_names()
    rank = names.index(method) if method in names else len(names)
    return (row["dataset"], _split_key(row["split"]), rank, method,
            row["ablation"] not in ("-", "dino+clip"), row["ablation"])


def stats(values: list[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1) of the known values; std is null for fewer than two."""
    known = [v for v in values if v is not None]
    return {"mean": statistics.fmean(known) if known else None,
            "std": statistics.stdev(known) if len(known) > 1 else None, "n": len(known), "values": values}


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def setting_groups(members: list[Run]) -> list[tuple[str, list[Run]]]:
    """`members` (runs of one dataset, method, split and ablation) split into groups of equal settings, each
    with a label of its values of the keys that differ between the groups ('' when there is one group)."""
    groups: list[list[Run]] = []
    for run in members:
        for group in groups:
            if group[0].settings == run.settings:
                group.append(run)
                break
        else:
            groups.append([run])
    if len(groups) == 1:
        return [("", groups[0])]
    keys = sorted({k for g in groups for k in set(g[0].settings) | set(groups[0][0].settings)
                   if g[0].settings.get(k) != groups[0][0].settings.get(k)})
    return [(", ".join(f"{k}={_shown(g[0].settings.get(k))}" for k in keys), g) for g in groups]


def build_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per (dataset, method, split, ablation, settings) with the runs' seeds pooled, sorted for the table.

    Seeds are pooled only where everything else is the same: runs of one ablation that differ in other
    settings get a row each, whose `differs` names the values that set it apart.
    """
    groups: dict[tuple[str, str, str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.dataset, run.method, run.split, run.ablation), []).append(run)
    rows = []
    for (dataset, method, split, ablation), candidates in groups.items():
        for differs, members in setting_groups(candidates):
            members.sort(key=lambda r: (r.seed is None, r.seed or 0, r.folder))
            tests = [r.test for r in members]
            walls = [r.wall_seconds for r in members]
            rows.append({
                "dataset": dataset, "method": method, "ablation": ablation, "differs": differs, "split": split,
                "seeds": [r.seed for r in members], "n": len(members),
                "in_progress": [r.folder for r in members if not r.finished],
                "best_val_student": {**stats([r.best_student for r in members]),
                                     "epochs": [r.best_student_epoch for r in members]},
                "best_val_ema": {**stats([r.best_ema for r in members]),
                                 "epochs": [r.best_ema_epoch for r in members]},
                "test_miou": stats([t["miou"] if t else None for t in tests]),
                "test_mean_f1": stats([t["mean_f1"] if t else None for t in tests]),
                "test_weights": [t["weights"] if t else None for t in tests],
                "test_modes": [t["mode"] if t else None for t in tests],
                "iterations": [r.iteration for r in members], "total_iters": [r.total_iters for r in members],
                "wall_seconds": {**stats(walls), "unknown": sum(w is None for w in walls)},
                "runs": [asdict(r) for r in members],
            })
    return sorted(rows, key=row_key)


# ----------------------------------------------------------------------------------------------------------
# Rendering


def _score(s: dict[str, Any], total: int) -> str:
    if s["mean"] is None:
        return "-"
    text = f"{s['mean']:.2f}" + (f" ± {s['std']:.2f}" if s["std"] is not None else "")
    return text + (f" ({s['n']} of {total})" if s["n"] < total else "")


def _epochs(epochs: list[int | None]) -> str:
    known = [str(e) for e in epochs if e is not None]
    if not known:
        return ""
    return f" (ep {known[0]})" if len(set(known)) == 1 else f" (ep {', '.join(known)})"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _iterations(row: dict[str, Any]) -> str:
    texts = []
    for run in row["runs"]:
        it, total = run["iteration"], run["total_iters"]
        text = "?" if it is None else str(it) if run["finished"] or total is None else f"{it}/{total}"
        if text not in texts:
            texts.append(text)
    return ", ".join(texts)


def table_cells(row: dict[str, Any]) -> list[str]:
    """The markdown cells of one row, in the order of HEADER."""
    n = row["n"]
    in_progress = set(row["in_progress"])
    seeds = ", ".join(("?" if r["seed"] is None else str(r["seed"])) + ("*" if r["folder"] in in_progress else "")
                      for r in row["runs"])
    how = sorted({f"{m}, {w}" for m, w in zip(row["test_modes"], row["test_weights"]) if m and w})
    test = _score(row["test_miou"], n)
    if how:
        test += f" ({'; '.join(how)})"
    wall = row["wall_seconds"]
    wall_text = "unknown" if wall["mean"] is None else _duration(wall["mean"]) + (
        f" ({wall['unknown']} unknown)" if wall["unknown"] else "")
    ablation = row["ablation"] + (f" [{row['differs']}]" if row["differs"] else "")
    return [row["dataset"], row["method"], ablation, row["split"], f"{n} ({seeds})",
            _score(row["best_val_student"], n) + _epochs(row["best_val_student"]["epochs"]),
            _score(row["best_val_ema"], n) + _epochs(row["best_val_ema"]["epochs"]),
            test, _score(row["test_mean_f1"], n), _iterations(row), wall_text]


HEADER = ["dataset", "method", "ablation", "labelled %", "seeds (n)", "best val mIoU student",
          "best val mIoU EMA", "test mIoU (mode, weights)", "test mF1", "iterations", "wall time / run"]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The table of rows in markdown, scores right-aligned."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * 4 + "---:|" * (len(HEADER) - 4)]
    lines += ["| " + " | ".join(table_cells(row)) + " |" for row in rows]
    if not rows:
        lines.append("| " + " | ".join(["-"] * len(HEADER)) + " |")
    return "\n".join(lines)


def render_markdown(rows: list[dict[str, Any]], skipped: list[tuple[str, str]], ignored: list[tuple[str, str]],
                    roots: list[Path], plot_title: str) -> str:
    """report.md: the table, its footnotes, the plot, the skipped folders and the ignored evaluations."""
    lines = [f"# Training runs in {', '.join(str(r) for r in roots)}", "",
             ("Scores in percent: mean ± sample standard deviation over seeds (no ± for one seed; \"k of n\": only "
              "k runs have the score). (ep E): 1-based epoch of the best validation score, per seed. A test score is "
              "that of the run's current best.pth on the run's test list; the protocol's (mode original, the "
              "weights that chose best.pth) where there is one. [key=value]: what sets runs of one ablation apart; "
              "seeds are pooled only where nothing else differs."), "", markdown_table(rows), ""]
    if any(row["in_progress"] for row in rows):
        lines += ["\\* in progress: the run has not finished (seed marked `*`); its numbers are those so far.", ""]
    lines += [f"![{plot_title}](report.png)", "", "## Skipped folders", ""]
    lines += [f"- `{folder}`: {reason}" for folder, reason in skipped] or ["None."]
    lines += ["", "## Ignored evaluations", ""]
    lines += [f"- `{folder}`: {reason}" for folder, reason in ignored] or ["None."]
    return "\n".join(lines) + "\n"


def plot_metric(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """Which score the plot shows: test mIoU where every run has one, else best val mIoU of the student."""
    if rows and all(r["test_miou"]["n"] == r["n"] for r in rows):
        weights = sorted({w for r in rows for w in r["test_weights"]})
        return "test_miou", f"test mIoU ({'/'.join(weights)} weights)"
    return "best_val_student", "best val mIoU (student)"


def _line_label(row: dict[str, Any]) -> str:
    return row["method"] + ("" if row["ablation"] == "-" else f" ({row['ablation']})")


def plot_report(rows: list[dict[str, Any]], key: str, title: str, path: Path | BinaryIO) -> None:
    """Plot mIoU against labelled fraction: one subplot per dataset, one line per method (+ ablation)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows}) or ["no runs"]
    cols = min(len(datasets), 3)
    nrows = math.ceil(len(datasets) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.5 * cols, 4.2 * nrows), squeeze=False)
    # More axes than datasets when the grid is not full: the spare ones are blanked below.
    for ax, dataset in zip(axes.flat, datasets, strict=False):
        mine = [r for r in rows if r["dataset"] == dataset]
        # Categorical positions: the splits are 1, 5, 10 (and 100), roughly evenly spaced on a log scale.
        splits = sorted({r["split"] for r in mine}, key=_split_key)
        for label in dict.fromkeys(_line_label(r) for r in mine):
            points = [(splits.index(r["split"]), r[key]["mean"], r[key]["std"] or 0.0) for r in mine
                      if _line_label(r) == label and r[key]["mean"] is not None]
            if points:
                xs, ys, es = zip(*points, strict=True)
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label)
        ax.set_xticks(range(len(splits)), splits)
        ax.set_xlim(-0.5, max(len(splits) - 0.5, 0.5))
        ax.set_xlabel("labelled %")
        ax.set_ylabel("mIoU (%)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            # Beside the axes: inside, a long list of ablations hides the curves it labels.
            ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    for ax in list(axes.flat)[len(datasets):]:
        ax.axis("off")
    fig.suptitle(f"{title}, mean ± std over seeds")
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_report(out: Path, rows: list[dict[str, Any]], skipped: list[tuple[str, str]],
                 ignored: list[tuple[str, str]], roots: list[Path]) -> None:
    """report.md, report.json and report.png, rendered first and written together (util.io.write_files)."""
    key, title = plot_metric(rows)
    summary = {"unit": "percent", "roots": [str(r) for r in roots], "plot": {"metric": key, "title": title},
               "rows": rows, "skipped": [{"folder": f, "reason": why} for f, why in skipped],
               "ignored_evaluations": [{"folder": f, "reason": why} for f, why in ignored]}
    png = io.BytesIO()
    plot_report(rows, key, title, png)
    write_files(out, {"report.md": render_markdown(rows, skipped, ignored, roots, title).encode("utf-8"),
                      "report.json": (json.dumps(summary, indent=2) + "\n").encode("utf-8"),
                      "report.png": png.getvalue()})


# ----------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The folders to search and --out."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=path_arg,
                        help="folders searched recursively for run folders (config.yaml beside progress.json), "
                             "e.g. exp/")
    parser.add_argument("--out", type=path_arg,
                        help="output folder for report.md, report.json, report.png (default: <first folder>/report)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Find the runs, pool them into rows, write report.md, report.json and report.png; 0 on success."""
    args = parse_args(argv)
    for folder in args.folders:
        if not folder.is_dir():
            raise UserError(f"folder not found: {folder}")
    found = find_run_folders(args.folders)
    if not found.runs:
        raise UserError(f"no run folder (config.yaml beside progress.json) under "
                        f"{', '.join(str(f) for f in args.folders)}")
    out = check_output_folder(args.out or args.folders[0] / "report", "--out")
    read, skipped = [], list(found.skipped)
    for folder in found.runs:
        try:
            read.append(read_run(folder))
        except SkipRun as e:
            skipped.append((str(folder), str(e)))
    runs, copies, ignored = count_once(read)
    skipped, ignored = sorted(skipped + copies), found.stray_evals + ignored
    rows = build_rows(runs)
    # Shown before the files are written: a full disk loses the files, not what was tabulated.
    print(markdown_table(rows))
    counted = (f"{len(runs)} run(s) in {len(rows)} row(s), {len(skipped)} folder(s) skipped, {len(ignored)} "
               f"evaluation(s) ignored")
    try:
        write_report(out, rows, skipped, ignored, args.folders)
    except OutputError as e:
        raise OutputError(f"{e}; the table above is what was computed: {counted}") from None
    print(f"{counted} (see report.md); written to {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
