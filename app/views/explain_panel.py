"""The "What am I looking at?" panel: LLM.int8()'s finding, told with this model's numbers as they arrive."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtWidgets import QDialog, QTextBrowser, QVBoxLayout, QWidget


class ExplainPanel(QDialog):
    """A non-modal window beside the workbench; `refresh` re-reads the numbers (only while it is shown)."""

    def __init__(self, text: Callable[[], str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("What am I looking at?")
        self._text = text
        self.browser = QTextBrowser()
        self.browser.setOpenExternalLinks(False)
        layout = QVBoxLayout(self)
        layout.addWidget(self.browser)
        self.resize(560, 640)

    def refresh(self) -> None:
        if self.isVisible():
            self.browser.setHtml(self._text())

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        self.browser.setHtml(self._text())
