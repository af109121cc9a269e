"""`int8wb gui`: open the workbench window, then start the engine behind it."""

from __future__ import annotations

import sys

import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from int8wb.engine.installation import RESOURCES, __version__

STYLE_SHEET = RESOURCES / "workbench.qss"
ICON = RESOURCES / "icons" / "int8-workbench.svg"
DESKTOP_FILE_NAME = "org.int8workbench.Int8Workbench"  # packaging/<this>.desktop: the desktop shell's link"
# PySide6 6.12.0 drops a reference to Python's True on every Signal.emit(); after a few thousand signals
# the interpreter aborts with "bool_dealloc: deallocating True or False". 6.11.3 does not.
BROKEN_PYSIDE_VERSIONS = ("6.12.0",)


def check_pyside() -> None:
    """Refuse to start on a PySide6 release known to crash the window, with what to install instead."""
    import PySide6

    if PySide6.__version__ in BROKEN_PYSIDE_VERSIONS:
        raise RuntimeError(
            f"PySide6 {PySide6.__version__} corrupts the reference count of True on every signal and "
            "crashes the workbench after a few thousand signals; install another release: "
            "pip install 'PySide6-Essentials==6.11.3' 'shiboken6==6.11.3'"
        )


def create_app(argv: list[str] | None = None) -> QApplication:
    """The QApplication with the workbench's look (reuses an existing one, as tests have)."""
    check_pyside()
    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv)
    app.setApplicationName("Int8 Workbench")
    app.setOrganizationName("int8-workbench")
    app.setApplicationVersion(__version__)
    app.setDesktopFileName(DESKTOP_FILE_NAME)
    if ICON.is_file():
        app.setWindowIcon(QIcon(str(ICON)))
    pg.setConfigOptions(antialias=True, background="#1e1f24", foreground="#d6d7dc", imageAxisOrder="row-major")
    if STYLE_SHEET.is_file():
        app.setStyleSheet(STYLE_SHEET.read_text())
    return app


def main(argv: list[str] | None = None, connection_file: str | None = None, model: str | None = None) -> int:
    """Show the window first, then start (or connect to) the engine; returns the event loop's status."""
    app = create_app(argv)
    from int8wb.app.main_window import MainWindow

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
