"""The Export dialog offers, per format, only the quantized variants that format carries."""

from __future__ import annotations

from PySide6.QtWidgets import QDialogButtonBox

from int8wb.app.views.export_dialog import ExportDialog

QUANTIZED = ["llm-int8", "vectorwise", "smoothquant", "q8_0"]


def _offered(dialog: ExportDialog) -> list[str]:
    return [dialog.method_box.itemData(i) for i in range(dialog.method_box.count())]


def _select(dialog: ExportDialog, fmt: str) -> None:
    dialog.format_box.setCurrentIndex(dialog.format_box.findData(fmt))


def test_each_format_offers_what_it_carries_and_says_who_loads_it(qtbot):
    dialog = ExportDialog(QUANTIZED)
    qtbot.addWidget(dialog)
    assert dialog.fmt() == "bitsandbytes" and _offered(dialog) == ["llm-int8", "vectorwise", "smoothquant"]
    assert "q8_0: GGUF, Q8_0" in dialog.left_out.text()
    _select(dialog, "compressed-tensors")
    assert _offered(dialog) == ["vectorwise", "smoothquant"] and "vLLM" in dialog.loader.text()
    assert "llm-int8: safetensors, bitsandbytes" in dialog.left_out.text()
    _select(dialog, "gguf-q8_0")
    assert _offered(dialog) == ["q8_0"] and "llama.cpp" in dialog.loader.text()


def test_ok_waits_for_a_directory_and_a_variant(qtbot, tmp_path):
    dialog = ExportDialog(["llm-int8"])
    qtbot.addWidget(dialog)
    ok = dialog.buttons.button(QDialogButtonBox.StandardButton.Ok)
    assert not ok.isEnabled()
    dialog.directory.setText(str(tmp_path))
    assert ok.isEnabled()
    _select(dialog, "gguf-q8_0")
    assert not ok.isEnabled() and "None of the quantized variants" in dialog.left_out.text()
    _select(dialog, "bitsandbytes")
    assert dialog.choice() == ("llm-int8", "bitsandbytes", str(tmp_path))
