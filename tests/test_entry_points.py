"""Every command-line entry point starts both ways a user runs it, from any folder: `python path/to/file.py`
and `python -m package.module`; importing one (as the tests do) leaves sys.path alone."""

import ast
import importlib
import subprocess
import sys

import pytest

from tests.train_fixtures import REPO

# (file, module) of each entry point; None: that way of running it is not supported.
ENTRY_POINTS = [
    ("train.py", "train"),
    ("eval/eval.py", "eval.eval"),
    ("deploy/predict.py", "deploy.predict"),
    ("deploy/export.py", "deploy.export"),
    ("scripts/report.py", "scripts.report"),
    ("scripts/benchmark.py", "scripts.benchmark"),
    ("scripts/bench_predict.py", "scripts.bench_predict"),
    ("scripts/bench_int8.py", "scripts.bench_int8"),
    ("scripts/gpu_smoke.py", "scripts.gpu_smoke"),
    ("experiments/learning_check/check.py", "experiments.learning_check.check"),
    ("scripts/reproduce.py", "scripts.reproduce"),
    ("dataset/prepare.py", "dataset.prepare"),
    ("dataset/shipped.py", "dataset.shipped"),
    ("dataset/synthetic.py", "dataset.synthetic"),
    ("experiments/learning_check/scenes.py", "experiments.learning_check.scenes"),
    (None, "model.check"),
    (None, "model.fetch"),
]
# Commands that moved out of eval/: (old file, old module, how the old command is named, the new command, module).
MOVED = [
    ("eval/predict.py", "eval.predict", "eval/predict.py", "python deploy/predict.py", "deploy.predict"),
    ("eval/report.py", "eval.report", "eval/report.py", "python scripts/report.py", "scripts.report"),
    ("eval/export.py", "eval.export", "eval.export", "python -m deploy.export", "deploy.export"),
]
# Modules whose import must not touch sys.path (the shim runs only when the file itself is run).
NO_PATH_EDIT = [m for f, m in ENTRY_POINTS if f is not None]


def invocations():
    for file, module in ENTRY_POINTS:
        if file is not None:
            yield pytest.param(file, None, id=file)
        yield pytest.param(None, module, id=f"-m {module}")


@pytest.mark.slow
@pytest.mark.parametrize("file, module", list(invocations()))
def test_help_works_as_a_file_from_anywhere_and_as_a_module(file, module, tmp_path):
    # A file is run from another folder (by its absolute path); a module from the repository root.
    argv, cwd = ([str(REPO / file)], tmp_path) if file else (["-m", module], REPO)
    done = subprocess.run([sys.executable, *argv, "--help"], cwd=cwd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:") and "Traceback" not in done.stderr


@pytest.mark.slow
def test_importing_an_entry_point_leaves_sys_path_alone():
    code = ("import importlib, sys; before = list(sys.path)\n"
            f"for name in {NO_PATH_EDIT!r}:\n"
            "    importlib.import_module(name)\n"
            "    assert sys.path == before, (name, sys.path[:3])\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_the_command_that_printed_a_resolved_config_says_where_it_went():
    done = subprocess.run([sys.executable, "-m", "util.config", "--config", "configs/demo.yaml"], cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 2 and done.stdout == "" and len(done.stderr.splitlines()) == 1
    assert "python train.py --config configs/demo.yaml --get all" in done.stderr


@pytest.mark.slow
def test_a_library_module_named_like_a_command_says_so_in_one_line():
    done = subprocess.run([sys.executable, "-m", "model.convert", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: model.convert has no command line")


@pytest.mark.parametrize("file, module, old, new, _", MOVED, ids=[m[1] for m in MOVED])
def test_a_moved_command_run_the_old_way_says_where_it_went_in_one_line(file, module, old, new, _, tmp_path):
    for argv, cwd in (([str(REPO / file)], tmp_path), (["-m", module], REPO)):
        done = subprocess.run([sys.executable, *argv, "--config", "c.yaml", "--help"], cwd=cwd, capture_output=True,
                              text=True, timeout=60)
        assert (done.returncode, done.stdout) == (2, "")
        assert done.stderr.splitlines() == [f"error: {old} moved: run {new} with the same arguments"]


@pytest.mark.parametrize("file, module, new_module", [(m[0], m[1], m[4]) for m in MOVED], ids=[m[1] for m in MOVED])
def test_a_moved_module_imports_nothing_of_the_project_and_names_its_new_place(file, module, new_module):
    tree = ast.parse((REPO / file).read_text(encoding="utf-8"))
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
                for alias in node.names]
    assert imported == ["sys"]
    with pytest.raises(ImportError, match=f"moved to {new_module}$"):
        importlib.import_module(module)
