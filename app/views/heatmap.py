"""The outlier heatmap: rows = (input kind, decoder layer), columns = feature dimension.

Colour is log10 of the calibration abs-max (or the share of tokens over the
scan's threshold). The image is a uint8 index array drawn through a 256-colour
lookup table, so a new layer costs one row of numpy arithmetic and an indexed
QImage, never a Python loop over cells. Cells over the current threshold are
drawn on top in the highlight colour. Hover reads a cell out; a click asks for
that dimension's profile across layers.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from app.view_models.scan_stats import KIND_SHORT, ScanStatistics
from app.view_models.threshold import ThresholdModel
from app.views import colors

MODE_ABSMAX = "absmax"
MODE_SHARE = "share"
ABSMAX_LOG_RANGE = (-1.0, 2.0)  # initial colour range, log10 abs-max; widened when the data need it


def index_rows(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Values -> uint8 colour indices 1..255 (0 for NaN); `values` may be one row or many."""
    scaled = (values - low) * (254.0 / (high - low))
    with np.errstate(invalid="ignore"):
        index = np.clip(scaled, 0.0, 254.0)
    index = np.nan_to_num(index, nan=-1.0) + 1.0
    return index.astype(np.uint8)


class HeatmapView(QWidget):
    """The heatmap, its colour bar, the mode switch and the hover readout."""

    sig_dimension_clicked = Signal(int)

    def __init__(self, stats: ScanStatistics, threshold: ThresholdModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.stats, self.threshold = stats, threshold
        self.mode = MODE_ABSMAX
        self._levels = ABSMAX_LOG_RANGE
        self._index = np.zeros((0, 0), dtype=np.uint8)  # (rows, width) colour indices
        self._mask = np.zeros((0, 0), dtype=np.uint8)  # (rows, width) 1 where over the threshold
        self._build()
        stats.subscribe(self._on_stats)
        threshold.subscribe(lambda _: self.update_overlay())

    def _build(self) -> None:
        self.mode_box = QComboBox()
        self.mode_box.addItem("abs-max (log10)", MODE_ABSMAX)
        self.mode_box.addItem("% of tokens over the scan threshold", MODE_SHARE)
        self.mode_box.currentIndexChanged.connect(lambda _: self.set_mode(self.mode_box.currentData()))
        self.overlay_box = QCheckBox("Highlight outliers")
        self.overlay_box.setChecked(True)
        self.overlay_box.toggled.connect(lambda on: self.overlay.setVisible(on))
        self.readout = QLabel("Hover over the heatmap to read a cell; click to see that dimension in every layer.")
        self.readout.setObjectName("readout")
        self.readout.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.graphics = pg.GraphicsLayoutWidget()
        self.plot = self.graphics.addPlot(row=0, col=0)
        self.plot.invertY(True)
        self.plot.setLabel("bottom", "feature dimension")
        self.plot.setMenuEnabled(False)
        self.plot.getViewBox().setLimits(xMin=0, yMin=0)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setLookupTable(colors.heatmap_lut())
        self.overlay = pg.ImageItem(axisOrder="row-major")
        self.overlay.setLookupTable(colors.outlier_lut())
        self.plot.addItem(self.image)
        self.plot.addItem(self.overlay)
        self._separators: list[pg.InfiniteLine] = []
        self.color_bar = pg.ColorBarItem(values=self._levels, colorMap=colors.colormap(), interactive=False,
                                         label="log10 abs-max", colorMapMenu=False)
        self.graphics.addItem(self.color_bar, row=0, col=1)
        self.plot.scene().sigMouseMoved.connect(self._on_mouse_moved)
        self.plot.scene().sigMouseClicked.connect(self._on_mouse_clicked)

        controls = QHBoxLayout()
        controls.addWidget(QLabel("Colour:"))
        controls.addWidget(self.mode_box)
        controls.addWidget(self.overlay_box)
        controls.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(controls)
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.readout)

    # --- drawing ---------------------------------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        """Colour by abs-max (log10) or by the share of tokens over the scan's threshold."""
        self.mode = mode
        if mode == MODE_SHARE:
            self._levels = (0.0, 100.0)
            label = f"% of tokens over {self.stats.scan_threshold:g}" if self.stats.scan_threshold else "% of tokens"
        else:
            self._levels = self._absmax_levels(ABSMAX_LOG_RANGE)
            label = "log10 abs-max"
        self.color_bar.setLevels(self._levels)
        self.color_bar.axis.setLabel(label)
        self.redraw()

    def _values(self, rows: slice | int) -> np.ndarray:
        if self.mode == MODE_SHARE:
            return self.stats.share_grid[rows] * 100.0
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log10(self.stats.absmax_grid[rows])

    def _absmax_levels(self, levels: tuple[float, float]) -> tuple[float, float]:
        """`levels` widened (in half decades) to hold the largest abs-max seen."""
        grid = self.stats.absmax_grid
        finite = grid[np.isfinite(grid)] if grid.size else grid
        if finite.size == 0:
            return levels
        top = math.log10(max(float(finite.max()), 1e-30))
        return levels[0], max(levels[1], math.ceil(top * 2) / 2)

    def redraw(self) -> None:
        """Recolour every cell (shape changed, colour range widened, or mode switched)."""
        self._index = index_rows(self._values(slice(None)), *self._levels) if self.stats.absmax_grid.size else \
            np.zeros((0, 0), dtype=np.uint8)
        self._show_index()
        self._update_axes()
        self.update_overlay()

    def update_row(self, row: int) -> None:
        """Colour one new row; widen the range (and redraw everything) only when it does not fit."""
        if self._index.shape != self.stats.absmax_grid.shape:
            self.redraw()
            return
        if self.mode == MODE_ABSMAX:
            levels = self._absmax_levels(self._levels)
            if levels != self._levels:
                self._levels = levels
                self.color_bar.setLevels(levels)
                self.redraw()
                return
        self._index[row] = index_rows(self._values(row), *self._levels)
        self._show_index()
        if self._mask.shape == self._index.shape:
            with np.errstate(invalid="ignore"):
                self._mask[row] = self.stats.absmax_grid[row] > self.threshold.threshold
            self._show_mask()
        else:
            self.update_overlay()

    def _show_index(self) -> None:
        if self._index.size:
            self.image.setImage(self._index, autoLevels=False, levels=(0, 255))
            self.image.setVisible(True)
        else:
            self.image.setVisible(False)

    def update_overlay(self) -> None:
        """Light up the cells over the current threshold."""
        self._mask = self.threshold.outlier_mask().astype(np.uint8)
        self._show_mask()

    def _show_mask(self) -> None:
        if self._mask.size:
            self.overlay.setImage(self._mask, autoLevels=False, levels=(0, 1))
            self.overlay.setVisible(self.overlay_box.isChecked())
        else:
            self.overlay.setVisible(False)

    def _update_axes(self) -> None:
        spans = self.stats.kind_spans()
        major = [((start + stop) / 2, KIND_SHORT[kind]) for kind, start, stop in spans]
        minor = [(row + 0.5, str(layer)) for row, (_, layer) in enumerate(self.stats.row_keys) if layer % 10 == 0]
        self.plot.getAxis("left").setTicks([major, minor])
        for line in self._separators:
            self.plot.removeItem(line)
        self._separators = [pg.InfiniteLine(pos=start, angle=0, pen=pg.mkPen(colors.FOREGROUND, width=1))
                            for _, start, _ in spans[1:]]
        for line in self._separators:
            self.plot.addItem(line)
        rows, width = self.stats.absmax_grid.shape
        if rows and width:
            self.plot.getViewBox().setLimits(xMax=width, yMax=rows)
            self.plot.getViewBox().setRange(xRange=(0, width), yRange=(0, rows), padding=0)

    def _on_stats(self, event: str, data: object) -> None:
        if event == "row":
            self.update_row(int(data))
        else:
            if event == "reset":
                self._levels = ABSMAX_LOG_RANGE if self.mode == MODE_ABSMAX else self._levels
            self.redraw()

    # --- interaction -----------------------------------------------------------------------------

    def cell_at(self, scene_pos) -> tuple[int, int] | None:
        """(row, dimension) under a scene position, or None outside the grid."""
        if not self.plot.sceneBoundingRect().contains(scene_pos):
            return None
        point = self.plot.getViewBox().mapSceneToView(scene_pos)
        row, dim = int(math.floor(point.y())), int(math.floor(point.x()))
        rows, width = self.stats.absmax_grid.shape
        return (row, dim) if 0 <= row < rows and 0 <= dim < width else None

    def describe_cell(self, row: int, dim: int) -> str:
        absmax = float(self.stats.absmax_grid[row, dim])
        if not self.stats.row_filled[row]:
            return f"{self.stats.row_label(row)} · not scanned yet"
        if not math.isfinite(absmax):
            return f"{self.stats.row_label(row)} · this input has fewer than {dim + 1} dimensions"
        share = float(self.stats.share_grid[row, dim])
        flag = "  ▲ outlier" if absmax > self.threshold.threshold else ""
        over = f" · {share:.1%} of tokens over {self.stats.scan_threshold:g}" if self.stats.scan_threshold else ""
        return f"{self.stats.row_label(row)} · dim {dim:,} · abs-max {absmax:,.3g}{over}{flag}"

    def _on_mouse_moved(self, scene_pos) -> None:
        cell = self.cell_at(scene_pos)
        if cell is not None:
            self.readout.setText(self.describe_cell(*cell))

    def _on_mouse_clicked(self, event) -> None:
        cell = self.cell_at(event.scenePos())
        if cell is not None and event.button() == Qt.MouseButton.LeftButton:
            self.sig_dimension_clicked.emit(cell[1])
