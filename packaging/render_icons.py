"""Render the PNG icon sizes from resources/icons/int8-workbench.svg (run again after editing the SVG).

    .venv/bin/python packaging/render_icons.py

Qt's own SVG renderer (PySide6.QtSvg, part of PySide6-Essentials) draws them,
so no other tool is needed. The PNGs are committed: desktop environments that
do not read SVG icons, and the window icon at small sizes, use them.
"""

from __future__ import annotations

import sys
from pathlib import Path

ICON_DIR = Path(__file__).resolve().parent.parent / "resources" / "icons"
SVG_NAME = "int8-workbench.svg"
SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


def png_name(size: int) -> str:
    return f"int8-workbench-{size}.png"


def render(svg_path: Path, out_dir: Path, sizes: tuple[int, ...] = SIZES) -> list[Path]:
    """Draw the SVG onto transparent square images of each size; returns the files written."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    app = QGuiApplication.instance() or QGuiApplication(["render_icons", "-platform", "offscreen"])
    renderer = QSvgRenderer(str(svg_path))
    if not renderer.isValid():
        raise SystemExit(f"{svg_path} is not a valid SVG")
    written = []
    for size in sizes:
        image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        renderer.render(painter)
        painter.end()
        path = out_dir / png_name(size)
        if not image.save(str(path), "PNG"):
            raise SystemExit(f"could not write {path}")
        written.append(path)
    del app
    return written


if __name__ == "__main__":
    for written_path in render(ICON_DIR / SVG_NAME, ICON_DIR):
        print(written_path)
    sys.exit(0)
