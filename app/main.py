"""`int8wb gui`: open the workbench window, then start the engine behind it."""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

import pyqtgraph as pg

STYLE_SHEET = Path(__file__).resolve().parent.parent / "resources" / "workbench.qss"


def create_app(argv: list[str] | None = None) -> QApplication:
    """The QApplication with the workbench's look (reuses an existing one, as tests have)."""
    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv)
    app.setApplicationName("Int8 Workbench")
    app.setOrganizationName("int8-workbench")
    pg.setConfigOptions(antialias=True, background="#1e1f24", foreground="#d6d7dc", imageAxisOrder="row-major")
    if STYLE_SHEET.is_file():
        app.setStyleSheet(STYLE_SHEET.read_text())
    return app


def main(argv: list[str] | None = None, connection_file: str | None = None, model: str | None = None) -> int:
    """Show the window first, then start (or connect to) the engine; returns the event loop's status."""
    app = create_app(argv)
    from app.main_window import MainWindow

    window = MainWindow()
    window.show()
    if connection_file:
        QTimer.singleShot(0, lambda: window.client.connect_file(connection_file))
    else:
        QTimer.singleShot(0, window.start_engine)
    if model:
        window.model_panel.add_source(model)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
