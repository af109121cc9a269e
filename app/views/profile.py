"""One feature dimension across all layers: its abs-max per input kind, against the threshold.

This is the view that shows "dimension 247 is an outlier in most layers":
one line per input kind, layers on x, log10 abs-max on y, the threshold as a
horizontal line.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from int8wb.app.view_models.scan_stats import ScanStatistics
from int8wb.app.view_models.threshold import ThresholdModel
from int8wb.app.views import colors
from int8wb.app.views.empty_state import EmptyState
from int8wb.app.views.histogram import PowerOfTenAxis
from int8wb.engine.vocabulary import KIND_LABELS

NO_SCAN_TEXT = "Scan, then click a dimension on the heatmap to follow it through every layer."
NO_DIMENSION_TEXT = "Click a dimension on the heatmap to follow it through every layer."


class DimensionProfileView(QWidget):
    def __init__(self, stats: ScanStatistics, threshold: ThresholdModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.stats, self.threshold = stats, threshold
        self.dim: int | None = None
        self.title = QLabel("")
        self.title.setObjectName("sectionTitle")
        self.plot = pg.PlotWidget(axisItems={"left": PowerOfTenAxis("left")})
        self.plot.setMenuEnabled(False)
        self.plot.setLabel("bottom", "decoder layer")
        self.plot.setLabel("left", "abs-max")
        self.line = pg.InfiniteLine(angle=0, pen=colors.THRESHOLD_PEN)
        self.plot.addItem(self.line)
        self.curves: dict[str, pg.PlotDataItem] = {}
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.setContentsMargins(0, 0, 0, 0)
        # The key sits above the plot, where it cannot hide the curves; it names the kinds the model has.
        self.key = QLabel(self._key(KIND_LABELS))
        self.key.setWordWrap(True)
        layout.addWidget(self.title)
        layout.addWidget(self.key)
        layout.addWidget(self.plot)
        self.empty = EmptyState(content, NO_SCAN_TEXT)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.empty)
        threshold.subscribe(lambda value: self.line.setValue(math.log10(value)))
        self.line.setValue(math.log10(threshold.threshold))
        stats.subscribe(self._on_stats)

    def show_dimension(self, dim: int) -> None:
        self.dim = dim
        self.empty.set_empty(False)
        profile = self.stats.dimension_profile(dim)
        for curve in self.curves.values():
            self.plot.removeItem(curve)
        self.curves.clear()
        over_layers: set[int] = set()
        for kind, (layers, values) in profile.items():
            pen = pg.mkPen(colors.KIND_COLORS[kind], width=2)
            self.curves[kind] = self.plot.plot(
                layers,
                np.log10(np.maximum(values, 1e-30)),
                pen=pen,
                symbol="o",
                symbolSize=5,
                symbolBrush=colors.KIND_COLORS[kind],
            )
            over_layers.update(int(layer) for layer in layers[values > self.threshold.threshold])
        self.key.setText(self._key([kind for kind in KIND_LABELS if kind in profile]))
        total_layers = len({layer for layers, _ in profile.values() for layer in layers})
        self.title.setText(
            f"Dimension {dim:,}: over the threshold in {len(over_layers)} of {total_layers} layers"
            if total_layers
            else f"Dimension {dim:,}: not in any scanned layer"
        )

    @staticmethod
    def _key(kinds) -> str:
        return "   ".join(
            f"<span style='color:{colors.KIND_COLORS[kind]}'>&#9679; {KIND_LABELS[kind]}</span>"
            for kind in kinds
            if kind in colors.KIND_COLORS
        )

    def _on_stats(self, event: str, data: object) -> None:
        if self.dim is None or (event == "reset" and not self.stats.row_filled.any()):
            self.dim = None
            self.empty.set_text(NO_DIMENSION_TEXT if self.stats.row_filled.any() else NO_SCAN_TEXT)
            self.empty.set_empty(True)
        elif event in ("finished", "reset"):
            self.show_dimension(self.dim)
