"""The process boundary in the source: app/ never imports the heavy engine stack, engine/ and kernels/ never Qt."""

from __future__ import annotations

import ast
import os
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


WINDOW_WITH_ENGINE = """
import sys, tempfile
from PySide6.QtCore import QSettings
from app.main import create_app
from app.main_window import MainWindow
app = create_app([])
settings = QSettings(tempfile.mktemp(suffix=".ini"), QSettings.Format.IniFormat)
window = MainWindow(settings=settings)
window.show()
window.start_engine()
deadline = __import__("time").monotonic() + 60
while window.client.state.value != "ready" and __import__("time").monotonic() < deadline:
    app.processEvents()
print(window.client.state.value, sorted(m for m in ("torch", "transformers", "cupy") if m in sys.modules))
window.close()
"""


def test_the_window_and_its_engine_client_never_load_the_heavy_stack_in_the_gui_process():
    """In a fresh process (a test session has torch loaded already): open the window, start its engine."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run([sys.executable, "-c", WINDOW_WITH_ENGINE], capture_output=True, text=True, env=env,
                         check=True, timeout=120).stdout
    assert out.strip().splitlines()[-1] == "ready []"
