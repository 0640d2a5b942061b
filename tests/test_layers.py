"""The code's layers point one way: a module imports only from its own layer or lower ones, and no module
imports itself back through others. The order, lowest first, is written down here and nowhere else:

    util -> methods -> model -> dataset -> eval -> deploy -> train.py -> scripts/, experiments/ (the tools)

Every import counts: at module level, inside functions, and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = (("util",), ("methods",), ("model",), ("dataset",), ("eval",), ("deploy",), ("train",),
          ("scripts", "experiments"))
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def project_modules() -> dict[str, Path]:
    files = [REPO / "train.py"] + [p for top in RANK if (REPO / top).is_dir() for p in (REPO / top).rglob("*.py")]
    return {module_name(p): p for p in files}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports (a package import counts as its __init__)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def test_every_import_points_down_or_sideways():
    modules = project_modules()
    upward = [f"{name} imports {imported}" for name, path in modules.items()
              for imported in imports_of(path, modules)
              if RANK[imported.split(".")[0]] > RANK[name.split(".")[0]]]
    assert upward == []


def test_no_module_imports_itself_back():
    modules = project_modules()
    graph = {name: imports_of(path, modules) - {name} for name, path in modules.items()}
    circles = []

    def visit(name: str, trail: list[str]) -> None:
        for nxt in sorted(graph[name]):
            if nxt == trail[0]:
                circles.append(" -> ".join(trail + [nxt]))
            elif nxt not in trail and nxt > trail[0]:  # each circle once, from its smallest module
                visit(nxt, trail + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert circles == []


def test_the_layer_test_sees_an_upward_import(tmp_path):
    """The check itself: an import of train from util is caught."""
    modules = {"util.bad": tmp_path / "bad.py", "train": REPO / "train.py"}
    modules["util.bad"].write_text("def f():\n    from train import build_state\n")
    assert imports_of(modules["util.bad"], modules) == {"train"}
