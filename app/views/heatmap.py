"""The outlier heatmap: rows = (input kind, decoder layer), columns = feature dimension.

Colour is log10 of the calibration abs-max (or the share of tokens over the
scan's threshold). The image is a uint8 index array drawn through a 256-colour
lookup table, so a new layer costs one row of numpy arithmetic and an indexed
QImage, never a Python loop over cells. Cells over the current threshold are
drawn on top in the highlight colour. Hover reads a cell out; a click asks for
that dimension's profile across layers, and on a row that aggregates the
experts of a mixture-of-experts layer, opens their drill-down (ExpertsPanel).

The index and overlay arrays are allocated once per grid shape and handed to
the image items by reference: a new row is written in place and the items only
told to render again (Qt merges the repaints of a burst into one). The whole
grid is recoloured only when its shape, the colour range or the mode changes,
and then only its filled rows; the axes are rebuilt only when the rows change.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from int8wb.app.view_models.scan_stats import ScanStatistics
from int8wb.app.view_models.threshold import ThresholdModel
from int8wb.app.views import colors
from int8wb.app.views.colors import index_rows
from int8wb.app.views.empty_state import EmptyState
from int8wb.app.views.experts_panel import ExpertsPanel
from int8wb.engine.vocabulary import KIND_SHORT

EMPTY_TEXT = (
    "Scan to see the largest activation of every feature dimension in every layer: "
    "rows are layers, columns are dimensions, and the outliers light up."
)
MODE_ABSMAX = "absmax"
MODE_SHARE = "share"
ABSMAX_LOG_RANGE = (-1.0, 2.0)  # initial colour range, log10 abs-max; widened when the data need it


def row_ticks(stats: ScanStatistics) -> list[list[tuple[float, str]]]:
    """The left axis of a map on the heatmap's rows: kind labels (major) and every tenth layer (minor)."""
    major = [((start + stop) / 2, KIND_SHORT[kind]) for kind, start, stop in stats.kind_spans()]
    minor = [(row + 0.5, str(layer)) for row, (_, layer) in enumerate(stats.row_keys) if layer % 10 == 0]
    return [major, minor]


