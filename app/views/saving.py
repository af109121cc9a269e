"""Plots and results a person can keep: save dialogs that remember their folder, plots as PNG or SVG.

Any plot: right-click, "Save … as PNG or SVG…". PNG goes through pyqtgraph's
ImageExporter. SVG is drawn by Qt's own QSvgGenerator from the scene: the
SVGExporter of pyqtgraph 0.14.0 fails on the closed paths that Qt 6 writes
(pyqtgraph issue #3495). Each kind of file opens its dialog where the last one
of that kind went (QSettings).
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QPoint, QRectF, QSettings, Qt
from PySide6.QtGui import QPainter
from PySide6.QtSvg import QSvgGenerator
from PySide6.QtWidgets import QFileDialog, QGraphicsScene, QMenu, QWidget

PLOT_FORMATS = "PNG image (*.png);;SVG drawing (*.svg)"
PLOT_FOLDER_KEY = "folders/plots"


def ask_save_path(
    parent: QWidget, title: str, file_name: str, filters: str, settings: QSettings | None, key: str
) -> Path | None:
    """Ask where to save, starting in the folder remembered under `key`; remembers the new one."""
    folder = str(settings.value(key, "")) if settings is not None else ""
    path, _ = QFileDialog.getSaveFileName(parent, title, str(Path(folder) / file_name), filters)
    if not path:
        return None
    if settings is not None:
        settings.setValue(key, str(Path(path).parent))
    return Path(path)


def save_plot(item, path: str | Path) -> Path:
    """Write the plot `item` (a PlotItem, or a GraphicsLayoutWidget's scene) as SVG or else PNG, by suffix."""
    path = Path(path)
    if path.suffix.lower() == ".svg":
        _save_svg(item, path)
        return path
    from pyqtgraph.exporters import ImageExporter

    path = path if path.suffix.lower() == ".png" else path.with_suffix(".png")
    ImageExporter(item).export(str(path))
    return path


def _save_svg(item, path: Path) -> None:
    """Draw the item's part of its scene (the whole scene for a scene) into an SVG file, as vectors."""
    scene = item if isinstance(item, QGraphicsScene) else item.scene()
    source = scene.itemsBoundingRect() if item is scene else item.sceneBoundingRect()
    generator = QSvgGenerator()
    generator.setFileName(str(path))
    generator.setSize(source.size().toSize())
    generator.setViewBox(QRectF(0, 0, source.width(), source.height()))
    generator.setTitle(path.stem)
    painter = QPainter(generator)
    try:
        scene.render(painter, QRectF(0, 0, source.width(), source.height()), source)
    finally:
        painter.end()


def add_save_menu(widget: QWidget, item, name: str, settings: QSettings | None = None) -> QMenu:
    """Right-click on `widget` offers "Save `name` as PNG or SVG…" for `item`; returns the menu."""
    menu = QMenu(widget)

    def save() -> None:
        file_name = f"{name.replace(' ', '-')}.png"
        path = ask_save_path(widget, f"Save the {name}", file_name, PLOT_FORMATS, settings, PLOT_FOLDER_KEY)
        if path is not None:
            save_plot(item, path)

    menu.addAction(f"Save {name} as PNG or SVG…", save)
    widget.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
    widget.customContextMenuRequested.connect(lambda pos: menu.popup(widget.mapToGlobal(QPoint(pos))))
    return menu
