"""The left-hand controls: model, scan, quantize & evaluate, export.

Each group only collects the user's choices and emits a request; the main
window sends it to the workflow, enables the buttons by engine state and marks
the button of the current step as the one to press (`mark_current`).
"""

from __future__ import annotations

import html
from collections.abc import Callable

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from int8wb.app.views.inputs import spin_box
from int8wb.engine.vocabulary import (
    METHOD_DESCRIPTIONS,
    METHOD_LABELS,
    METHOD_SHORT_LABELS,
    METHODS,
    OFFLOAD_LABELS,
    OFFLOAD_MODES,
    SUGGESTED_TASKS,
)

DEFAULT_MODEL_LABEL = "Embedded default (SmolLM2-135M)"
DEFAULT_METHODS = ("absmax-tensor", "vectorwise", "llm-int8", "weight-only")
# (row, column) of each method's check box: the INT8 baselines left, the answers to the outliers right.
CHECKBOX_CELLS = {
    "absmax-tensor": (0, 0),
    "vectorwise": (1, 0),
    "weight-only": (2, 0),
    "q8_0": (3, 0),
    "llm-int8": (0, 1),
    "llm-int8-dynamic": (1, 1),
    "smoothquant": (2, 1),
}


def step_button(text: str, tooltip: str) -> QPushButton:
    """A button that moves the workflow on; the window highlights the one of the current step."""
    button = QPushButton(text)
    button.setObjectName("stepButton")
    button.setToolTip(tooltip)
    return button


def mark_current(button: QPushButton, current: bool) -> None:
    """Highlight (or not) `button` as the one to press now."""
    if button.property("current") != current:
        button.setProperty("current", current)
        button.style().unpolish(button)
        button.style().polish(button)


def _row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row


class ModelPanel(QGroupBox):
    """Which model: the embedded default, a recent one, a Hugging Face directory or a GGUF file."""

    sig_load = Signal(object)  # model path or None for the embedded default

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("1  Model", parent)
        self.source = QComboBox()
        self.source.addItem(DEFAULT_MODEL_LABEL, None)
        self.source.setToolTip("The model to load; models you opened before are remembered here")
        self.open_dir = QPushButton("Directory…")
        self.open_dir.setToolTip("Add a Hugging Face model directory (config.json, safetensors, tokenizer)")
        self.open_gguf = QPushButton("GGUF…")
        self.open_gguf.setToolTip("Add a GGUF model file")
        self.load_at_start = QCheckBox("Load at start")
        self.load_at_start.setToolTip("Load the model chosen here as soon as the engine is up, next time too")
        self.load_button = step_button("Load", "Load the chosen model into the engine (Ctrl+L)")
        self.offload = QComboBox()
        for mode in OFFLOAD_MODES:
            self.offload.addItem(OFFLOAD_LABELS[mode], mode)
        self.offload.setToolTip(
            "Layer by layer reads one decoder layer at a time from disk: for models bigger than memory"
        )
        self.info = QLabel("No model loaded.")
        self.info.setWordWrap(True)
        self.info.setObjectName("info")
        layout = QVBoxLayout(self)
        layout.addLayout(_row(self.source, self.load_button))
        layout.addLayout(_row(self.open_dir, self.open_gguf, self.load_at_start))
        layout.addWidget(self.offload)
        layout.addWidget(self.info)
        self.source.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.source.setMinimumContentsLength(16)
        self.open_dir.clicked.connect(self._choose_directory)
        self.open_gguf.clicked.connect(self._choose_gguf)
        self.load_button.clicked.connect(lambda: self.sig_load.emit(self.source.currentData()))

    def set_recent(self, paths: list[str]) -> None:
        for path in reversed(paths):
            self.add_source(path, select=False)

    def add_source(self, path: str, select: bool = True) -> None:
        index = self.source.findData(path)
        if index < 0:
            self.source.insertItem(1, path, path)
            index = 1
        if select:
            self.source.setCurrentIndex(index)

    def recent(self) -> list[str]:
        return [self.source.itemData(i) for i in range(1, self.source.count())][:8]

    def _choose_directory(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a Hugging Face model directory")
        if path:
            self.add_source(path)

    def _choose_gguf(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a GGUF file", "", "GGUF models (*.gguf)")
        if path:
            self.add_source(path)

    def show_info(self, info: dict) -> None:
        """Two lines (name; size, device, dtype); the architecture and the engine's notes in the tooltip."""
        parameters = info.get("parameters")
        size = f"{parameters / 1e6:,.1f} M params · " if parameters else ""
        offload = info.get("offload") or {}
        notes = [
            *info.get("notes", []),
            *([offload["reason"]] if offload.get("reason", "").startswith("offload") else []),
        ]
        layer_by_layer = offload_line(offload)
        self.info.setText(
            f"<b>{html.escape(str(info.get('name', '?')))}</b><br>{size}{info.get('layers', '?')} layers × "
            f"{info.get('hidden_size', '?')} · {info.get('device', '?')} · {info.get('dtype', '?')}"
            + (" · <u>notes</u>" if notes else "")
            + (f"<br>{layer_by_layer}" if layer_by_layer else "")
        )
        self.info.setToolTip("<br>".join([html.escape(str(info.get("architecture", "?"))), *map(html.escape, notes)]))

    def show_note(self, text: str) -> None:
        """What the panel says while no model is loaded."""
        self.info.setText(text)
        self.info.setToolTip("")


def offload_line(offload: dict) -> str | None:
    """How a model that stays on disk runs: its layer count and the estimated peak memory."""
    if offload.get("mode") != "disk" or not offload.get("peak_bytes"):
        return None
    return f"layer by layer from disk: {offload.get('layers')} layers, peak about {offload['peak_bytes'] / 1e9:.1f} GB"


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
        layout.addLayout(_row(self.corpus, self.measure_errors))
        layout.addLayout(_row(self.tokens, self.seq_len, self.scan_button))
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


class RunPanel(QGroupBox):
    """Methods to compare, evaluation budget, Run and Export."""

    sig_run = Signal(list, dict)
    sig_export = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("4  Quantize && evaluate", parent)
        self.method_boxes: dict[str, QCheckBox] = {}
        boxes = QGridLayout()
        boxes.setVerticalSpacing(0)
        for name in METHODS:
            box = QCheckBox(METHOD_SHORT_LABELS[name])
            box.setChecked(name in DEFAULT_METHODS)
            box.setToolTip(f"<b>{METHOD_LABELS[name]}</b> ({name}): {METHOD_DESCRIPTIONS[name]}")
            self.method_boxes[name] = box
            boxes.addWidget(box, *CHECKBOX_CELLS[name])
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
        form.addRow("evaluation", _row(self.eval_tokens, self.window))
        form.addRow("tasks", _row(self.tasks, self.task_file))
        layout.addLayout(form)
        layout.addLayout(_row(self.run_button, self.export_button))
        self.skip_note = QLabel("")
        self.skip_note.setWordWrap(True)
        self.skip_note.setObjectName("info")
        self.skip_note.setVisible(False)
        layout.addWidget(self.skip_note)
        self.run_button.clicked.connect(lambda: self.sig_run.emit(self.methods(), self.eval_params()))
        self.export_button.clicked.connect(self.sig_export.emit)

    def methods(self) -> list[str]:
        return [name for name, box in self.method_boxes.items() if box.isChecked()]

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