class HeatmapView(QWidget):
    """The heatmap, its colour bar, the mode switch and the hover readout."""

    sig_dimension_clicked = Signal(int)

    def __init__(self, stats: ScanStatistics, threshold: ThresholdModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.stats, self.threshold = stats, threshold
        self.mode = MODE_ABSMAX
        self._levels = ABSMAX_LOG_RANGE
        self._index = np.zeros((0, 0), dtype=np.uint8)  # (rows, width) colour indices, shown by self.image
        self._mask = np.zeros((0, 0), dtype=np.uint8)  # (rows, width) 1 where over the threshold, self.overlay
        self._mask_stale = False  # the threshold moved while the overlay was hidden
        self._axes_for: tuple = ()  # the row keys and shape the axes were laid out for
        self.grid_source = None  # a callable giving another grid of the same shape to show (the smoothed view)
        self._build()
        stats.subscribe(self._on_stats)
        threshold.subscribe(lambda _: self.update_overlay())

    def _build(self) -> None:
        self.mode_box = QComboBox()
        self.mode_box.addItem("abs-max (log10)", MODE_ABSMAX)
        self.mode_box.addItem("% of tokens over the scan threshold", MODE_SHARE)
        self.mode_box.currentIndexChanged.connect(lambda _: self.set_mode(self.mode_box.currentData()))
        self.mode_box.setToolTip(
            "abs-max: the largest |activation| each dimension reached in the scan (log10). % of tokens: how often "
            "it was over the scan's threshold; an outlier dimension is large on most tokens, not once."
        )
        self.overlay_box = QCheckBox("Highlight outliers")
        self.overlay_box.setChecked(True)
        self.overlay_box.toggled.connect(self._on_overlay_toggled)
        self.overlay_box.setToolTip("Draw the cells over the current threshold in cyan: what LLM.int8() keeps in float")
        self.readout = QLabel("Hover over the heatmap to read a cell; click to see that dimension in every layer.")
        self.readout.setObjectName("readout")
        self.readout.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.graphics = pg.GraphicsLayoutWidget()
        self.plot = self.graphics.addPlot(row=0, col=0)
        self.plot.invertY(True)
        self.plot.setLabel("bottom", "feature dimension")
        self.plot.setMenuEnabled(False)
        self.plot.getViewBox().setLimits(xMin=0, yMin=0)
        self.image, self.overlay = colors.heatmap_images(self.plot)
        self._separators: list[pg.InfiniteLine] = []
        self.color_bar = pg.ColorBarItem(
            values=self._levels,
            colorMap=colors.colormap(),
            interactive=False,
            colorMapMenu=False,
        )
        self.color_bar.axis.setLabel("log10 abs-max")  # beside its values (the constructor's label goes left)
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
        self.empty = EmptyState(self.graphics, EMPTY_TEXT)
        layout.addWidget(self.empty, 1)
        layout.addWidget(self.readout)
        self.readout.setVisible(False)
        self.experts = ExpertsPanel(self.stats, self.threshold)  # drill-down of a mixture-of-experts row
        layout.addWidget(self.experts)

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

    def _colour(self, rows: slice | int | np.ndarray) -> np.ndarray:
        """uint8 colour indices of `rows` in the current mode and colour range."""
        if self.mode == MODE_SHARE:
            low, high = self._levels
            return index_rows(self.stats.share_grid[rows], low / 100.0, high / 100.0)  # levels are in %
        return index_rows(self.values()[rows], *self._levels, log10=True)

    def values(self) -> np.ndarray:
        """The abs-max grid shown: the scan's, or the one `grid_source` gives (same shape)."""
        return self.stats.absmax_grid if self.grid_source is None else self.grid_source()

    def _absmax_levels(self, levels: tuple[float, float]) -> tuple[float, float]:
        """`levels` widened (in half decades) to hold the largest abs-max seen (kept by the statistics)."""
        if self.stats.absmax_max <= 0:
            return levels
        top = math.log10(max(self.stats.absmax_max, 1e-30))
        return levels[0], max(levels[1], math.ceil(top * 2) / 2)

    def redraw(self) -> None:
        """Recolour every filled row (shape changed, colour range widened, or mode switched)."""
        shape = self.stats.absmax_grid.shape
        if self._index.shape != shape:
            self._index = np.zeros(shape, dtype=np.uint8)
        else:
            self._index.fill(0)
        filled = np.flatnonzero(self.stats.row_filled)
        if filled.size == shape[0] and shape[0]:
            self._index[:] = self._colour(slice(None))
        elif filled.size:
            self._index[filled] = self._colour(filled)
        self._show_index()
        self._update_axes()
        self.update_overlay()

    def update_row(self, row: int) -> None:
        """Colour one new row in place; widen the range (and recolour the rest) only when it does not fit."""
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
        self._index[row] = self._colour(row)
        self._show_index()
        if self._mask.shape == self._index.shape and not self._mask_stale:
            with np.errstate(invalid="ignore"):
                np.greater(self.values()[row], self.threshold.threshold, out=self._mask[row])
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
        """Light up the cells over the current threshold (later, if the highlight is switched off)."""
        if not self.overlay_box.isChecked():
            self._mask_stale = True
            return
        grid = self.values()
        if self._mask.shape != grid.shape:
            self._mask = np.zeros(grid.shape, dtype=np.uint8)
        with np.errstate(invalid="ignore"):
            np.greater(grid, self.threshold.threshold, out=self._mask)
        self._mask_stale = False
        self._show_mask()

    def _on_overlay_toggled(self, on: bool) -> None:
        if on and self._mask_stale:
            self.update_overlay()
        else:
            self.overlay.setVisible(on and self._mask.size > 0)

    def _show_mask(self) -> None:
        if self._mask.size:
            self.overlay.setImage(self._mask, autoLevels=False, levels=(0, 1))
            self.overlay.setVisible(self.overlay_box.isChecked())
        else:
            self.overlay.setVisible(False)

    def _update_axes(self) -> None:
        """Kind labels, layer ticks, separators and range; only when the rows or the shape changed."""
        layout = (tuple(self.stats.row_keys), self.stats.absmax_grid.shape)
        if layout == self._axes_for:
            return
        self._axes_for = layout
        spans = self.stats.kind_spans()
        self.plot.getAxis("left").setTicks(row_ticks(self.stats))
        starts = [start for _, start, _ in spans[1:]]
        while len(self._separators) > len(starts):
            self.plot.removeItem(self._separators.pop())
        while len(self._separators) < len(starts):
            line = pg.InfiniteLine(pos=0, angle=0, pen=pg.mkPen(colors.FOREGROUND, width=1))
            self.plot.addItem(line)
            self._separators.append(line)
        for line, start in zip(self._separators, starts):
            line.setValue(start)
        rows, width = self.stats.absmax_grid.shape
        if rows and width:
            self.plot.getViewBox().setLimits(xMax=width, yMax=rows)
            self.plot.getViewBox().setRange(xRange=(0, width), yRange=(0, rows), padding=0)

    def _on_stats(self, event: str, data: object) -> None:
        empty = not self.stats.row_filled.any()
        self.empty.set_empty(empty)
        self.readout.setVisible(not empty)
        if event == "row":
            self.update_row(int(data))
        elif event == "reset":
            if self.mode == MODE_ABSMAX:
                self._levels = self._absmax_levels(ABSMAX_LOG_RANGE)
                self.color_bar.setLevels(self._levels)
            self.redraw()
        elif event == "finished" and self.mode == MODE_SHARE and self.stats.scan_threshold:
            self.color_bar.axis.setLabel(f"% of tokens over {self.stats.scan_threshold:g}")

    # --- interaction -----------------------------------------------------------------------------

    def cell_at(self, scene_pos) -> tuple[int, int] | None:
        """(row, dimension) under a scene position, or None outside the grid."""
        return colors.grid_cell_at(self.plot, scene_pos, self.stats.absmax_grid.shape)

    def describe_cell(self, row: int, dim: int) -> str:
        absmax = float(self.values()[row, dim])
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
            self.experts.show_row(cell[0], self._absmax_levels(ABSMAX_LOG_RANGE))
            self.sig_dimension_clicked.emit(cell[1])
