"""The architecture's promises: a pure library, layers that import one way, one door to MLflow, no import
with a side effect, clean code."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_library_imports_neither_prefect_nor_mlflow():
    code = (
        "import json, sys, pkgutil, importlib, training\n"
        "for m in pkgutil.walk_packages(training.__path__, 'training.'): importlib.import_module(m.name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'mlflow'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


# each layer imports only from itself and the layers before it
LAYERS = ("training", "tasks", "flows", "ops", "benchmarks")


def _modules(path: Path) -> set[str]:
    """Every module an import statement in ``path`` names, anywhere in the file (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _imports(path: Path) -> set[str]:
    return {name.split(".")[0] for name in _modules(path)}


def _project_files() -> dict[str, Path]:
    files = {}
    for folder in LAYERS:
        for p in (REPO / folder).rglob("*.py"):
            parts = p.relative_to(REPO).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return files


def test_only_the_tracking_module_imports_mlflow():
    importers = sorted(str(p.relative_to(REPO)) for p in _project_files().values() if "mlflow" in _imports(p))
    assert importers == ["tasks/tracking.py"]


def test_layers_import_one_way():
    wrong = []
    for module, path in _project_files().items():
        layer = LAYERS.index(module.split(".")[0])
        for imported in _imports(path) & set(LAYERS):
            if LAYERS.index(imported) > layer:
                wrong.append(f"{path.relative_to(REPO)} imports {imported}")
    assert wrong == []


def test_no_import_circle():
    files = _project_files()
    graph = {m: {n for n in _modules(p) if n in files and n != m} for m, p in files.items()}
    # a package imports its own submodules' names through itself; count only module-to-module edges
    done, path = set(), []

    def visit(module: str) -> None:
        if module in path:
            raise AssertionError("import circle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        path.append(module)
        for nxt in sorted(graph[module]):
            visit(nxt)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_importing_any_package_leaves_the_environment_alone():
    # third-party packages first (they may set their own variables), then every module of ours
    code = (
        "import os, json, importlib, pkgutil\n"
        "import torch, prefect, mlflow, matplotlib, pandas\n"
        "before = dict(os.environ)\n"
        "for name in ('training', 'tasks', 'flows', 'ops'):\n"
        "    package = importlib.import_module(name)\n"
        "    for m in pkgutil.walk_packages(package.__path__, name + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "after = dict(os.environ)\n"
        "print(json.dumps({k: [before.get(k), after.get(k)] for k in before.keys() | after.keys()"
        " if before.get(k) != after.get(k)}))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "PREFECT_", "MLFLOW_"))}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}


def test_the_recorder_and_the_upload_run_without_prefect():
    code = (
        "import sys, json, tasks.recorder, ops.upload\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_library_source_has_no_prefect_or_mlflow_import_even_inside_functions():
    for p in (REPO / "training").rglob("*.py"):
        assert not _imports(p) & {"prefect", "mlflow"}, p


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff(args):
    ruff = Path(sys.executable).with_name("ruff")
    out = subprocess.run([str(ruff), *args], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
