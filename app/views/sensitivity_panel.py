"""The sensitivity panel: which Linears to keep in floating point so a method meets a perplexity target.

The user picks a method, a target and a grouping; Run sends the `sensitivity` request through the
workflow. The result shows as the ranking of groups, the curve "float MB kept -> perplexity" (measured,
the one the divergence gives and its upper confidence bound, dashed) with the target line, and the chosen
list with its held-out check.
"Apply to export" hands the list to the workflow: the next Run quantizes around it and its export
writes those Linears in floating point.
"""

from __future__ import annotations

from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from int8wb.app.view_models import sensitivity
from int8wb.app.views import colors
from int8wb.app.views.experiment_window import ExperimentWindow
from int8wb.engine.vocabulary import DEFAULT_REPAIR_METHOD, METHOD_SHORT_LABELS, METHODS

GROUPS = (
    ("the Linears that read one input (vLLM fuses them)", "input"),
    ("each Linear alone (smallest list; not for vLLM)", "linear"),
    ("each decoder layer's Linears (fastest)", "layer"),
)
RANKING_COLUMNS = ("#", "group", "Linears", "float MB", "KL alone", "ppl alone", "change")
COLUMN_TOOLTIPS = {
    "KL alone": "KL divergence of the floating-point model with only this group quantized from the baseline, mean "
    "per token: the groups rank by it per MB",
    "ppl alone": "Perplexity of that model on the sweep's tokens",
    "change": "Its change against the baseline's: on a couple of thousand tokens it can fall below zero",
}
DEFAULT_WINDOW = 512


