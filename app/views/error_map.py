"""The error map: each method's output SQNR on every Linear, on the outlier heatmap's rows.

Rows are the heatmap's (Linear input x decoder layer), so the two maps sit side by side and line up; one
numbered column group per method, within it one column per Linear that reads the row's input (q, k, v; gate, up).
Bright is low SQNR (much error), as bright is a large activation on the heatmap: where naive INT8 loses
its decibels, the outlier columns are. Hover reads a cell (Linear, method, dB, outlier columns at the
current threshold); a click shows that Linear's error under every method next to its outlier dimensions
and follows its largest outlier dimension through every layer in the profile view.
"""

from __future__ import annotations

import math

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QLabel, QScrollArea, QVBoxLayout, QWidget

from int8wb.app.view_models.layer_errors import LayerErrors
from int8wb.app.view_models.threshold import ThresholdModel
from int8wb.app.views import colors
from int8wb.app.views.empty_state import EmptyState
from int8wb.app.views.heatmap import index_rows, row_ticks

EMPTY_TEXT = (
    "Tick “measure each method's error” in the scan panel and scan: each method's output error (SQNR) on "
    "every Linear appears here, row for row beside the outliers."
)
LEVELS_DB = (0.0, 40.0)  # initial colour range; widened in steps of 10 dB when the data need it
TEXT_HEIGHT = 130  # pixels at most for the readout, the clicked Linear and the summary
HOVER_HINT = "Hover to read a cell; click one to see its Linear's outlier dimensions next to its error."


def levels_for(data_range: tuple[float, float] | None) -> tuple[float, float]:
    """The colour range: LEVELS_DB widened in 10 dB steps to hold every finite SQNR."""
    if data_range is None:
        return LEVELS_DB
    low, high = data_range
    return min(LEVELS_DB[0], math.floor(low / 10) * 10), max(LEVELS_DB[1], math.ceil(high / 10) * 10)


