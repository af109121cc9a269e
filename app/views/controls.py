"""The left-hand controls: model, scan, quantize & evaluate, export.

Each group only collects the user's choices and emits a request; the main
window sends it to the engine and enables the buttons by engine state.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine.vocabulary import METHOD_LABELS, METHODS

DEFAULT_MODEL_LABEL = "Embedded default (SmolLM2-135M)"


class ModelPanel(QGroupBox):
    """Which model: the embedded default, a recent one, a Hugging Face directory or a GGUF file."""

    sig_load = Signal(object)  # model path or None for the embedded default

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Model", parent)
        self.source = QComboBox()
        self.source.addItem(DEFAULT_MODEL_LABEL, None)
        self.source.setToolTip("Recent models are remembered")
        self.open_dir = QPushButton("Directory…")
        self.open_dir.setToolTip("A Hugging Face model directory (config.json, safetensors, tokenizer)")
        self.open_gguf = QPushButton("GGUF…")
        self.load_button = QPushButton("Load")
        self.load_button.setObjectName("primary")
        self.info = QLabel("No model loaded.")
        self.info.setWordWrap(True)
        self.info.setObjectName("info")
        buttons = QHBoxLayout()
        buttons.addWidget(self.open_dir)
        buttons.addWidget(self.open_gguf)
        buttons.addWidget(self.load_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.source)
        layout.addLayout(buttons)
        layout.addWidget(self.info)
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
        parameters = info.get("parameters")
        lines = [
            f"<b>{info.get('name', '?')}</b>",
            f"{info.get('architecture', '?')} · {parameters / 1e6:,.1f} M parameters"
            if parameters
            else info.get("architecture", "?"),
            f"{info.get('layers', '?')} layers · hidden {info.get('hidden_size', '?')} · "
            f"{info.get('device', '?')} · {info.get('dtype', '?')}",
        ]
        lines += [f"<i>{note}</i>" for note in info.get("notes", [])]
        self.info.setText("<br>".join(lines))


class ScanPanel(QGroupBox):
    """Calibration corpus and token budget; the Scan button."""

    sig_scan = Signal(dict)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Scan", parent)
        self.corpus = QComboBox()
        self.corpus.addItem("Python docs (pydoc topics)", None)
        self.corpus.addItem("Text file…", "choose")
        self.corpus.activated.connect(self._corpus_chosen)
        self.tokens = QSpinBox()
        self.tokens.setRange(64, 1 << 20)
        self.tokens.setSingleStep(512)
        self.tokens.setValue(4096)
        self.tokens.setSuffix(" tokens")
        self.seq_len = QSpinBox()
        self.seq_len.setRange(16, 8192)
        self.seq_len.setValue(512)
        self.seq_len.setSuffix(" per sequence")
        self.scan_button = QPushButton("Scan")
        self.scan_button.setObjectName("primary")
        form = QFormLayout(self)
        form.addRow("corpus", self.corpus)
        form.addRow("calibration", self.tokens)
        form.addRow("", self.seq_len)
        form.addRow(self.scan_button)
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
        return {
            "tokens": self.tokens.value(),
            "seq_len": min(self.seq_len.value(), self.tokens.value()),
            "corpus": self.corpus.currentData(),
        }


class RunPanel(QGroupBox):
    """Methods to compare, evaluation budget, Run and Export."""

    sig_run = Signal(list, dict)
    sig_export = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Quantize && evaluate", parent)
        self.method_boxes: dict[str, QCheckBox] = {}
        layout = QVBoxLayout(self)
        for name in METHODS:
            label = METHOD_LABELS[name]
            box = QCheckBox(label)
            box.setChecked(name in ("absmax-tensor", "vectorwise", "llm-int8", "weight-only"))
            box.setToolTip(name)
            self.method_boxes[name] = box
            layout.addWidget(box)
        self.eval_tokens = QSpinBox()
        self.eval_tokens.setRange(64, 1 << 20)
        self.eval_tokens.setSingleStep(1024)
        self.eval_tokens.setValue(8192)
        self.eval_tokens.setSuffix(" tokens")
        self.eval_tokens.setToolTip(
            "Compare methods on 8,192 tokens or more: one short window moves W8A8 results by a few percent"
        )
        self.window = QSpinBox()
        self.window.setRange(16, 8192)
        self.window.setValue(512)
        self.window.setSuffix(" per window")
        form = QFormLayout()
        form.addRow("evaluation", self.eval_tokens)
        form.addRow("", self.window)
        layout.addLayout(form)
        self.run_button = QPushButton("Run")
        self.run_button.setObjectName("primary")
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Save a quantized model as safetensors that transformers + bitsandbytes load")
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.export_button)
        layout.addLayout(buttons)
        self.run_button.clicked.connect(lambda: self.sig_run.emit(self.methods(), self.eval_params()))
        self.export_button.clicked.connect(self.sig_export.emit)

    def methods(self) -> list[str]:
        return [name for name, box in self.method_boxes.items() if box.isChecked()]

    def set_methods(self, methods: list[str]) -> None:
        for name, box in self.method_boxes.items():
            box.setChecked(name in methods)

    def eval_params(self) -> dict:
        return {"tokens": self.eval_tokens.value(), "window": min(self.window.value(), self.eval_tokens.value())}
