"""The status bar: engine state, the running job's progress, Cancel, and Restart after a crash."""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QProgressBar, QPushButton, QStatusBar, QWidget

from int8wb.engine.link.client import EngineState

STATE_TEXT = {
    EngineState.STARTING: ("Engine starting…", "#f4a259"),
    EngineState.READY: ("Engine ready", "#8cb369"),
    EngineState.BUSY: ("Engine busy", "#5b8def"),
    EngineState.CRASHED: ("Engine crashed", "#e56b6f"),
    EngineState.STOPPED: ("Engine stopped", "#9a9cab"),
}


class WorkbenchStatusBar(QStatusBar):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state_label = QLabel()
        self.state_label.setObjectName("engineState")
        self.job_label = QLabel("")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setMaximumWidth(220)
        self.progress.setTextVisible(True)
        self.progress.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Cancel the running job (Esc)")
        self.cancel_button.setVisible(False)
        self.restart_button = QPushButton("Restart engine")
        self.restart_button.setVisible(False)
        self.addWidget(self.state_label)
        self.addWidget(self.job_label, 1)
        self.addPermanentWidget(self.progress)
        self.addPermanentWidget(self.cancel_button)
        self.addPermanentWidget(self.restart_button)
        self.set_state(EngineState.STOPPED)

    def set_state(self, state: EngineState, detail: str = "") -> None:
        text, color = STATE_TEXT[state]
        self.state_label.setText(f"<span style='color:{color}'>●</span> {text}{detail}")
        self.state_label.setProperty("state", state.value)
        busy = state is EngineState.BUSY
        if not busy:
            self.job_label.clear()  # the last job's progress line
        self.cancel_button.setVisible(busy)
        self.progress.setVisible(busy)
        self.restart_button.setVisible(state in (EngineState.CRASHED, EngineState.STOPPED))

    def set_progress(self, job: str, fraction: float, message: str) -> None:
        self.progress.setValue(int(round(fraction * 1000)))
        self.progress.setFormat(f"{fraction:.0%}")
        self.job_label.setText(f"{job}: {message}" if message else job)
