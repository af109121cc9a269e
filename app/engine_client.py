"""The GUI's engine client: a thin QObject over `engine.client.EngineClient` that only adds signals.

`EngineClient` calls its listeners on its own I/O thread. Each callback here
emits a Qt signal; the signals cross into the GUI thread as queued connections
(the QObject lives there), so slots may touch widgets. Starting a local engine
blocks until its handshake, so it runs on a short-lived worker thread: the
window is up and responsive while the engine starts.

`state` is the state as the GUI thread has been told it (the last
`sig_state_changed`), not the I/O thread's newer one: code on the GUI thread
that reads it agrees with what the widgets show, and a result never arrives
before the READY that precedes it. A start asked for on the GUI thread is
STARTING at once.

Signals (all delivered in the GUI thread):

    sig_state_changed(str)              new EngineState value: starting/ready/busy/crashed/stopped
    sig_progress(str, float, str)       job id, fraction 0..1, message
    sig_scan_layer(str, dict)           job id, one Linear's statistics (scan_layer payload)
    sig_job_finished(str, str, dict)    job id, request type, result payload
    sig_job_failed(str, str, str, str)  job id, error kind, message, traceback text
    sig_log(str, str)                   level, message
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot

from engine.client import EngineClient, EngineError, EngineState
from engine.errors import WorkbenchError
from engine.protocol import Message


class QtEngineClient(QObject):
    sig_state_changed = Signal(str)
    sig_progress = Signal(str, float, str)
    sig_scan_layer = Signal(str, dict)
    sig_job_finished = Signal(str, str, dict)
    sig_job_failed = Signal(str, str, str, str)
    sig_log = Signal(str, str)

    _sig_message = Signal(object)  # from the I/O thread to the GUI thread
    _sig_state = Signal(str)
    _sig_start_failed = Signal(str, str)

    def __init__(self, parent: QObject | None = None, session: str | None = None) -> None:
        super().__init__(parent)
        self._session = session
        self._client = self._new_client()
        self._state = self._client.state  # as last delivered to the GUI thread
        self._jobs: dict[str, str] = {}  # request id -> request type, for the job's result
        self._starter: threading.Thread | None = None
        self._sig_message.connect(self._on_message)
        self._sig_state.connect(self._on_state)
        self._sig_start_failed.connect(self._on_start_failed)
        self.engine_info: dict[str, Any] = {}
        self.remote_address: str | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def state(self) -> EngineState:
        """The engine's state as signalled to the GUI thread (see the module docstring)."""
        return self._state

    @property
    def pid(self) -> int | None:
        return self._client.pid

    @property
    def log_path(self) -> Path | None:
        return self._client.log_path

    @property
    def active_job(self) -> str | None:
        return self._client.active_job

    @property
    def version_mismatch(self) -> str | None:
        """A sentence when the connected engine is another release than this window, else None."""
        return self._client.version_mismatch

    def start_local(self, allow_remote_code: bool = False) -> None:
        """Start a local engine child in the background; `sig_state_changed` says when it is ready.

        `allow_remote_code`: the child may run the Python code a model ships (the user's setting).
        """
        self.remote_address = None
        self._on_state(EngineState.STARTING.value)  # at once: the GUI thread asked for it
        self._start_in_background(
            lambda: self._client.start_local(session=self._session, allow_remote_code=allow_remote_code)
        )

    def connect_file(self, path: str | Path) -> None:
        """Close the current engine and connect to the remote one named by a connection file."""
        self.close()
        self._client = self._new_client()
        self.remote_address = str(path)
        self._on_state(EngineState.STARTING.value)
        self._start_in_background(lambda: self._client.connect(path))

    def restart(self) -> None:
        """After a crash: start the same kind of engine again (local child or remote connection)."""
        self._join_starter()
        self._start_in_background(self._client.restart)

    def close(self) -> None:
        """Stop the engine (a local child exits) and wait for the starter thread; safe to call twice."""
        self._join_starter()
        self._client.close()
        self._jobs.clear()

    def _new_client(self) -> EngineClient:
        return EngineClient(on_event=self._sig_message.emit, on_state=lambda old, new: self._sig_state.emit(new.value))

    def _start_in_background(self, start) -> None:
        self._join_starter()

        def run() -> None:
            try:
                self.engine_info = start()
            except (WorkbenchError, OSError) as exc:
                kind = exc.kind if isinstance(exc, EngineError) else type(exc).__name__
                self._sig_start_failed.emit(kind, str(exc))

        self._starter = threading.Thread(target=run, name="engine-starter", daemon=True)
        self._starter.start()

    def _join_starter(self) -> None:
        if self._starter is not None:
            self._starter.join()
            self._starter = None

    def wait_started(self, timeout_s: float | None = None) -> None:
        """Block until a background start has ended (tests and the CLI; the GUI listens to signals)."""
        if self._starter is not None:
            self._starter.join(timeout_s)

    # --- jobs ------------------------------------------------------------------------------------

    def submit(self, request_type: str, params: dict[str, Any] | None = None) -> str:
        """Send a job request; returns its id (the first argument of the job's signals).

        Raises `EngineError` when no engine is running or another job is; the
        window checks `state` first and says so instead.
        """
        if self._client.state is EngineState.BUSY:
            raise EngineError("busy", "the engine is busy with another job; cancel it or wait")
        job_id = self._client.send(request_type, params or {})
        self._jobs[job_id] = request_type
        return job_id

    def cancel(self) -> None:
        """Ask the engine to cancel the running job (it ends with a `cancelled` failure)."""
        if self._client.active_job is not None:
            self._client.cancel(self._client.active_job)

    # --- events from the I/O thread, now in the GUI thread ------------------------------------------

    @Slot(object)
    def _on_message(self, message: Message) -> None:
        job_id, payload = message.reply_to or "", message.payload
        if message.type == "progress":
            self.sig_progress.emit(job_id, float(payload["fraction"]), payload["message"])
        elif message.type == "scan_layer":
            self.sig_scan_layer.emit(job_id, payload)
        elif message.type == "log":
            self.sig_log.emit(payload.get("level", "info"), payload["message"])
        elif message.type == "result":
            request = self._jobs.pop(job_id, payload.get("request", ""))
            self.sig_job_finished.emit(job_id, request, payload["result"])
        elif message.type == "error":
            self._jobs.pop(job_id, None)
            self.sig_job_failed.emit(job_id, payload["kind"], payload["message"], payload.get("traceback", ""))

    @Slot(str)
    def _on_state(self, value: str) -> None:
        state = EngineState(value)
        if state is not self._state:  # STARTING comes twice: from the request and from the starter thread
            self._state = state
            self.sig_state_changed.emit(value)

    @Slot(str, str)
    def _on_start_failed(self, kind: str, message: str) -> None:
        self.sig_job_failed.emit("", kind, f"the engine could not be started: {message}", "")
        self._on_state(self._client.state.value)
