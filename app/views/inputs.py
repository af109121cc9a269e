"""Small input widgets the panels and dialogs share, and the mark of the button to press now."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QAbstractItemView,
    QAbstractSpinBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QWidget,
)


def spin_box(low: int, high: int, value: int, suffix: str = "", step: int = 1, tooltip: str = "") -> QSpinBox:
    """An integer box with thousands separators ("8,192 tokens")."""
    spin = _ranged(QSpinBox(), low, high, value, step, suffix)
    spin.setGroupSeparatorShown(True)
    spin.setToolTip(tooltip)
    return spin


def double_spin_box(low: float, high: float, value: float, decimals: int, step: float, suffix: str) -> QDoubleSpinBox:
    """A box for a decimal number such as a percentage ("0.10 %")."""
    spin = QDoubleSpinBox()
    spin.setDecimals(decimals)  # before the value, which it rounds
    return _ranged(spin, low, high, value, step, suffix)


def _ranged(spin: QAbstractSpinBox, low, high, value, step, suffix: str):
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setValue(value)
    spin.setSuffix(suffix)
    return spin


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


def row(*widgets: QWidget) -> QHBoxLayout:
    """The widgets side by side."""
    layout = QHBoxLayout()
    for widget in widgets:
        layout.addWidget(widget)
    return layout


def cell_table(on_cell) -> QTableWidget:
    """A read-only table whose cells are picked one at a time; `on_cell(row, column, ...)` hears each pick."""
    table = QTableWidget(0, 0)
    table.verticalHeader().setVisible(False)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.currentCellChanged.connect(on_cell)
    return table
