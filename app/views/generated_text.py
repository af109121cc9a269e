"""The "Generated text" tab: each method's first greedy tokens next to the baseline's, observing `ResultsModel`.

Reading the continuations one under the other shows where naive INT8 starts writing something else.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHeaderView, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from int8wb.app.view_models.results import ResultsModel

HEADERS = ("method", "tokens/s", "bound", "differs", "generated text")


class GeneratedTextView(QWidget):
    def __init__(self, model: ResultsModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.caption = QLabel("Run measures greedy decoding after the evaluation; its text appears here.")
        self.caption.setWordWrap(True)
        self.caption.setTextFormat(Qt.TextFormat.PlainText)
        self.prompt = QLabel("")
        self.prompt.setTextFormat(Qt.TextFormat.PlainText)
        self.prompt.setWordWrap(True)
        self.prompt.setObjectName("info")
        self.prompt.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.table = QTableWidget(0, len(HEADERS))
        self.table.setHorizontalHeaderLabels(list(HEADERS))
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for widget in (self.caption, self.prompt, self.table):
            layout.addWidget(widget)
        model.subscribe(self.refresh)

    def refresh(self) -> None:
        run = self.model.decode
        rows = run.rows if run else ()
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            cells = (
                row.method,
                f"{row.tokens_per_s:,.1f}",
                f"{row.bound_tokens_per_s:,.1f}",
                row.differs_text,
                row.text.replace("\n", "⏎"),
            )
            for c, text in enumerate(cells):
                self.table.setItem(r, c, QTableWidgetItem(text))
        if run is not None:
            self.caption.setText(run.caption)
            self.prompt.setText(f"Prompt: {run.prompt.replace(chr(10), '⏎')}")
