"""The Export dialog: which format, which quantized variant (only those the format carries), and where.

Each format says which program loads it (engine.vocabulary.FORMAT_LOADERS); a quantized
variant the format cannot carry is not offered, and the dialog says which of the
quantized ones are left out and where they can go instead, so no export is refused
after the user picked it.
"""

from __future__ import annotations

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from int8wb.engine.vocabulary import EXPORT_FORMATS, FORMAT_LABELS, FORMAT_LOADERS, FORMAT_METHODS, METHOD_LABELS


def carried(fmt: str, quantized: list[str]) -> list[str]:
    """The quantized variants `fmt` can carry, in the order they were quantized."""
    return [method for method in quantized if method in FORMAT_METHODS[fmt]]


def left_out_note(fmt: str, quantized: list[str]) -> str:
    """Which quantized variants the format leaves out, and the formats that carry them."""
    notes = []
    for method in quantized:
        if method in FORMAT_METHODS[fmt]:
            continue
        homes = [FORMAT_LABELS[f] for f in EXPORT_FORMATS if method in FORMAT_METHODS[f]]
        notes.append(f"{method}: {' or '.join(homes)}")
    return ("Not in this format: " + "; ".join(notes)) if notes else ""


class ExportDialog(QDialog):
    """Pick a format, a variant and an empty directory; `choice()` is (method, format, directory)."""

    def __init__(self, quantized: list[str], parent: QWidget | None = None, folder: str = "") -> None:
        """`folder`: where the directory chooser starts (the last export's)."""
        super().__init__(parent)
        self.folder = folder
        self.setWindowTitle("Export")
        self.quantized = list(quantized)
        self.format_box = QComboBox()
        for fmt in EXPORT_FORMATS:
            self.format_box.addItem(FORMAT_LABELS[fmt], fmt)
        self.loader = QLabel()
        self.loader.setWordWrap(True)
        self.method_box = QComboBox()
        self.left_out = QLabel()
        self.left_out.setWordWrap(True)
        self.directory = QLineEdit()
        self.directory.setPlaceholderText("an empty directory")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        where = QHBoxLayout()
        where.addWidget(self.directory)
        where.addWidget(browse)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        form = QFormLayout(self)
        form.addRow("format", self.format_box)
        form.addRow("", self.loader)
        form.addRow("variant", self.method_box)
        form.addRow("", self.left_out)
        form.addRow("into", where)
        form.addRow(self.buttons)
        self.format_box.currentIndexChanged.connect(self._format_changed)
        self.directory.textChanged.connect(self._update_ok)
        self._format_changed()

    def fmt(self) -> str:
        return self.format_box.currentData()

    def choice(self) -> tuple[str, str, str]:
        return self.method_box.currentData(), self.fmt(), self.directory.text().strip()

    def _format_changed(self) -> None:
        fmt = self.fmt()
        self.loader.setText(f"Loaded by {FORMAT_LOADERS[fmt]}.")
        self.method_box.clear()
        for method in carried(fmt, self.quantized):
            self.method_box.addItem(METHOD_LABELS[method], method)
        note = left_out_note(fmt, self.quantized)
        if not self.method_box.count():
            note = f"None of the quantized variants goes into this format. {note}"
        self.left_out.setText(note)
        self.left_out.setVisible(bool(note))
        self._update_ok()

    def _update_ok(self) -> None:
        ready = self.method_box.count() > 0 and bool(self.directory.text().strip())
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(ready)

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Export into an empty directory", self.folder)
        if path:
            self.directory.setText(path)
