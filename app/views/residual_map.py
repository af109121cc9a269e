"""The residual map: layers x token positions of the first calibration sequence, coloured by the largest |x|.

The token text runs along the bottom axis; the massive activations (engine.quant.token_axis) are ringed and
labelled with their dimension. Hover reads a cell out (token text, layer, dimension, value); a click shows that
token's dimension profile at that layer beside the map: its largest dimensions against the layer's median |x|.
Observes `ResidualStream` (app.view_models.residual_stream), filled when a scan finishes.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QSplitter, QVBoxLayout, QWidget

from int8wb.app.view_models.residual_stream import ResidualStream, TokenProfile
from int8wb.app.views import colors
from int8wb.app.views.empty_state import EmptyState

EMPTY_TEXT = (
    "Scan to see the residual stream token by token: rows are layers, columns are the tokens of the first "
    "calibration sequence, and the massive activations (a few huge values on one token) stand out."
)
MARK_COLOR = "#00e5ff"
TICK_EVERY = 8  # a token's text on the axis every this many positions (all of them when zoomed in to fewer)


def token_label(text: str) -> str:
    """A token as the axis shows it: whitespace made visible, cut short."""
    shown = text.replace("\n", "⏎").replace(" ", "·") or "∅"
    return shown if len(shown) <= 8 else shown[:7] + "…"


class ResidualMapView(QWidget):
    """The map, its colour bar, the massive marks, the hover readout and the clicked token's profile."""

    def __init__(self, stream: ResidualStream, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.stream = stream
        self._marks: list[pg.GraphicsObject] = []
        self._build()
        stream.subscribe(lambda event, data: self.redraw())

    def _build(self) -> None:
        self.graphics = pg.GraphicsLayoutWidget()
        self.plot = self.graphics.addPlot(row=0, col=0)
        self.plot.invertY(True)
        self.plot.setMenuEnabled(False)
        self.plot.setLabel("left", "residual stream, layer")
        self.plot.setLabel("bottom", "token of the first calibration sequence")
        self.image, _ = colors.heatmap_images(self.plot)
        self.color_bar = pg.ColorBarItem(values=(-1.0, 1.0), colorMap=colors.colormap(), interactive=False)
        self.color_bar.axis.setLabel("log10 largest |x|")
        self.graphics.addItem(self.color_bar, row=0, col=1)
        self.plot.scene().sigMouseMoved.connect(self._on_mouse_moved)
        self.plot.scene().sigMouseClicked.connect(self._on_mouse_clicked)
        self.plot.getViewBox().sigXRangeChanged.connect(lambda *_: self._update_token_ticks())

        self.profile_plot = pg.PlotWidget()
        self.profile_plot.setMenuEnabled(False)
        self.profile_plot.setLabel("bottom", "feature dimension")
        self.profile_plot.setLabel("left", "log10 |x|")
        self.profile_plot.setTitle("Click a cell: that token's dimensions")

        self.readout = QLabel("Hover over the map to read a cell; click to see that token's dimensions.")
        self.readout.setObjectName("readout")
        self.readout.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.graphics)
        split.addWidget(self.profile_plot)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        split.setSizes([3000, 1000])  # the same 3 : 1 from the start, before any resize
        self.split = split
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.empty = EmptyState(split, EMPTY_TEXT)
        layout.addWidget(self.empty, 1)
        layout.addWidget(self.readout)
        layout.addWidget(self.summary)
        self.redraw()

    # --- drawing ---------------------------------------------------------------------------------

    def levels(self) -> tuple[float, float]:
        """The colour range in log10 |x|, in half decades around the grid's values."""
        positive = self.stream.grid[self.stream.grid > 0]
        if not positive.size:
            return -1.0, 1.0
        low, high = math.log10(float(positive.min())), math.log10(float(positive.max()))
        return math.floor(low * 2) / 2, max(math.ceil(high * 2) / 2, math.floor(low * 2) / 2 + 0.5)

    def redraw(self) -> None:
        empty = self.stream.empty
        self.empty.set_empty(empty)
        self.readout.setVisible(not empty)
        self.summary.setText(self.stream.summary())
        for mark in self._marks:
            self.plot.removeItem(mark)
        self._marks = []
        if empty:
            self.image.setVisible(False)
            return
        low, high = self.levels()
        self.color_bar.setLevels((low, high))
        self.image.setImage(
            colors.index_rows(self.stream.grid, low, high, log10=True), autoLevels=False, levels=(0, 255)
        )
        self.image.setVisible(True)
        rows, positions = self.stream.grid.shape
        self.plot.getViewBox().setLimits(xMin=0, yMin=0, xMax=positions, yMax=rows)
        self.plot.getViewBox().setRange(xRange=(0, positions), yRange=(0, rows), padding=0)
        self.plot.getAxis("left").setTicks(
            [[(row + 0.5, str(layer)) for row, layer in enumerate(self.stream.layers) if layer % 5 == 0]]
        )
        self._mark_massive()
        self._update_token_ticks()

    def _mark_massive(self) -> None:
        """A ring on each massive activation of the shown sequence, its dimension written beside the first per token."""
        rows = {layer: row for row, layer in enumerate(self.stream.layers)}
        spots = [(m["position"] + 0.5, rows[m["layer"]] + 0.5) for m in self.stream.massive]
        if not spots:
            return
        ring = pg.ScatterPlotItem(
            pos=spots, symbol="o", size=9, pen=pg.mkPen(MARK_COLOR, width=1.5), brush=None, hoverable=False
        )
        self.plot.addItem(ring)
        self._marks.append(ring)
        labelled: set[tuple[int, int]] = set()
        for m in self.stream.massive:
            key = (m["position"], m["dim"])
            if key in labelled:
                continue
            labelled.add(key)
            label = pg.TextItem(f"dim {m['dim']}", color=MARK_COLOR, anchor=(0, 1))
            label.setPos(m["position"] + 1, rows[m["layer"]])
            self.plot.addItem(label)
            self._marks.append(label)

    def _update_token_ticks(self) -> None:
        """Token text on the bottom axis: every position when few are in view, else every TICK_EVERY-th."""
        if self.stream.empty:
            return
        left, right = self.plot.getViewBox().viewRange()[0]
        in_view = range(max(0, int(left)), min(len(self.stream.tokens), int(math.ceil(right))))
        every = 1 if len(in_view) <= 40 else TICK_EVERY
        ticks = [(p + 0.5, token_label(self.stream.tokens[p])) for p in in_view if p % every == 0]
        self.plot.getAxis("bottom").setTicks([ticks])

    def show_profile(self, profile: TokenProfile) -> None:
        """That token's largest dimensions at that layer as bars, the layer's median |x| as a line."""
        self.profile_plot.clear()
        values = np.maximum(profile.values.astype(np.float64), 1e-12)
        bars = pg.BarGraphItem(
            x=profile.dims.astype(np.float64), height=np.log10(values), width=max(1.0, profile.dims.max() / 150), y0=0
        )
        self.profile_plot.addItem(bars)
        if profile.median > 0:
            self.profile_plot.addItem(
                pg.InfiniteLine(pos=math.log10(profile.median), angle=0, pen=colors.THRESHOLD_PEN)
            )
        top = int(profile.dims[0])
        self.profile_plot.setTitle(f"{profile.token!r} @{profile.position}, layer {profile.layer}: largest dim {top}")
        self.profile_plot.setToolTip("The token's largest dimensions at that layer; the line: the layer's median |x|")

    # --- interaction -----------------------------------------------------------------------------

    def cell_at(self, scene_pos) -> tuple[int, int] | None:
        """(row, position) under a scene position, or None outside the grid."""
        return None if self.stream.empty else colors.grid_cell_at(self.plot, scene_pos, self.stream.grid.shape)

    def _on_mouse_moved(self, scene_pos) -> None:
        cell = self.cell_at(scene_pos)
        if cell is not None:
            self.readout.setText(self.stream.describe(*cell))

    def _on_mouse_clicked(self, event) -> None:
        cell = self.cell_at(event.scenePos())
        if cell is not None and event.button() == Qt.MouseButton.LeftButton:
            self.show_profile(self.stream.profile(*cell))
