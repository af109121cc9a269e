"""What the windows that run one engine experiment share (the sensitivity sweep, the super weight experiment).

Each sends its job through the workbench (the one place that sends engine jobs), shows the result when the
workbench announces it, and lets its Run button be pressed only while a model is loaded and nothing runs.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QDialog, QWidget

from int8wb.app.view_models.workbench import Workbench


class ExperimentWindow(QDialog):
    """A dialog following the workbench: `result_event` brings a result to `show_result`; any change re-enables.

    A subclass sets `title` and `result_event`, and gives `_build` (its widgets, `run_button` among them),
    `show_result` and `_update_details` (what else follows the workbench's state)."""

    title = ""
    result_event = ""

    def __init__(self, workbench: Workbench, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(self.title)
        self.workbench = workbench
        self._build()
        workbench.subscribe(self._on_workbench)
        self._update_enabled()

    def _on_workbench(self, event: str, data: Any) -> None:
        if event == self.result_event:
            self.show_result(data)
        elif event == "changed":
            self._update_enabled()

    def _update_enabled(self) -> None:
        self.run_button.setEnabled(self.workbench.loaded and not self.workbench.running)
        self._update_details()
