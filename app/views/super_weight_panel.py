"""The super weight panel: run the zeroing experiment with one click, see its candidates and verdict, and keep
the found super weights in floating point in the next Run.

"Run the experiment" sends the `super_weights` request through the workflow (engine.measure.super_weight):
each down projection's largest input spike and the output it writes there give one candidate weight; each
candidate is zeroed against a control (the largest other weight of its Linear) and perplexity measured.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import (
    QCheckBox,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from int8wb.app.views.experiment_window import ExperimentWindow

COLUMNS = ("Linear", "[row, col]", "weight", "input spike", "x median", "writes", "ppl zeroed", "ppl control", "")
COLUMN_TOOLTIPS = {
    "[row, col]": "The weight at the crossing: row = the output dimension written, col = the input dimension read",
    "input spike": "The largest |input| of the Linear on the calibration text (at the token given in the tooltip)",
    "x median": "That spike over the median |input| of the Linear",
    "writes": "The Linear's output in the row's dimension at that token",
    "ppl zeroed": "Perplexity with this one weight set to zero",
    "ppl control": "Perplexity with the largest other weight of the same Linear set to zero instead",
}
INTRO = (
    "A super weight is one scalar of an MLP down projection that writes a massive activation into the residual "
    "stream; zeroing it destroys the model, zeroing other large weights does not (Yu et al. 2024). The experiment "
    "takes each down projection's largest input spike and the output it writes there, and zeroes the weight at "
    "their crossing against a control."
)


class SuperWeightPanel(ExperimentWindow):
    """The experiment's button, its candidates and verdict, and the keep option; see the module docstring."""

    title = "The super weight"
    result_event = "super_weights"

    def _build(self) -> None:
        intro = QLabel(INTRO)
        intro.setWordWrap(True)
        self.run_button = QPushButton("Run the experiment")
        self.run_button.setToolTip("Zero each candidate and its control and measure perplexity (a few minutes)")
        self.run_button.clicked.connect(lambda: self.workbench.run_super_weights())
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        for i, name in enumerate(COLUMNS):
            if name in COLUMN_TOOLTIPS:
                self.table.horizontalHeaderItem(i).setToolTip(COLUMN_TOOLTIPS[name])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.verdict = QLabel("No experiment yet.")
        self.verdict.setWordWrap(True)
        self.keep = QCheckBox("Keep the found super weights in floating point in the next Run (every method)")
        self.keep.toggled.connect(self.workbench.set_keep_super_weights)
        layout = QVBoxLayout(self)
        for widget in (intro, self.run_button, self.table, self.verdict, self.keep):
            layout.addWidget(widget)
        self.resize(900, 360)
        self.show_result(self.workbench.super_weights)

    def _update_details(self) -> None:
        found = bool((self.workbench.super_weights or {}).get("super_weights"))
        self.keep.setEnabled(found)
        self.keep.blockSignals(True)
        self.keep.setChecked(self.workbench.keep_super_weights)
        self.keep.blockSignals(False)

    def show_result(self, result: dict[str, Any] | None) -> None:
        """The candidates with their perplexities, and the verdict with its criterion (or the empty state)."""
        candidates = (result or {}).get("candidates", [])
        self.table.setRowCount(len(candidates))
        for row, c in enumerate(candidates):
            cells = (
                c["module"],
                f"[{c['row']}, {c['col']}]",
                f"{c['weight']:.4g}",
                f"{c['input_spike']:,.1f}",
                f"{c['input_ratio']:,.0f}",
                f"{c['output_spike']:,.0f}",
                f"{c['zeroed']:.3f}",
                f"{c['control']:.3f}",
                "super weight" if c["super_weight"] else "",
            )
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(f"{c['module']}.weight[{c['row']}, {c['col']}], input spike at token {c['token']}")
                self.table.setItem(row, column, item)
        if result is None:
            self.verdict.setText("No experiment yet: Run the experiment.")
        else:
            self.verdict.setText(
                f"Perplexity as it is: {result['baseline']:.3f} on {result['tokens']:,} tokens. "
                f"<b>{result['verdict']}</b>. Criterion: {result['criterion']}."
            )
        self._update_enabled()
