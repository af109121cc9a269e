"""The GUI's engine client: a QObject that turns an `engine.link.client.EngineClient`'s callbacks into signals.

It holds no state of its own: the engine's state, its running job and its
info belong to `client` (an `EngineClient`), which everything else asks.
`EngineClient` calls its listeners on its own I/O thread (or on a starter
thread); each callback here emits a private signal whose slot lives in the
GUI thread, which then emits the public one. So every public signal arrives
in the GUI thread, in the order the engine sent it: a job's result after the
READY that precedes it. A state the client has already left when its signal
reaches the GUI thread is not signalled: the newer one follows (or, when the
GUI thread caused it, as a job it submitted, was signalled at once).

Signals (all delivered in the GUI thread):

    sig_state_changed(EngineState)      the new state: starting/ready/busy/crashed/stopped
    sig_progress(str, float, str)       job id, fraction 0..1, message
    sig_scan_layer(str, dict)           job id, one Linear's statistics (scan_layer payload)
    sig_job_finished(str, str, dict)    job id, request type, result payload
    sig_job_failed(str, str, str, str)  job id ("" when the engine could not start), error kind, message, traceback
    sig_log(str, str)                   level, message

`connect_listener` delivers them to a view model's `on_*` methods (app/view_models/jobs.py): the
window wires each of its job senders that way, and nothing else listens to jobs.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Signal, Slot

from int8wb.engine.link.client import EngineClient, EngineState, dispatch
from int8wb.engine.link.protocol import Message


class QtEngineClient(QObject):
    sig_state_changed = Signal(object)
    sig_progress = Signal(str, float, str)
    sig_scan_layer = Signal(str, dict)
    sig_job_finished = Signal(str, str, dict)
    sig_job_failed = Signal(str, str, str, str)
    sig_log = Signal(str, str)

    _sig_message = Signal(object)  # from the I/O thread to the GUI thread
    _sig_state = Signal(object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._sig_message.connect(self._on_message)
        self._sig_state.connect(self._on_state)
        self.client = EngineClient(on_event=self._sig_message.emit, on_state=lambda _, new: self._sig_state.emit(new))

    def connect_listener(self, listener: object) -> None:
        """Deliver the public signals to `listener`'s `on_state`, `on_progress`, `on_scan_layer`, `on_finished`,
        `on_failed` and `on_log` (those it has), in the GUI thread."""
        for signal, name in (
            (self.sig_state_changed, "on_state"),
            (self.sig_progress, "on_progress"),
            (self.sig_scan_layer, "on_scan_layer"),
            (self.sig_job_finished, "on_finished"),
            (self.sig_job_failed, "on_failed"),
            (self.sig_log, "on_log"),
        ):
            handler = getattr(listener, name, None)
            if handler is not None:
                signal.connect(handler)

    @Slot(object)
    def _on_message(self, message: Message) -> None:
        dispatch(message, self)

    @Slot(object)
    def _on_state(self, state: EngineState) -> None:
        """Signal a state unless the client has left it meanwhile (its newer state is signalled too)."""
        if state is self.client.state:
            self.sig_state_changed.emit(state)

    # --- the listener methods `dispatch` calls, in the GUI thread ------------------------------------

    def on_progress(self, job: str, fraction: float, message: str) -> None:
        self.sig_progress.emit(job, fraction, message)

    def on_scan_layer(self, job: str, payload: dict[str, Any]) -> None:
        self.sig_scan_layer.emit(job, payload)

    def on_log(self, level: str, text: str) -> None:
        self.sig_log.emit(level, text)

    def on_finished(self, job: str, request: str, result: dict[str, Any]) -> None:
        self.sig_job_finished.emit(job, request, result)

    def on_failed(self, job: str, kind: str, message: str, traceback_text: str) -> None:
        self.sig_job_failed.emit(job, kind, message, traceback_text)
