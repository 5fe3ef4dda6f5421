"""The architecture's promises: a pure library, one door to MLflow, clean code."""

from __future__ import annotations

import ast
import json
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


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_tracking_module_imports_mlflow():
    importers = sorted(
        str(p.relative_to(REPO))
        for folder in ("training", "tasks", "flows")
        for p in (REPO / folder).rglob("*.py")
        if "mlflow" in _imports(p)
    )
    assert importers == ["tasks/tracking.py"]


def test_library_source_has_no_prefect_or_mlflow_import_even_inside_functions():
    for p in (REPO / "training").rglob("*.py"):
        assert not _imports(p) & {"prefect", "mlflow"}, p


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff(args):
    ruff = Path(sys.executable).with_name("ruff")
    out = subprocess.run([str(ruff), *args], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
