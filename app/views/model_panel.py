"""The Model panel (1): which model to load (the embedded default, a recent one, a directory or a GGUF) and how.

It only collects the user's choice and emits `sig_load`; the main window sends it to the workflow,
enables the Load button by engine state and shows what the workflow says about the model.
"""

from __future__ import annotations

import html

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QFileDialog, QGroupBox, QLabel, QPushButton, QVBoxLayout, QWidget

from int8wb.app.views.inputs import row, step_button
from int8wb.engine.vocabulary import OFFLOAD_LABELS, OFFLOAD_MODES

DEFAULT_MODEL_LABEL = "Embedded default (SmolLM2-135M)"


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
        layout.addLayout(row(self.source, self.load_button))
        layout.addLayout(row(self.open_dir, self.open_gguf, self.load_at_start))
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
