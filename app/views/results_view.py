"""The Run's results: the outcome in a sentence, the table and the perplexity bar chart, observing `ResultsModel`.

The table shows the columns of `app.view_models.results.COLUMNS` marked shown,
each header with its meaning as a tooltip, each row with the other columns as
its tooltip. Right-click the table to save every column as CSV or copy them as
Markdown. Before any result the view says what fills it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPoint, QSettings, Qt, QTimer
from PySide6.QtWidgets import (
    QApplication,
    QHeaderView,
    QLabel,
    QMenu,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from int8wb.app.view_models.results import FOLDS_FIRST, ResultsModel, row_tooltip, shown_columns
from int8wb.app.view_models.scan_stats import ScanStatistics
from int8wb.app.view_models.story import result_sentence
from int8wb.app.view_models.task_accuracy import CAPTION as TASK_CAPTION
from int8wb.app.view_models.threshold import ThresholdModel
from int8wb.app.views.empty_state import EmptyState
from int8wb.app.views.saving import ask_save_path
from int8wb.engine.vocabulary import METHOD_COLOURS

EMPTY_TEXT = (
    "Tick methods and press Run: the engine quantizes the model with each, measures its perplexity on text "
    "the scan never saw, and counts the GPUs it needs."
)
FOLDER_KEY = "folders/results"
CHART_MIN_WIDTH = 160  # narrower and its bars' labels collide; the table takes the rest first


class ResultsView(QWidget):
    def __init__(
        self,
        model: ResultsModel,
        stats: ScanStatistics,
        threshold: ThresholdModel,
        settings: QSettings | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.model, self.stats, self.threshold, self.settings = model, stats, threshold, settings
        self.sentence = QLabel("")
        self.sentence.setObjectName("resultSentence")
        self.sentence.setWordWrap(True)
        self.sentence.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.folded: tuple[str, ...] = ()  # shown columns folded into the rows' tooltips for want of width
        self.table = self._build_table()
        self.note = QLabel("")  # what was measured on what, and the memory plan's notes
        self.note.setObjectName("info")
        self.note.setWordWrap(True)
        self.coverage = QLabel("")  # what the INT8 share counts, what stayed in floating point and why, warnings
        self.task_table = self._build_task_table()  # lm-evaluation-harness accuracy and recovery, when asked for
        self.coverage.setWordWrap(True)
        self.chart = self._build_chart()
        self.bars: pg.BarGraphItem | None = None
        self.labels: list[pg.TextItem] = []

        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(self.table, 1)
        top_layout.addWidget(self.coverage)
        top_layout.addWidget(self.task_table)
        top_layout.addWidget(self.note)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(top)
        self.splitter.addWidget(self.chart)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)
        content = QWidget()
        content_layout = QVBoxLayout(content)
        content_layout.setContentsMargins(0, 0, 0, 0)
        content_layout.addWidget(self.sentence)
        content_layout.addWidget(self.splitter, 1)
        self.empty = EmptyState(content, EMPTY_TEXT)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.empty)
        model.subscribe(self.refresh)

    def _build_table(self) -> QTableWidget:
        columns = shown_columns()
        table = QTableWidget(0, len(columns))
        # Two-line headers ("model" over "MB") keep the columns as narrow as their numbers.
        table.setHorizontalHeaderLabels([column.header.replace(" ", "\n", 1) for column in columns])
        for index, column in enumerate(columns):
            table.horizontalHeaderItem(index).setToolTip(column.tooltip)
        table.verticalHeader().setVisible(False)
        table.verticalHeader().setDefaultSectionSize(22)
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        table.customContextMenuRequested.connect(self._table_menu)
        return table

    def _build_chart(self) -> pg.PlotWidget:
        chart = pg.PlotWidget()
        chart.setMenuEnabled(False)
        chart.setMouseEnabled(False, False)
        chart.setLabel("left", "perplexity")
        chart.getAxis("left").enableAutoSIPrefix(False)
        chart.getViewBox().setLimits(yMin=0)  # perplexity is never negative, nor is its axis
        chart.getAxis("bottom").setHeight(42)  # two staggered rows of method names
        chart.setToolTip("Perplexity per method; the dashed line is the floating-point baseline")
        chart.setMinimumWidth(CHART_MIN_WIDTH)
        self.baseline_line = pg.InfiniteLine(angle=0, pen=pg.mkPen("#9a9cab", style=Qt.PenStyle.DashLine))
        chart.addItem(self.baseline_line)
        return chart

    def refresh(self) -> None:
        rows = list(self.model.rows.values())
        self.empty.set_empty(not rows)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            tooltip = row_tooltip(row, self.folded)
            for c, text in enumerate(row.cells()):
                item = QTableWidgetItem(text)
                item.setToolTip(tooltip)
                if c:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(r, c, item)
        measured = (
            f"Perplexity on {self.model.eval_tokens:,} evaluation tokens, never the calibration text."
            if self.model.eval_tokens
            else "Quantized: evaluating next."
        )
        self.sentence.setText(result_sentence(self.model, self.stats, self.threshold))
        coverage = self.model.coverage_note()
        self.coverage.setText(coverage)
        self.coverage.setObjectName("warning" if any(row.warnings for row in rows) else "info")
        self.coverage.style().polish(self.coverage)
        self.coverage.setVisible(bool(coverage))
        self._show_tasks()
        self.note.setText(
            " ".join(text for text in (measured, self.model.plan_note and f"{self.model.plan_note}.") if text)
        )
        self._draw_chart()
        QTimer.singleShot(0, self.fit_table_width)  # once the rows are laid out and the table is shown

    @staticmethod
    def _build_task_table() -> QTableWidget:
        table = QTableWidget(0, 0)
        table.setToolTip(TASK_CAPTION)
        table.verticalHeader().setVisible(False)
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        table.setVisible(False)
        return table

    def _show_tasks(self) -> None:
        """Accuracy ± standard error and recovery per model and task; hidden until a Run scores tasks."""
        tasks = self.model.tasks
        self.task_table.setVisible(tasks is not None)
        if tasks is None:
            return
        header, rows = tasks.header(), tasks.rows()
        self.task_table.setColumnCount(len(header))
        self.task_table.setHorizontalHeaderLabels(header)
        self.task_table.setRowCount(len(rows))
        for r, cells in enumerate(rows):
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if c:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.task_table.setItem(r, c, item)
        rows_height = sum(self.task_table.rowHeight(r) for r in range(len(rows)))
        self.task_table.setFixedHeight(self.task_table.horizontalHeader().sizeHint().height() + rows_height + 4)

    def fit_table_width(self) -> None:
        """Give the table the width its columns need, taken from the chart while the chart keeps its minimum;
        where even that is too narrow, fold the detail columns (FOLDS_FIRST) into each row's tooltip."""
        table_width, chart_width = self.splitter.sizes()
        room = table_width + chart_width - CHART_MIN_WIDTH
        headers = [column.header for column in shown_columns()]
        folded: list[str] = []
        for header in (None, *FOLDS_FIRST):
            if header is not None:
                folded.append(header)
            for index, name in enumerate(headers):
                self.table.setColumnHidden(index, name in folded)
            if self._needed_width() <= room:
                break
        if tuple(folded) != self.folded:
            self.folded = tuple(folded)
            self._set_tooltips()
        needed = self._needed_width()
        if table_width < needed:
            self.splitter.setSizes([min(needed, room), table_width + chart_width - min(needed, room)])

    def _needed_width(self) -> int:
        table = self.table
        scroll_bar = table.verticalScrollBar()
        needed = table.horizontalHeader().length() + 2 * table.frameWidth()
        return needed + (scroll_bar.sizeHint().width() if scroll_bar.maximum() > 0 else 0)

    def _set_tooltips(self) -> None:
        for r, row in enumerate(self.model.rows.values()):
            tooltip = row_tooltip(row, self.folded)
            for c in range(self.table.columnCount()):
                if self.table.item(r, c) is not None:
                    self.table.item(r, c).setToolTip(tooltip)

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
        brushes = [pg.mkBrush(METHOD_COLOURS.get(m, "#b0b0b0")) for m in methods]
        self.bars = pg.BarGraphItem(x=x, height=values, width=0.6, brushes=brushes)
        self.chart.addItem(self.bars)
        for i, value in enumerate(values):
            label = pg.TextItem(f"{value:.1f}", anchor=(0.5, 1.0), color="#d6d7dc")  # the table has the digits
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

    # --- keeping the results -----------------------------------------------------------------------

    def save_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.model.to_csv(), encoding="utf-8")
        return path

    def copy_markdown(self) -> str:
        text = self.model.to_markdown()
        QApplication.clipboard().setText(text)
        return text

    def ask_save_csv(self) -> None:
        path = ask_save_path(self, "Save the results", "results.csv", "CSV (*.csv)", self.settings, FOLDER_KEY)
        if path is not None:
            self.save_csv(path)

    def _table_menu(self, pos: QPoint) -> None:
        menu = QMenu(self.table)
        menu.addAction("Save results as CSV…", self.ask_save_csv).setEnabled(bool(self.model.rows))
        menu.addAction("Copy results as Markdown", self.copy_markdown).setEnabled(bool(self.model.rows))
        menu.popup(self.table.viewport().mapToGlobal(pos))
