"""Every command-line entry point starts both ways a user runs it, from any folder: `python path/to/file.py`
and `python -m package.module`; importing one (as the tests do) leaves sys.path alone."""

import ast
import importlib
import json
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


# Every command line of this module, run as the interpreter runs it: runpy.run_path is what `python FILE` does
# (FILE's folder first on sys.path), runpy.run_module(alter_sys=True) what `python -m MODULE` does (the current
# folder first). Each runs in a child forked from one process that has imported the entry points as modules from
# the repository root (noting any that edits sys.path), so the libraries they use are imported once (a new
# interpreter takes seconds to import torch and the rest on 2 cores, and this module ran 37 of them), then
# forgotten every module of the repository and taken the repository off sys.path: each child imports the project
# afresh, so a file that does not put the repository root first, or a module that does not run as a command,
# fails as it would in a new interpreter. Prints {"edits": [modules], "runs": {key: [status, stdout, stderr]}}.
LAUNCHER = r"""
import importlib, io, json, os, runpy, sys, tempfile, traceback
repo, todo = sys.argv[1], json.loads(sys.argv[2])
before, edits = list(sys.path), []
for name in {warm!r}:
    importlib.import_module(name)
    if sys.path != before:
        edits.append(name)
        sys.path[:] = before
# A virtual environment may live inside the repository (.venv, CI's .ci/venv): its libraries are not ours.
installed = tuple(os.path.join(p, "") for p in (sys.prefix, sys.base_prefix, sys.exec_prefix))
def ours(module):   # every package of the repository has an __init__.py, so a __file__
    file = str(getattr(module, "__file__", None) or "")
    return file.startswith(repo + os.sep) and not file.startswith(installed)
for name in [n for n, m in list(sys.modules.items()) if ours(m)]:
    del sys.modules[name]
base = [p for p in sys.path if p not in ("", repo)]
importlib.invalidate_caches()
results = {{}}
for key, (argv, cwd) in todo.items():
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.stdout, sys.stderr = io.TextIOWrapper(os.fdopen(1, "wb")), io.TextIOWrapper(os.fdopen(2, "wb"))
        os.chdir(cwd)
        code = 0
        try:
            if argv[0] == "-m":
                sys.path[:], sys.argv = [cwd, *base], ["-m", *argv[2:]]
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                sys.path[:], sys.argv = [os.path.dirname(argv[0]), *base], list(argv)
                runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
            if not isinstance(stop.code, int | None):
                print(stop.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    out.seek(0)
    err.seek(0)
    results[key] = [os.waitstatus_to_exitcode(status), out.read().decode(), err.read().decode()]
print(json.dumps({{"edits": edits, "runs": results}}))
"""


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> dict:
    """Every command of this module, run once by LAUNCHER: `--help` of each entry point both ways (a file by its
    absolute path from another folder, a module from the repository root), and library modules run as commands;
    {"edits": [modules whose import edited sys.path], "runs": {key: (exit status, stdout, stderr)}}."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    commands = {}
    for param in invocations():
        file, module = param.values
        commands[param.id] = ([str(REPO / file), "--help"], elsewhere) if file else (["-m", module, "--help"], REPO)
    commands["util.config"] = (["-m", "util.config", "--config", "configs/demo.yaml"], REPO)
    commands["model.convert"] = (["-m", "model.convert", "--help"], REPO)
    todo = {key: (argv, str(cwd)) for key, (argv, cwd) in commands.items()}
    code = LAUNCHER.format(warm=NO_PATH_EDIT + ["model.check", "model.fetch", "util.config", "model.convert"])
    done = subprocess.run([sys.executable, "-c", code, str(REPO), json.dumps(todo)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("file, module", list(invocations()))
def test_help_works_as_a_file_from_anywhere_and_as_a_module(file, module, ran, request):
    code, out, err = ran["runs"][request.node.callspec.id]
    assert code == 0, err
    assert out.startswith("usage:") and "Traceback" not in err


@pytest.mark.slow
def test_importing_an_entry_point_leaves_sys_path_alone(ran):
    assert [name for name in ran["edits"] if name in NO_PATH_EDIT] == []


@pytest.mark.slow
def test_the_command_that_printed_a_resolved_config_says_where_it_went(ran):
    code, out, err = ran["runs"]["util.config"]
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "python train.py --config configs/demo.yaml --get all" in err


@pytest.mark.slow
def test_a_library_module_named_like_a_command_says_so_in_one_line(ran):
    code, out, err = ran["runs"]["model.convert"]
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: model.convert has no command line")


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
