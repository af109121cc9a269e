"""The Scan panel (2): calibration corpus, token budget, whether to measure each method's error; the Scan button.

It only collects the user's choices and emits `sig_scan`; the main window sends it to the workflow.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QFileDialog, QGroupBox, QVBoxLayout, QWidget

from int8wb.app.views.inputs import row, spin_box, step_button


class ScanPanel(QGroupBox):
    """Calibration corpus and token budget; the Scan button."""

    sig_scan = Signal(dict)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("2  Scan", parent)
        self.corpus = QComboBox()
        self.corpus.addItem("Python docs (pydoc topics)", None)
        self.corpus.addItem("Text file…", "choose")
        self.corpus.setToolTip("Calibration text: the scan runs it through the model (never used for evaluation)")
        self.corpus.activated.connect(self._corpus_chosen)
        self.tokens = spin_box(64, 1 << 20, 4096, " tokens", 512, "How many calibration tokens the scan runs")
        self.seq_len = spin_box(16, 8192, 512, " per sequence", 64, "Tokens per calibration sequence")
        self.scan_button = step_button(
            "Scan", "Record the largest activation of every input dimension of every Linear (Ctrl+R)"
        )
        self.measure_errors = QCheckBox("measure each method's error")
        self.measure_errors.setToolTip(
            "Also measure, on every Linear, the output error (SQNR) of each method ticked under Run, with the "
            "Linear's true floating-point input: the error map beside the heatmap"
        )
        self.ticked_methods: Callable[[], list[str]] = list  # the window hands in the Run panel's ticked methods
        layout = QVBoxLayout(self)
        layout.addLayout(row(self.corpus, self.measure_errors))
        layout.addLayout(row(self.tokens, self.seq_len, self.scan_button))
        self.scan_button.clicked.connect(lambda: self.sig_scan.emit(self.params()))

    def _corpus_chosen(self, index: int) -> None:
        if self.corpus.itemData(index) != "choose":
            return
        path, _ = QFileDialog.getOpenFileName(self, "Calibration text (UTF-8)", "", "Text (*.txt *.md);;All (*)")
        if path:
            self.corpus.insertItem(1, path, path)
            self.corpus.setCurrentIndex(1)
        else:
            self.corpus.setCurrentIndex(0)

    def params(self) -> dict:
        errors = {"error_methods": self.ticked_methods()} if self.measure_errors.isChecked() else {}
        return {
            "tokens": self.tokens.value(),
            "seq_len": min(self.seq_len.value(), self.tokens.value()),
            "corpus": self.corpus.currentData(),
            **errors,
        }
