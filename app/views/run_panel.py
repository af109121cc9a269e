"""The Run panel (4): the methods to compare, the evaluation budget and tasks; Run and Export.

It only collects the user's choices and emits `sig_run` / `sig_export`; the main window sends them
to the workflow and shows, under the buttons, which Linears the next Run keeps in floating point.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from int8wb.app.views.inputs import row, spin_box, step_button
from int8wb.engine.vocabulary import (
    METHOD_DESCRIPTIONS,
    METHOD_LABELS,
    METHOD_SHORT_LABELS,
    METHODS,
    SUGGESTED_TASKS,
    TICKED_METHODS,
    method_of,
)


def checkbox_cells() -> dict[str, tuple[int, int]]:
    """(row, column) of each method's check box: the INT8 baselines left, the answers to the outliers right,
    each column in the methods' order (so a newly declared method finds its place)."""
    cells, rows = {}, [0, 0]
    for name in METHODS:
        column = int(method_of(name).answers_outliers)
        cells[name], rows[column] = (rows[column], column), rows[column] + 1
    return cells


class RunPanel(QGroupBox):
    """Methods to compare, evaluation budget, Run and Export."""

    sig_run = Signal(list, dict)
    sig_export = Signal()
    sig_smoothing_ticked = Signal(bool)  # whether a method that smooths the model (SmoothQuant) is ticked

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("4  Quantize && evaluate", parent)
        self.method_boxes: dict[str, QCheckBox] = {}
        boxes = QGridLayout()
        boxes.setVerticalSpacing(0)
        cells = checkbox_cells()
        for name in METHODS:
            box = QCheckBox(METHOD_SHORT_LABELS[name])
            box.setChecked(name in TICKED_METHODS)
            box.setToolTip(f"<b>{METHOD_LABELS[name]}</b> ({name}): {METHOD_DESCRIPTIONS[name]}")
            self.method_boxes[name] = box
            boxes.addWidget(box, *cells[name])
            if method_of(name).smoothed:
                box.toggled.connect(lambda _: self.sig_smoothing_ticked.emit(self.smoothing_ticked()))
        self.eval_tokens = spin_box(
            64,
            1 << 20,
            8192,
            " tokens",
            1024,
            "Evaluation tokens, never the calibration text. Compare methods on 8,192 or more: one short "
            "window moves W8A8 results by a few percent",
        )
        self.window = spin_box(16, 8192, 512, " per window", 64, "Tokens per evaluation window (the context)")
        self.tasks = QLineEdit()
        self.tasks.setClearButtonEnabled(True)
        self.tasks.setPlaceholderText(f"optional: {','.join(SUGGESTED_TASKS)} or a task .yaml")
        self.tasks.setToolTip(
            "Also score task accuracy with lm-evaluation-harness, last in the Run: comma-separated lm-eval task "
            f"names (the LLM.int8() paper's: {', '.join(SUGGESTED_TASKS)}; their data come from the Hugging Face hub) or a "
            "task YAML over local JSON/JSONL files, which runs offline. Empty: no tasks"
        )
        self.task_file = QPushButton("YAML…")
        self.task_file.setToolTip("Choose a local lm-eval task YAML")
        self.task_file.clicked.connect(self._choose_task_file)
        self.run_button = step_button(
            "Run", "Quantize with the ticked methods, evaluate them and count their GPUs (Ctrl+Return)"
        )
        self.export_button = step_button(
            "Export…", "Save a quantized model for transformers + bitsandbytes, vLLM or llama.cpp (Ctrl+E)"
        )
        layout = QVBoxLayout(self)
        layout.addLayout(boxes)
        form = QFormLayout()
        form.addRow("evaluation", row(self.eval_tokens, self.window))
        layout.addLayout(form)
        layout.addLayout(row(self.run_button, self.export_button))
        # Optional, so below the buttons: at 1366 x 768 the Run button stays in view without scrolling.
        extras = QFormLayout()
        extras.addRow("tasks", row(self.tasks, self.task_file))
        layout.addLayout(extras)
        self.skip_note = QLabel("")
        self.skip_note.setWordWrap(True)
        self.skip_note.setObjectName("info")
        self.skip_note.setVisible(False)
        layout.addWidget(self.skip_note)
        self.run_button.clicked.connect(lambda: self.sig_run.emit(self.methods(), self.eval_params()))
        self.export_button.clicked.connect(self.sig_export.emit)

    def methods(self) -> list[str]:
        return [name for name, box in self.method_boxes.items() if box.isChecked()]

    def smoothing_ticked(self) -> bool:
        """Whether a ticked method smooths the model first: its migration strength (alpha) is then shown."""
        return any(method_of(name).smoothed for name in self.methods())

    def set_methods(self, methods: list[str]) -> None:
        for name, box in self.method_boxes.items():
            box.setChecked(name in methods)

    def show_skip_note(self, note: str) -> None:
        """Say which Linears the next Run keeps in floating point, with a link that clears the list."""
        self.skip_note.setText(f"{note} <a href='clear'>Quantize every Linear</a>" if note else "")
        self.skip_note.setVisible(bool(note))

    def eval_params(self) -> dict:
        tasks = {"tasks": self.tasks.text().strip()} if self.tasks.text().strip() else {}
        return {
            "tokens": self.eval_tokens.value(),
            "window": min(self.window.value(), self.eval_tokens.value()),
            **tasks,
        }

    def _choose_task_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "An lm-eval task YAML", "", "Task YAML (*.yaml *.yml)")
        if path:
            self.tasks.setText(path)
