"""The workflow as a row of steps: Load -> Scan -> pick the threshold -> Run -> Export.

The current step is highlighted, the steps before it are ticked. Clicking a
step asks the window to bring that step's controls forward.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

from int8wb.app.view_models.workbench import STEP_HELP, Step

STEPS = list(Step)


class StepBar(QWidget):
    sig_step_clicked = Signal(object)  # Step

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("stepBar")
        self.buttons: dict[Step, QPushButton] = {}
        layout = QHBoxLayout(self)
        layout.setContentsMargins(6, 2, 6, 2)
        for index, step in enumerate(STEPS):
            if index:
                arrow = QLabel("›")
                arrow.setObjectName("stepArrow")
                layout.addWidget(arrow)
            button = QPushButton()
            button.setObjectName("step")
            button.setFlat(True)
            button.setToolTip(STEP_HELP[step])
            button.clicked.connect(lambda _=False, s=step: self.sig_step_clicked.emit(s))
            self.buttons[step] = button
            layout.addWidget(button)
        layout.addStretch(1)
        self.current: Step | None = None
        self.set_step(Step.LOAD)

    def set_step(self, current: Step) -> None:
        """Highlight `current`, tick the steps before it."""
        if current is self.current:
            return
        self.current = current
        position = STEPS.index(current)
        for index, (step, button) in enumerate(self.buttons.items()):
            state = "done" if index < position else "current" if index == position else "todo"
            mark = "✓" if state == "done" else str(index + 1)
            button.setText(f"{mark}  {step.value}")
            button.setProperty("state", state)
            button.style().unpolish(button)
            button.style().polish(button)
