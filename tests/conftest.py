"""Shared fixtures. Helpers for tiny models live in tests/support/tiny_models.py."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# engine_leak_guard: every module fails if an engine child process survives it.
pytest_plugins = ["tests.support.fixtures_engine"]


@pytest.fixture(scope="session")
def default_model():
    """The embedded default model, loaded once per test session (converted into the cache on first use)."""
    from int8wb.engine.pipeline import loading
    from int8wb.engine.task import Task

    return loading.load({}, Task())


@pytest.fixture(scope="session")
def default_scan(default_model):
    """A small calibration scan of the default model (1,024 tokens)."""
    from int8wb.engine.quant import scan
    from int8wb.engine.task import Task

    return scan.run({"tokens": 1024, "seq_len": 512}, Task(), default_model)


# --- the workbench window (app/) -------------------------------------------------------------------


@pytest.fixture
def make_workbench(qtbot, tmp_path):
    """Factory for a real workbench window; the test fails if an engine process or a thread outlives it.

    Settings go to an INI file under tmp_path, so tests never touch the user's. A window
    that starts its engine loads the default model once it is up, unless `load_at_start` is off.
    """
    import threading

    from PySide6.QtCore import QSettings

    from int8wb.app.main import create_app
    from int8wb.engine.link.child import spawned_engine_pids
    from tests.support.fixtures_engine import process_alive

    create_app([])
    threads_before = set(threading.enumerate())
    pids_before = set(spawned_engine_pids())
    windows = []

    def make(start_engine: bool = True, load_at_start: bool = True, size: tuple[int, int] | None = None):
        from int8wb.app.main_window import MainWindow

        settings = QSettings(str(tmp_path / "workbench.ini"), QSettings.Format.IniFormat)
        settings.setValue("load_at_start", load_at_start)
        window = MainWindow(settings=settings)
        if size is not None:
            window.resize(*size)
        qtbot.addWidget(window)
        window.show()
        if start_engine:
            window.start_engine()
        windows.append(window)
        return window

    yield make
    for window in windows:
        window.close()
    leftover_pids = [pid for pid in set(spawned_engine_pids()) - pids_before if process_alive(pid)]
    leftover_threads = [t.name for t in set(threading.enumerate()) - threads_before if t.is_alive()]
    assert not leftover_pids, f"engine processes outlived the test: {leftover_pids}"
    assert not leftover_threads, f"threads outlived the test: {leftover_threads}"


@pytest.fixture
def planner_dialog(qtbot):
    """The memory planner dialog, shown offscreen, its view model wired to an engine client that is not started."""
    from int8wb.app.engine_client import QtEngineClient
    from int8wb.app.main import create_app
    from int8wb.app.view_models.memory_planner import MemoryPlanner
    from int8wb.app.views.planner_dialog import PlannerDialog

    create_app([])
    engine = QtEngineClient()
    planner = MemoryPlanner(engine.client)
    engine.connect_listener(planner)
    dialog = PlannerDialog(planner)
    qtbot.addWidget(dialog)
    dialog.show()
    yield dialog
    engine.client.close()
