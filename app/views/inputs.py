"""Small input widgets the panels and dialogs share."""

from __future__ import annotations

from PySide6.QtWidgets import QSpinBox


def spin_box(low: int, high: int, value: int, suffix: str = "", step: int = 1, tooltip: str = "") -> QSpinBox:
    """An integer box with thousands separators ("8,192 tokens")."""
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setValue(value)
    spin.setSuffix(suffix)
    spin.setGroupSeparatorShown(True)
    spin.setToolTip(tooltip)
    return spin
