"""The results table and the perplexity bar chart, observing `ResultsModel`."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHeaderView, QLabel, QSplitter, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from app.view_models.results import COLUMNS, ResultsModel

BAR_COLORS = {
    "baseline": "#9a9cab",
    "absmax-tensor": "#e56b6f",
    "vectorwise": "#f4a259",
    "llm-int8": "#00e5ff",
    "llm-int8-dynamic": "#5b8def",
    "weight-only": "#8cb369",
}


class ResultsView(QWidget):
    def __init__(self, model: ResultsModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.caption = QLabel("Tick methods and press Run to quantize and measure perplexity.")
        self.caption.setObjectName("sectionTitle")
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.chart = pg.PlotWidget()
        self.chart.setMenuEnabled(False)
        self.chart.setMouseEnabled(False, False)
        self.chart.setLabel("left", "perplexity")
        self.chart.getAxis("bottom").setHeight(42)  # two staggered rows of method names
        self.bars: pg.BarGraphItem | None = None
        self.baseline_line = pg.InfiniteLine(angle=0, pen=pg.mkPen("#9a9cab", style=Qt.PenStyle.DashLine))
        self.chart.addItem(self.baseline_line)
        self.labels: list[pg.TextItem] = []

        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(self.caption)
        top_layout.addWidget(self.table)
        top_layout.addWidget(self.note)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(top)
        splitter.addWidget(self.chart)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)
        model.subscribe(self.refresh)

    def refresh(self) -> None:
        rows = list(self.model.rows.values())
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row.cells()):
                item = QTableWidgetItem(text)
                if c:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(r, c, item)
        if self.model.eval_tokens:
            self.caption.setText(
                f"Perplexity on {self.model.eval_tokens:,} evaluation tokens "
                "(never the calibration text); change is against the floating-point baseline."
            )
        self.note.setText(self.model.plan_note)
        self._draw_chart()

    def _draw_chart(self) -> None:
        methods, values, baseline = self.model.chart_data()
        if self.bars is not None:
            self.chart.removeItem(self.bars)
            self.bars = None
        for label in self.labels:
            self.chart.removeItem(label)
        self.labels = []
        self.chart.setVisible(bool(methods))
        if not methods:
            return
        x = np.arange(len(methods))
        brushes = [pg.mkBrush(BAR_COLORS.get(m, "#b0b0b0")) for m in methods]
        self.bars = pg.BarGraphItem(x=x, height=values, width=0.6, brushes=brushes)
        self.chart.addItem(self.bars)
        for i, value in enumerate(values):
            label = pg.TextItem(f"{value:.2f}", anchor=(0.5, 1.0), color="#d6d7dc")
            label.setPos(i, value)
            self.chart.addItem(label)
            self.labels.append(label)
        if baseline is not None:
            self.baseline_line.setValue(baseline)
        finite = [v for v in values if np.isfinite(v)]
        self.chart.setYRange(0, max(finite) * 1.15 if finite else 1)
        self.chart.setXRange(-0.6, len(methods) - 0.4)
        # Every other name one line lower, so that long method names never run into each other.
        self.chart.getAxis("bottom").setTicks([[(i, f"\n{m}" if i % 2 else m) for i, m in enumerate(methods)]])
