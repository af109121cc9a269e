"""Histogram of activation magnitudes (log-log) with a draggable threshold line.

Two curves on the scan's log10 bins: every activation value seen (summed over
Linear inputs), and the per-dimension abs-max that the threshold acts on. The
vertical line is the threshold; dragging it sets the threshold model.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QVBoxLayout, QWidget

from app.view_models.scan_stats import ScanStatistics
from app.view_models.threshold import ThresholdModel
from app.views import colors


class PowerOfTenAxis(pg.AxisItem):
    """An axis over log10 values that labels its ticks with the values themselves."""

    def tickStrings(self, values, scale, spacing):  # noqa: N802 - pyqtgraph's name
        return [f"{10 ** v:g}" if abs(v - round(v)) < 1e-6 else "" for v in values]


class HistogramView(QWidget):
    def __init__(self, stats: ScanStatistics, threshold: ThresholdModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.stats, self.threshold = stats, threshold
        self.plot = pg.PlotWidget(axisItems={"bottom": PowerOfTenAxis("bottom"), "left": PowerOfTenAxis("left")})
        self.plot.setMenuEnabled(False)
        self.plot.setLabel("bottom", "|activation|")
        self.plot.setLabel("left", "count")
        self.plot.addLegend(offset=(-10, 10))
        self.values_curve = self.plot.plot([0, 1], [0], stepMode="center", fillLevel=0, brush=(120, 120, 140, 90),
                                           pen=pg.mkPen("#9a9cab"), name="all values")
        self.absmax_curve = self.plot.plot([0, 1], [0], stepMode="center", pen=pg.mkPen("#f4a259", width=2),
                                           name="per-dimension abs-max")
        self.line = pg.InfiniteLine(pos=math.log10(threshold.threshold), angle=90, movable=True,
                                    pen=colors.THRESHOLD_PEN, hoverPen=pg.mkPen("#ffffff", width=3),
                                    label="threshold {value}", labelOpts={"position": 0.9, "color": "#00e5ff"})
        self.line.label.setFormat("")
        self.plot.addItem(self.line)
        self.line.sigPositionChanged.connect(self._on_line_moved)
        self._updating = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)
        stats.subscribe(self._on_stats)
        threshold.subscribe(self._on_threshold)
        self._on_threshold(threshold.threshold)

    def _on_stats(self, event: str, data: object) -> None:
        if event in ("finished", "reset") or (event == "row" and self.stats.rows_filled % 8 == 1):
            self.refresh()

    def refresh(self) -> None:
        """Recompute both histograms from the statistics held so far."""
        edges = self.stats.hist_edges
        totals = self.stats.hist_total
        if edges is None or totals is None or len(edges) != len(totals) + 1:
            if totals is None:
                return
            edges = np.logspace(-4, 5, len(totals) + 1)  # the engine's bins, until its result names them
        log_edges = np.log10(edges)
        self.values_curve.setData(log_edges, _log_counts(totals))
        absmax = self.stats.all_absmax()
        absmax = absmax[np.isfinite(absmax) & (absmax > 0)]
        counts, _ = np.histogram(np.clip(np.log10(absmax), log_edges[0], log_edges[-1]), bins=log_edges)
        self.absmax_curve.setData(log_edges, _log_counts(counts))

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