class SensitivityPanel(ExperimentWindow):
    """Settings, Run, and the last sweep's ranking, curve and list; see the module docstring."""

    title = "Which Linears to keep in floating point"
    result_event = "sensitivity"
    result: dict[str, Any] | None = None  # the last sweep's

    def _build(self) -> None:
        self.method = QComboBox()
        for name in METHODS:
            self.method.addItem(METHOD_SHORT_LABELS[name], name)
        self.method.setCurrentIndex(self.method.findData(DEFAULT_REPAIR_METHOD))
        self.target = QDoubleSpinBox()
        self.target.setRange(0.0, 1000.0)
        self.target.setDecimals(2)
        self.target.setSingleStep(0.5)
        self.target.setValue(1.0)
        self.target.setSuffix(" %")
        self.target.setToolTip("Allowed perplexity change against the floating-point baseline")
        self.group = QComboBox()
        for label, value in GROUPS:
            self.group.addItem(label, value)
        self.tokens = QSpinBox()
        self.tokens.setRange(64, 1 << 20)
        self.tokens.setSingleStep(512)
        self.tokens.setValue(2048)
        self.tokens.setSuffix(" tokens")
        self.tokens.setToolTip("Evaluation tokens the sweep measures on; as many again, never seen, check the list")
        self.run_button = QPushButton("Run sweep")
        self.run_button.clicked.connect(self.run)
        form = QFormLayout()
        form.addRow("method", self.method)
        form.addRow("target", self.target)
        form.addRow("keep in float", self.group)
        form.addRow("evaluation", self.tokens)

        self.verdict = QLabel("Run the sweep to rank what keeping each group in floating point buys.")
        self.verdict.setWordWrap(True)
        self.held_out = QLabel("")
        self.held_out.setWordWrap(True)
        self.table = QTableWidget(0, len(RANKING_COLUMNS))
        self.table.setHorizontalHeaderLabels(RANKING_COLUMNS)
        for column, title in enumerate(RANKING_COLUMNS):
            self.table.horizontalHeaderItem(column).setToolTip(COLUMN_TOOLTIPS.get(title, ""))
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)  # the group's name takes what is left
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.plot = pg.PlotWidget()
        self.plot.setMenuEnabled(False)
        self.plot.setLabel("bottom", "float MB kept")
        self.plot.setLabel("left", "perplexity")
        self.plot.addLegend(offset=(-10, 10))  # top right, where the curve has fallen to the target
        self.curve = self.plot.plot(
            [], [], pen=pg.mkPen(colors.KIND_COLORS["mlp_in"], width=2), symbol="o", name="measured on the sweep"
        )
        self.expected = self.plot.plot(
            [], [], pen=pg.mkPen(colors.KIND_COLORS["attn_in"], width=2), name="from the divergence"
        )
        self.bound = self.plot.plot(
            [],
            [],
            pen=pg.mkPen(colors.KIND_COLORS["attn_in"], width=1, style=Qt.PenStyle.DashLine),
            name="at most, other text (95%)",
        )
        self.goal_line = pg.InfiniteLine(angle=0, pen=colors.THRESHOLD_PEN, label="target", labelOpts={"position": 0.9})
        self.plot.addItem(self.goal_line)
        self.goal_line.setVisible(False)
        self.chosen = QPlainTextEdit()
        self.chosen.setReadOnly(True)
        self.chosen.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)  # one module name per line
        self.chosen.setPlaceholderText("The chosen skip list")
        self.apply_button = QPushButton("Apply to export")
        self.apply_button.setToolTip("The next Run keeps these Linears in floating point, and so does its export")
        self.apply_button.clicked.connect(self.apply)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.note.setObjectName("info")

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.table)
        splitter.addWidget(self.plot)
        chosen = QWidget()
        chosen_layout = QVBoxLayout(chosen)
        chosen_layout.setContentsMargins(0, 0, 0, 0)
        chosen_layout.addWidget(self.chosen)
        chosen_layout.addWidget(self.apply_button)
        splitter.addWidget(chosen)
        top = QHBoxLayout()
        top.addLayout(form)
        top.addWidget(self.run_button, 0, Qt.AlignmentFlag.AlignBottom)
        top.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.verdict)
        layout.addWidget(splitter, 1)
        layout.addWidget(self.held_out)
        layout.addWidget(self.note)
        self.resize(1280, 600)
        splitter.setSizes([620, 400, 260])  # the ranking's columns and the module names fit without scrolling

    # --- actions ---------------------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        tokens = self.tokens.value()
        return {
            "method": self.method.currentData(),
            "target": self.target.value(),
            "group": self.group.currentData(),
            "tokens": tokens,
            "holdout_tokens": tokens,
            "window": min(DEFAULT_WINDOW, tokens),
        }

    def run(self) -> str | None:
        return self.workbench.run_sensitivity(self.params())

    def apply(self) -> None:
        """Hand the chosen list to the next Run (and so to its export)."""
        if self.result is not None:
            self.workbench.set_skip_list(self.result["skip_modules"], sensitivity.source_of(self.result))

    # --- showing ---------------------------------------------------------------------------------

    def show_result(self, result: dict[str, Any]) -> None:
        self.result = result
        self.verdict.setText(sensitivity.verdict(result))
        self.held_out.setText(sensitivity.held_out(result))
        rows = sensitivity.ranking(result)
        self.table.setRowCount(len(rows))
        for row, entry in enumerate(rows):
            cells = (
                str(entry.rank),
                sensitivity.short_name(entry.group),
                str(entry.linears),
                f"{entry.float_mb:.2f}",
                f"{entry.kl_divergence:.5f}",
                f"{entry.perplexity:.3f}",
                f"{entry.change_pct:+.2f}%",
            )
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if column != 1:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                else:
                    item.setToolTip(entry.group)
                self.table.setItem(row, column, item)
        steps = sensitivity.curve(result)
        self.curve.setData(steps.megabytes, steps.perplexity)
        self.expected.setData(steps.megabytes, steps.expected)
        self.bound.setData(steps.megabytes, steps.bound)
        self.goal_line.setValue(sensitivity.goal(result))
        self.goal_line.setVisible(True)
        self.chosen.setPlainText("\n".join(result["skip_modules"]))
        self._update_enabled()

    def _update_details(self) -> None:
        self.apply_button.setEnabled(bool(self.result and self.result["skip_modules"]))
        self.note.setText(self.workbench.skip_note())
