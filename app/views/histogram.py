"""Histogram of activation magnitudes (log-log) with a draggable threshold line.

Two curves on the scan's log10 bins: every activation value seen (summed over
Linear inputs), and the per-dimension abs-max that the threshold acts on. The
vertical line is the threshold; dragging it sets the threshold model.

Both curves come from counts the statistics keep as layers arrive, so a
refresh costs O(bins); during a scan it runs at most every REFRESH_MS.
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
from int8wb.app.views.throttle import Coalescer

REFRESH_MS = 100
VALUES_COLOR, ABSMAX_COLOR = "#9a9cab", "#f4a259"
EMPTY_TEXT = "Scan to see how large the activations are: the outliers sit far out, past the threshold."


class PowerOfTenAxis(pg.AxisItem):
    """An axis over log10 values that labels its ticks with the values themselves."""

    def tickStrings(self, values, scale, spacing):  # noqa: N802 - pyqtgraph's name
        return [f"{10**v:g}" if abs(v - round(v)) < 1e-6 else "" for v in values]


class HistogramView(QWidget):
    def __init__(self, stats: ScanStatistics, threshold: ThresholdModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.stats, self.threshold = stats, threshold
        self.plot = pg.PlotWidget(axisItems={"bottom": PowerOfTenAxis("bottom"), "left": PowerOfTenAxis("left")})
        self.plot.setMenuEnabled(False)
        self.plot.setLabel("bottom", "|activation|")
        self.plot.setLabel("left", "count")
        self.values_curve = self.plot.plot(
            [0, 1],
            [0],
            stepMode="center",
            fillLevel=0,
            brush=(120, 120, 140, 90),
            pen=pg.mkPen(VALUES_COLOR),
        )
        self.absmax_curve = self.plot.plot([0, 1], [0], stepMode="center", pen=pg.mkPen(ABSMAX_COLOR, width=2))
        self.line = pg.InfiniteLine(
            pos=math.log10(threshold.threshold),
            angle=90,
            movable=True,
            pen=colors.THRESHOLD_PEN,
            hoverPen=pg.mkPen("#ffffff", width=3),
            label="threshold {value}",
            labelOpts={"position": 0.9, "color": "#00e5ff"},
        )
        self.line.label.setFormat("")
        self.plot.addItem(self.line)
        self.line.sigPositionChanged.connect(self._on_line_moved)
        self.plot.setToolTip(
            "Grey: every activation value seen in the scan. Orange: the largest |activation| of each "
            "dimension, what the threshold acts on. Drag the cyan line to move the threshold."
        )
        self._updating = False
        self._refresh = Coalescer(self.refresh, REFRESH_MS, self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        # The key sits above the plot, where it cannot hide the curves.
        key = QLabel(
            f"<span style='color:{VALUES_COLOR}'>&#9632; every value</span>&nbsp;&nbsp; "
            f"<span style='color:{ABSMAX_COLOR}'>&#9632; largest per dimension</span>"
        )
        key.setWordWrap(True)
        content = QWidget()
        content_layout = QVBoxLayout(content)
        content_layout.setContentsMargins(0, 0, 0, 0)
        content_layout.addWidget(key)
        content_layout.addWidget(self.plot, 1)
        self.empty = EmptyState(content, EMPTY_TEXT)
        layout.addWidget(self.empty)
        stats.subscribe(self._refresh.follow_scan)
        threshold.subscribe(self._on_threshold)
        self._on_threshold(threshold.threshold)

    def refresh(self) -> None:
        """Show both histograms of the statistics held so far (empty curves before any)."""
        edges, totals = self.stats.absmax_hist_edges, self.stats.hist_total
        self.empty.set_empty(not self.stats.linears)
        if edges is None or totals is None or len(edges) != len(totals) + 1:
            self.values_curve.setData([0, 1], [0])
            self.absmax_curve.setData([0, 1], [0])
            return
        log_edges = np.log10(edges)
        self.values_curve.setData(log_edges, _log_counts(totals))
        self.absmax_curve.setData(log_edges, _log_counts(self.stats.absmax_hist))

    def _on_line_moved(self) -> None:
        if self._updating:
            return
        value = 10 ** float(self.line.value())
        self.threshold.set_threshold(float(f"{value:.4g}"))

    def _on_threshold(self, threshold: float) -> None:
        self._updating = True
        try:
            self.line.setValue(math.log10(threshold))
            self.line.label.setFormat(f"{threshold:g}")
        finally:
            self._updating = False


def _log_counts(counts: np.ndarray) -> np.ndarray:
    """log10 of counts for a log y axis; empty bins sit at the floor (log10 1 = 0)."""
    return np.log10(np.maximum(np.asarray(counts, dtype=np.float64), 1.0))