class ErrorMapView(QWidget):
    """The error map, its colour bar, the hover readout and the clicked Linear's details."""

    sig_dimension_clicked = Signal(int)

    def __init__(self, errors: LayerErrors, threshold: ThresholdModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.errors, self.threshold = errors, threshold
        self.selected: str | None = None  # the Linear last clicked
        self._levels = LEVELS_DB
        self._build()
        errors.subscribe(lambda event, _: self.redraw())
        threshold.subscribe(lambda _: self._show_selected())

    def _build(self) -> None:
        self.graphics = pg.GraphicsLayoutWidget()
        self.plot = self.graphics.addPlot(row=0, col=0)
        self.plot.invertY(True)
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=False, y=True)
        self.plot.getViewBox().setLimits(xMin=0, yMin=0)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setLookupTable(colors.error_lut())
        self.plot.addItem(self.image)
        self._separators: list[pg.InfiniteLine] = []
        self.color_bar = pg.ColorBarItem(
            values=self._levels,
            colorMap=colors.error_colormap(),
            interactive=False,
            label="SQNR dB",
            colorMapMenu=False,
        )
        self.graphics.addItem(self.color_bar, row=0, col=1)
        self.plot.scene().sigMouseMoved.connect(self._on_mouse_moved)
        self.plot.scene().sigMouseClicked.connect(self._on_mouse_clicked)
        self.readout = QLabel(HOVER_HINT)
        self.readout.setObjectName("readout")
        self.readout.setWordWrap(True)
        self.detail = QLabel("")
        self.detail.setWordWrap(True)
        self.detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setObjectName("info")
        title = QLabel("Output error per Linear and method")
        title.setObjectName("sectionTitle")
        self.key = QLabel("")
        self.key.setWordWrap(True)
        self.graphics.setMinimumHeight(200)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(title)
        layout.addWidget(self.key)
        self.empty = EmptyState(self.graphics, EMPTY_TEXT)
        layout.addWidget(self.empty, 1)
        texts = QWidget()  # the words scroll, so that the map keeps its height in a short window
        texts_layout = QVBoxLayout(texts)
        texts_layout.setContentsMargins(0, 0, 4, 0)
        for label in (self.readout, self.detail, self.summary):
            texts_layout.addWidget(label)
        self.texts = QScrollArea()
        self.texts.setWidget(texts)
        self.texts.setWidgetResizable(True)
        self.texts.setFrameShape(QFrame.Shape.NoFrame)
        self.texts.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.texts.setMaximumHeight(TEXT_HEIGHT)
        layout.addWidget(self.texts)
        self.redraw()

    # --- drawing ---------------------------------------------------------------------------------

    def redraw(self) -> None:
        """Colour the whole grid (a few hundred cells), the axes and the summary."""
        errors = self.errors
        empty = not errors.has_errors
        self.empty.set_empty(empty)
        self.texts.setVisible(not empty)
        levels = levels_for(errors.finite_range())
        if levels != self._levels:
            self._levels = levels
            self.color_bar.setLevels(levels)
        if errors.grid.size:
            self.image.setImage(index_rows(errors.grid, *levels), autoLevels=False, levels=(0, 255))
            self.image.setVisible(True)
        else:
            self.image.setVisible(False)
        self._update_axes()
        self.key.setText(f"Columns: {errors.column_key()}. Bright: more error." if errors.methods else "")
        self.summary.setText("<br>".join(errors.summary_lines()))
        self.summary.setToolTip("<br>".join(errors.worst_lines()))
        if self.selected is not None and self.selected not in errors.linears:
            self.selected = None
            self.detail.setText("")

    def _update_axes(self) -> None:
        errors = self.errors
        rows, columns = errors.grid.shape
        slots = errors.slots
        self.plot.getAxis("left").setTicks(row_ticks(errors.stats))
        self.plot.getAxis("bottom").setTicks(
            [[(group * slots + slots / 2, str(group + 1)) for group in range(len(errors.methods))], []]
        )
        lines = [(0, start) for _, start, _ in errors.stats.kind_spans()[1:]]
        lines += [(90, group * slots) for group in range(1, len(errors.methods))]
        while len(self._separators) > len(lines):
            self.plot.removeItem(self._separators.pop())
        for line, (angle, position) in zip(self._separators, lines):
            line.setAngle(angle)
            line.setValue(position)
        for angle, position in lines[len(self._separators) :]:
            line = pg.InfiniteLine(pos=position, angle=angle, pen=pg.mkPen(colors.FOREGROUND, width=1))
            self.plot.addItem(line)
            self._separators.append(line)
        if rows and columns:
            self.plot.getViewBox().setLimits(xMax=columns, yMax=rows)
            self.plot.getViewBox().setRange(xRange=(0, columns), yRange=(0, rows), padding=0)

    # --- interaction -----------------------------------------------------------------------------

    def cell_at(self, scene_pos) -> tuple[int, int] | None:
        """(row, column) under a scene position, or None outside the grid."""
        return colors.grid_cell_at(self.plot, scene_pos, self.errors.grid.shape)

    def _on_mouse_moved(self, scene_pos) -> None:
        cell = self.cell_at(scene_pos)
        text = self.errors.describe_cell(*cell, self.threshold.threshold) if cell is not None else ""
        self.readout.setText(text or HOVER_HINT)

    def _on_mouse_clicked(self, event) -> None:
        cell = self.cell_at(event.scenePos())
        if cell is not None and event.button() == Qt.MouseButton.LeftButton:
            self.select_cell(*cell)

    def select_cell(self, row: int, column: int) -> None:
        """Show the cell's Linear in detail and follow its largest outlier dimension (if any) in the profile."""
        found = self.errors.cell(row, column)
        if found is None:
            return
        self.selected = found[0].name
        dims = self._show_selected()
        if dims is not None and dims.size:
            self.sig_dimension_clicked.emit(int(dims[0]))

    def _show_selected(self):
        """Refresh the clicked Linear's details at the current threshold; its outlier dimensions, or None."""
        if self.selected is None:
            return None
        self.detail.setText(self.errors.describe_linear(self.selected, self.threshold.threshold))
        return self.errors.linears[self.selected].outlier_dims(self.threshold.threshold)
