"""The process boundary in the source: app/ never imports the heavy engine stack, engine/ and kernels/ never Qt."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "transformers", "cupy", "bitsandbytes", "accelerate", "safetensors"}
QT = {"PySide6", "pyqtgraph", "shiboken6", "qtpy"}
# app/ may use these parts of the engine package, which import nothing heavy.
APP_MAY_IMPORT_FROM_ENGINE = {"engine", "engine.protocol", "engine.client", "engine.errors"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _python_files(package: str):
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", ["engine", "kernels"])
def test_engine_and_kernels_never_import_qt(package):
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if n.split(".")[0] in QT)
                 for p in _python_files(package)}
    assert not {k: v for k, v in offenders.items() if v}


def test_app_imports_no_heavy_module_and_only_the_light_engine_modules():
    offenders = {}
    for path in _python_files("app"):
        for name in _imports(path):
            root = name.split(".")[0]
            if root in HEAVY or (root == "engine" and name not in APP_MAY_IMPORT_FROM_ENGINE):
                offenders.setdefault(str(path.relative_to(ROOT)), []).append(name)
    assert not offenders


def test_importing_the_engine_package_loads_neither_torch_nor_cuda():
    code = (
        "import sys, engine, engine.errors, engine.task, engine.corpus\n"
        "print(sorted(m for m in ('torch', 'transformers', 'cupy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_importing_kernels_does_not_initialise_cuda():
    code = "import torch, kernels.ops\nprint(torch.cuda.is_initialized())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
