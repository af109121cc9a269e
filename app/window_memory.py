"""What the window remembers between sessions (QSettings): its size, its splitters and the last choices.

Read once when the window is built and written when it closes. Values come
back from QSettings as strings in an INI file, so each is read through a
converter that falls back to the widget's own default.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QMainWindow, QSplitter

DEFAULT_SIZE = (1500, 950)
EXPORT_FOLDER_KEY = "folders/export"


def as_bool(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, str):
        return value.lower() in ("true", "1", "yes")
    return bool(value)


def as_list(value: Any) -> list[str]:
    """A list setting (an INI file gives one item back as a plain string)."""
    if value is None or value == "":
        return []
    return [str(v) for v in value if v] if isinstance(value, (list, tuple)) else [str(value)]


def as_int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def as_positive_float(value: Any, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if number > 0 else default


def splitters(window) -> dict[str, Any]:
    return {
        "splitter/main": window.main_splitter,
        "splitter/right": window.right,
        "splitter/maps": window.maps,
        "splitter/middle": window.middle,
        "splitter/results": window.results_view.splitter,
    }


def restore(window, settings: QSettings) -> None:
    """Size, splitters, model list and the last choices of every panel."""
    geometry = settings.value("geometry")
    if geometry is None or not window.restoreGeometry(geometry):
        _fit_to_screen(window)
    restored = [key for key, splitter in splitters(window).items() if _restore_splitter(splitter, settings.value(key))]
    window.needs_proportions = not restored
    panel = window.model_panel
    panel.set_recent(as_list(settings.value("recent_models")))
    last = settings.value("last_model")
    if last:
        panel.add_source(str(last))
    panel.load_at_start.setChecked(as_bool(settings.value("load_at_start"), True))
    scan = window.scan_panel
    scan.tokens.setValue(as_int(settings.value("scan_tokens"), scan.tokens.value()))
    scan.seq_len.setValue(as_int(settings.value("scan/seq_len"), scan.seq_len.value()))
    scan.measure_errors.setChecked(as_bool(settings.value("scan/measure_errors"), False))
    run = window.run_panel
    methods = settings.value("run/methods")
    if methods is not None:
        run.set_methods(as_list(methods))
    run.eval_tokens.setValue(as_int(settings.value("run/eval_tokens"), run.eval_tokens.value()))
    run.window.setValue(as_int(settings.value("run/window"), run.window.value()))
    mode = window.heatmap.mode_box.findData(settings.value("heatmap/mode"))
    if mode >= 0:
        window.heatmap.mode_box.setCurrentIndex(mode)


def save(window, settings: QSettings) -> None:
    settings.setValue("geometry", window.saveGeometry())
    for key, splitter in splitters(window).items():
        settings.setValue(key, splitter.saveState())
    settings.setValue("threshold", window.threshold.threshold)
    settings.setValue("recent_models", window.model_panel.recent())
    settings.setValue("last_model", window.model_panel.source.currentData() or "")
    settings.setValue("load_at_start", window.model_panel.load_at_start.isChecked())
    settings.setValue("scan_tokens", window.scan_panel.tokens.value())
    settings.setValue("scan/seq_len", window.scan_panel.seq_len.value())
    settings.setValue("scan/measure_errors", window.scan_panel.measure_errors.isChecked())
    settings.setValue("run/methods", window.run_panel.methods())
    settings.setValue("run/eval_tokens", window.run_panel.eval_tokens.value())
    settings.setValue("run/window", window.run_panel.window.value())
    settings.setValue("heatmap/mode", window.heatmap.mode)
    settings.sync()


def _restore_splitter(splitter: QSplitter, state: Any) -> bool:
    return state is not None and splitter.restoreState(state)


def default_proportions(window) -> None:
    """First start: the heatmap half the height, histogram and profile side by side, the sidebar as narrow as it goes."""
    width, height = window.width(), window.height()
    window.right.setSizes([int(height * share) for share in (0.48, 0.24, 0.28)])
    window.middle.setSizes([width // 2, width // 2])
    window.results_view.splitter.setSizes([width * 2 // 3, width // 3])
    window.results_view.fit_table_width()  # the table's columns first, when the chart can spare the width
    window.maps.setSizes([width * 7 // 10, width * 3 // 10])
    sidebar = window.sidebar.minimumWidth()
    window.main_splitter.setSizes([sidebar, max(width - sidebar, 1)])


def _fit_to_screen(window: QMainWindow) -> None:
    """The default size, or the whole screen where it is smaller than that."""
    width, height = DEFAULT_SIZE
    screen = window.screen()
    if screen is not None:
        available = screen.availableGeometry()
        width, height = min(width, available.width()), min(height, available.height())
    window.resize(width, height)
