"""The planner dialog's throughput section: decode tokens/s per method and card, and the terms behind one.

It reads the `decode` part of the plan the dialog already has (no request of its own). The cell
selected here, or in the dialog's memory table, chooses the method and card whose terms are shown:
bytes read per step ÷ the card's bandwidth = the step time and so tokens/s, the compute time of
the same step and the batch where it takes over, and the comparison with the baseline.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import (
    QHeaderView,
    QLabel,
    QSplitter,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from int8wb.app.view_models.throughput import ThroughputViewModel
from int8wb.app.views.inputs import cell_table
from int8wb.app.views.term_tree import show_terms, term_tree

FIXED_COLUMNS = ("method", "read per token")


class ThroughputSection(QWidget):
    """Bandwidth-bound decode rates of a plan; empty until `show_plan`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view: ThroughputViewModel | None = None
        self.selected: tuple[str, str] | None = None
        self.caption = QLabel("Throughput: plan a model to see the decode rate each card's bandwidth allows.")
        self.caption.setObjectName("sectionTitle")
        self.headline = QLabel("")
        self.headline.setObjectName("info")
        self.headline.setWordWrap(True)
        self.table = cell_table(self._on_cell)
        self.table.setMinimumHeight(120)
        self.terms_caption = QLabel("")
        self.tree = term_tree(("term", "value", "what it is"))
        terms = QWidget()
        terms_layout = QVBoxLayout(terms)
        terms_layout.setContentsMargins(0, 0, 0, 0)
        terms_layout.addWidget(self.terms_caption)
        terms_layout.addWidget(self.tree)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.table)
        splitter.addWidget(terms)
        splitter.setChildrenCollapsible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.caption)
        layout.addWidget(self.headline)
        layout.addWidget(splitter, 1)

    def show_plan(self, result: dict) -> None:
        """Fill the table from a `plan_memory` result (its methods' `decode` sections)."""
        view = ThroughputViewModel(result)
        self.view = view
        self.caption.setText("Throughput: bandwidth-bound tokens/s per sequence")
        self.headline.setText(view.headline())
        headers = [*FIXED_COLUMNS, *(f"{gpu}\ntokens/s" for gpu in view.gpus)]
        self.table.clear()
        self.table.setColumnCount(len(headers))
        self.table.setHorizontalHeaderLabels(headers)
        self.table.setRowCount(len(view.methods))
        for r, method in enumerate(view.methods):
            cells = (view.label(method), view.bytes_per_token(method), *(view.cell(method, gpu) for gpu in view.gpus))
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if c:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                self.table.setItem(r, c, item)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        for column in range(1, len(headers)):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Stretch)
        method, gpu = self.selected or (view.methods[0], view.gpus[0])
        self.select(method if method in view.methods else view.methods[0], gpu if gpu in view.gpus else view.gpus[0])

    def select(self, method: str, gpu: str) -> None:
        """Show the terms of `method` on `gpu` (the dialog calls this when its own selection moves)."""
        if self.view is None or method not in self.view.methods or gpu not in self.view.gpus:
            return
        self.selected = (method, gpu)
        row, column = self.view.methods.index(method), len(FIXED_COLUMNS) + self.view.gpus.index(gpu)
        if (self.table.currentRow(), self.table.currentColumn()) != (row, column):
            self.table.setCurrentCell(row, column)  # comes back through _on_cell once, then stops here
        self.terms_caption.setText(f"Why {self.view.cell(method, gpu)} tokens/s on {gpu} for {self.view.label(method)}")
        show_terms(self.tree, self.view.terms(method, gpu))

    @Slot(int, int, int, int)
    def _on_cell(self, row: int, column: int, _previous_row: int, _previous_column: int) -> None:
        if self.view is None or not 0 <= row < len(self.view.methods):
            return
        gpu = self.view.gpus[column - len(FIXED_COLUMNS)] if column >= len(FIXED_COLUMNS) else self.selected[1]
        self.select(self.view.methods[row], gpu)
