"""The import contracts of docs/architecture.md, checked on the source.

- app/ never imports the heavy engine stack, and of engine/ only the light modules;
- engine/ and kernels/ never import Qt; kernels/ imports nothing of engine/ or app/;
- engine/ imports app/ only in the `gui` command, inside a function;
- the contract and process modules (protocol, client, ...) never import a capability room, and the
  rooms (model, quant, checkpoint, planning) never import the process (cli, server, session);
- no import cycles between modules (imports inside functions count), no reaching into another
  module's private names.
"""

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
NAMESPACE = "int8wb"  # every folder below is imported as int8wb.<folder> (pyproject.toml); names here omit it
FOLDERS = ("app", "engine", "kernels", "resources")
# app/ may use these parts of the engine package, which import nothing heavy.
APP_MAY_IMPORT_FROM_ENGINE = {
    "engine.installation",
    "engine.link.protocol",
    "engine.vocabulary",
    "engine.link.client",
    "engine.errors",
}


def _short(name: str) -> str:
    """int8wb.engine.x -> engine.x: the module's name as the contracts below speak of it."""
    return name.removeprefix(NAMESPACE + ".")


def _raw_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _imports(path: Path) -> set[str]:
    return {_short(name) for name in _raw_imports(path)}


def _python_files(package: str):
    return sorted((ROOT / package).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


PROJECT_FILES = {_module_name(p): p for package in ("app", "engine", "kernels") for p in _python_files(package)}


def _project_edges(path: Path) -> list[tuple[str, str, bool]]:
    """(imported project module, imported name or "", at module level?) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    edges = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [_short(alias.name) for alias in node.names]
            edges += [(name, "", id(node) in top_level) for name in names if name in PROJECT_FILES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            module = _short(node.module)
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                if submodule in PROJECT_FILES:
                    edges.append((submodule, "", id(node) in top_level))
                elif module in PROJECT_FILES:
                    edges.append((module, alias.name, id(node) in top_level))
    return edges


def _graph() -> dict[str, set[str]]:
    return {name: {target for target, _, _ in _project_edges(path)} for name, path in PROJECT_FILES.items()}


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


# The engine's rooms, lowest first (docs/architecture.md): each imports only the rooms before it and the shared
# modules at the engine's root; the link (messages and the client side) imports only the shared modules; the
# command line may use every room. So no two rooms import each other, and each can be read with only those below.
SHARED = ("engine.errors", "engine.task", "engine.vocabulary", "engine.registry", "engine.installation")
LAYERS = (
    "engine.model",
    "engine.planning",
    "engine.quant",
    "engine.measure",
    "engine.checkpoint",
    "engine.pipeline",
    "engine.process",
)
LINK = "engine.link"
MAX_ROOT_MODULES = 6


def test_every_import_of_the_project_goes_through_its_namespace():
    """`import engine` would work from the repository root only, and would shadow any package of that name."""
    checked = ("app", "engine", "kernels", "tests", "bench", "packaging", "docs")
    offenders = {
        str(path.relative_to(ROOT)): sorted(n for n in _raw_imports(path) if n.split(".")[0] in FOLDERS)
        for folder in checked
        for path in _python_files(folder)
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_the_folders_are_namespace_portions():
    """An __init__.py in a top-level folder would make it a regular package that wins over an installed one."""
    assert [folder for folder in FOLDERS if (ROOT / folder / "__init__.py").exists()] == []


def test_kernels_import_nothing_of_engine_or_app():
    offenders = {
        m: sorted(g) for m, g in _graph().items() if _in(m, "kernels") and any(_in(t, "engine", "app") for t in g)
    }
    assert not offenders


def test_engine_imports_app_only_in_the_gui_command_and_lazily():
    offenders = []
    for module, path in PROJECT_FILES.items():
        if not _in(module, "engine"):
            continue
        for target, _, top_level in _project_edges(path):
            if _in(target, "app") and (module != "engine.cli.gui" or top_level):
                offenders.append((module, target))
    assert not offenders


def _room(module: str) -> str | None:
    return next((room for room in (*LAYERS, LINK, "engine.cli") if _in(module, room)), None)


def test_rooms_import_one_way():
    offenders = []
    for module, targets in _graph().items():
        room = _room(module)
        for target in targets:
            target_room = _room(target)
            if not _in(module, "engine") or not _in(target, "engine") or room == target_room:
                continue
            if _in(module, *SHARED):
                allowed = False  # what every room shares depends on no room
            elif room == LINK or room is None:
                allowed = _in(target, *SHARED) or (module == "engine.__main__" and target_room == "engine.cli")
            elif room == "engine.cli":
                allowed = True
            else:
                allowed = (
                    _in(target, *SHARED)
                    or (target_room in LAYERS and LAYERS.index(target_room) < LAYERS.index(room))
                    or (room == "engine.process" and target_room == LINK)
                )
            if not allowed:
                offenders.append((module, target))
    assert not offenders


def test_the_engine_root_holds_only_what_every_room_shares():
    modules = sorted(path.stem for path in (ROOT / "engine").glob("*.py"))
    assert len(modules) <= MAX_ROOT_MODULES, modules
    assert {f"engine.{name}" for name in modules} <= {*SHARED, "engine.__main__"}


def test_no_import_cycles():
    graph = _graph()
    cycles, state = [], {}

    def visit(module, stack):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles


def test_no_module_takes_another_modules_private_names():
    offenders = []
    for module, path in PROJECT_FILES.items():
        offenders += [
            (module, f"{target}.{name}")
            for target, name, _ in _project_edges(path)
            if name.startswith("_") and not name.startswith("__") and target != module
        ]
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and f"{_package_of(module)}.{node.value.id}" in PROJECT_FILES
            ):
                offenders.append((module, f"{node.value.id}.{node.attr}"))
    assert not offenders


def _package_of(module: str) -> str:
    return module.rsplit(".", 1)[0] if "." in module else module


@pytest.mark.parametrize("package", ["engine", "kernels"])
def test_engine_and_kernels_never_import_qt(package):
    offenders = {
        str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if n.split(".")[0] in QT)
        for p in _python_files(package)
    }
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
        "import sys, int8wb.engine.errors, int8wb.engine.task, int8wb.engine.model.corpus\n"
        "print(sorted(m for m in ('torch', 'transformers', 'cupy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_importing_kernels_does_not_initialise_cuda():
    code = "import torch, int8wb.kernels.ops\nprint(torch.cuda.is_initialized())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


WINDOW_WITH_ENGINE = """
import sys, tempfile
from PySide6.QtCore import QSettings
from int8wb.app.main import create_app
from int8wb.app.main_window import MainWindow
app = create_app([])
settings = QSettings(tempfile.mktemp(suffix=".ini"), QSettings.Format.IniFormat)
settings.setValue("load_at_start", False)
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
    out = subprocess.run(
        [sys.executable, "-c", WINDOW_WITH_ENGINE], capture_output=True, text=True, env=env, check=True, timeout=120
    ).stdout
    assert out.strip().splitlines()[-1] == "ready []"
