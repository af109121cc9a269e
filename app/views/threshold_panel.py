"""Threshold controls and what the threshold means, updated on every change without the engine.

The slider is logarithmic (0.1 .. 1000); the spin boxes hold the threshold and
the equivalent "top % of dimensions". Below them: outlier dimensions per input
kind, the share of (Linear, dimension) pairs kept in floating point, and the
memory those floating-point columns cost. While a scan streams in, the summary
follows the new layers at most every REFRESH_MS; a threshold change shows at once.
"""

from __future__ import annotations

import math

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QSlider,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from int8wb.app.view_models.threshold import ThresholdModel
from int8wb.app.views.throttle import Coalescer
from int8wb.engine.vocabulary import DEFAULT_THRESHOLD

SLIDER_STEPS = 1000
SLIDER_LOG_RANGE = (-1.0, 3.0)  # 0.1 .. 1000
REFRESH_MS = 250
NO_SCAN_TEXT = "Scan the model to see what this threshold keeps in floating point."


def slider_to_threshold(position: int) -> float:
    low, high = SLIDER_LOG_RANGE
    return float(f"{10 ** (low + (high - low) * position / SLIDER_STEPS):.3g}")


def threshold_to_slider(threshold: float) -> int:
    low, high = SLIDER_LOG_RANGE
    position = (math.log10(threshold) - low) / (high - low) * SLIDER_STEPS
    return int(round(min(max(position, 0), SLIDER_STEPS)))


class ThresholdPanel(QGroupBox):
    def __init__(self, model: ThresholdModel, parent: QWidget | None = None) -> None:
        super().__init__("3  Pick the threshold", parent)
        self.model = model
        self._syncing = False
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)
        self.slider.setToolTip(
            "Drag to move the outlier threshold on |x| (logarithmic, 0.1 to 1000; Ctrl+Up / Ctrl+Down)"
        )
        self.spin = QDoubleSpinBox()
        self.spin.setDecimals(3)
        self.spin.setRange(0.001, 1e6)
        self.spin.setSingleStep(0.5)
        self.spin.setToolTip(
            "A Linear input dimension whose largest |activation| in the scan exceeds this is an outlier: "
            f"LLM.int8() keeps it in floating point. {DEFAULT_THRESHOLD:g} is the paper's choice."
        )
        self.fraction_spin = QDoubleSpinBox()
        self.fraction_spin.setDecimals(3)
        self.fraction_spin.setRange(0.0, 100.0)
        self.fraction_spin.setSuffix(" %")
        self.fraction_spin.setSingleStep(0.1)
        self.fraction_spin.setToolTip(
            "The same choice, put as a share: the top % of (Linear, dimension) pairs by their largest "
            "|activation| become outliers"
        )
        self.overall = QLabel(NO_SCAN_TEXT)
        self.overall.setWordWrap(True)
        self.overall.setObjectName("summary")
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["input", "dims", "per layer"])
        self.table.setToolTip(
            "dims: distinct dimensions over the threshold in at least one layer; "
            "per layer: mean / max number of them in one layer"
        )
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(22)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setVisible(False)

        values = QHBoxLayout()
        for label, spin in (("|x| over", self.spin), ("top", self.fraction_spin)):
            values.addWidget(QLabel(label))
            values.addWidget(spin, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(values)
        layout.addWidget(self.slider)
        layout.addWidget(self.overall)
        layout.addWidget(self.table)

        self.slider.valueChanged.connect(lambda pos: self._apply(slider_to_threshold(pos)))
        self.spin.valueChanged.connect(self._apply)
        self.fraction_spin.valueChanged.connect(self._apply_fraction)
        self._refresh = Coalescer(self.refresh, REFRESH_MS, self)
        model.subscribe(lambda _: self._refresh.now())
        model.stats.subscribe(self._refresh.follow_scan)
        self.refresh()

    def _apply(self, threshold: float) -> None:
        if not self._syncing and threshold > 0:
            self.model.set_threshold(threshold)

    def _apply_fraction(self, percent: float) -> None:
        if self._syncing or not self.model.stats.linears:
            return
        self.model.set_fraction(percent / 100.0)

    def refresh(self) -> None:
        """Show the model's threshold in every control and recompute the summary."""
        self._syncing = True
        try:
            threshold = self.model.threshold
            self.spin.setValue(threshold)
            self.slider.setValue(threshold_to_slider(threshold))
            self.fraction_spin.setValue(100.0 * self.model.fraction_for_threshold(threshold))
        finally:
            self._syncing = False
        if not self.model.stats.linears:
            self.overall.setText(NO_SCAN_TEXT)
            self.table.setRowCount(0)
            self.table.setVisible(False)
            return
        summary = self.model.summary()
        if summary.float_bytes is None:
            memory = "memory unknown (the scan did not report the Linears' out_features)"
        else:
            memory = f"<b>{summary.float_bytes / 1e6:,.2f} MB</b>"
        self.overall.setText(
            f"<b>{summary.outlier_columns:,}</b> of {summary.total_columns:,} Linear input columns over "
            f"{threshold:g}: <b>{summary.fraction:.3%}</b> kept in floating point, {memory}."
        )
        self.overall.setToolTip(
            "The memory is what the outlier columns cost in floating point: "
            f"{self.model.float_bytes * 8}-bit weights (out_features per column) + an int64 index each."
        )
        if self.table.rowCount() != len(summary.kinds):
            self.table.setRowCount(len(summary.kinds))
            self._fit_table()
        for row, kind in enumerate(summary.kinds):
            cells = [
                kind.label,
                f"{kind.dims_any_layer:,}",
                f"{kind.mean_dims_per_layer:.1f} / {kind.max_dims_in_a_layer}",
            ]
            for col, text in enumerate(cells):
                self._set_cell(row, col, text)

    def _fit_table(self) -> None:
        """As tall as its rows (a handful of input kinds): no scroll bar, no empty space."""
        rows = sum(self.table.rowHeight(r) for r in range(self.table.rowCount()))
        self.table.setFixedHeight(
            self.table.horizontalHeader().sizeHint().height() + rows + 2 * self.table.frameWidth()
        )
        self.table.setVisible(self.table.rowCount() > 0)

    def _set_cell(self, row: int, col: int, text: str) -> None:
        """Change a cell only when its text changes: each change re-fits the columns to their contents."""
        item = self.table.item(row, col)
        if item is None:
            item = QTableWidgetItem(text)
            if col:
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.table.setItem(row, col, item)
        elif item.text() != text:
            item.setText(text)
