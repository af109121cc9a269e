"""A Qt-free client for the engine process: start or connect, send requests, receive events.

Usage (a local engine as a child process, with a fresh random key on loopback):

    client = EngineClient(on_event=handle_event, on_state=handle_state)
    client.start_local()                       # blocks until the engine answered `hello`
    job = client.submit("scan", {"tokens": 512}) # returns the job id at once
    ...                                        # handle_event(message) gets progress, scan_layer, result
    result = client.call("plan_memory", {...}) # or block for a result (raises EngineError)
    client.cancel()                            # cancel the running job
    client.close()                             # shuts the child down; nothing is left running

A GUI starts the engine with `start_in_background(client.start_local)` (or
`connect`, or `restart`) and listens: the window is up while the engine starts.

Threads: one I/O thread per connection owns the ZeroMQ socket. `on_event` and
`on_state` are called *on that thread*: a GUI must not touch widgets there,
it should emit a queued signal (app/engine_client.py re-emits each message as
a Qt signal, delivered in the GUI thread; `dispatch` names the events). Without
`on_event`, messages are put on `client.events` (a `queue.Queue`) for any
thread to poll. `send`, `submit`, `call`, `cancel` and `close` may be called
from any thread; `call` must not be called from inside `on_event` (it would
wait for the thread it runs on).

Messages are `engine.link.protocol.Message`s: `type` (progress, scan_layer,
log, result, error), `reply_to` (the request id `send` returned) and
`payload` (dict; arrays are read-only numpy arrays).

This object owns the engine's state and its running job; everything else
(the window, its view models) asks it. State (`EngineState`, `client.state`):
STARTING until the handshake, READY, BUSY from sending a job until its result
or error (`active_job` names it), CRASHED when the engine process died (or a
remote engine stopped answering), STOPPED after `close`. When the engine
crashes, the running job gets an `error` message of kind "crashed", pending
`call`s raise `EngineError`, and `restart()` starts a new engine (or
reconnects) in the same client object.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import enum
import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from int8wb.engine.errors import WorkbenchError
from int8wb.engine.installation import __version__
from int8wb.engine.link import protocol
from int8wb.engine.link.child import EngineChild
from int8wb.engine.link.connection import Connection, ConnectionInfo, EngineError
from int8wb.engine.link.protocol import Message

log = logging.getLogger("engine.link.client")


class EngineState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    CRASHED = "crashed"
    STOPPED = "stopped"


@dataclasses.dataclass(frozen=True)
class Job:
    """A job this client sent that the engine has not answered yet: its id (its events' `reply_to`) and type."""

    id: str
    request: str


class EngineListener(Protocol):
    """What a listener to the engine's events implements (see `dispatch`)."""

    def on_progress(self, job: str, fraction: float, message: str) -> None: ...
    def on_scan_layer(self, job: str, payload: dict[str, Any]) -> None: ...
    def on_log(self, level: str, text: str) -> None: ...
    def on_finished(self, job: str, request: str, result: dict[str, Any]) -> None: ...
    def on_failed(self, job: str, kind: str, message: str, traceback_text: str) -> None: ...


def dispatch(message: Message, listener: EngineListener) -> None:
    """Hand one engine message to the listener method for its type.

    `job` is the request id the message answers; it is "" for an error about
    no job (an engine that could not be started).
    """
    job, payload = message.reply_to or "", message.payload
    if message.type == "progress":
        listener.on_progress(job, float(payload["fraction"]), payload["message"])
    elif message.type == "scan_layer":
        listener.on_scan_layer(job, payload)
    elif message.type == "log":
        listener.on_log(payload.get("level", "info"), payload["message"])
    elif message.type == "result":
        listener.on_finished(job, payload.get("request", ""), payload["result"])
    elif message.type == "error":
        listener.on_failed(job, payload["kind"], payload["message"], payload.get("traceback", ""))


class EngineClient:
    """One client of one engine at a time (see the module docstring)."""

    def __init__(
        self,
        on_event: Callable[[Message], None] | None = None,
        on_state: Callable[[EngineState, EngineState], None] | None = None,
        client_name: str = "int8wb",
    ) -> None:
        self.events: queue.Queue[Message] = queue.Queue()
        self._on_event, self._on_state, self._client_name = on_event, on_state, client_name
        self._state = EngineState.STOPPED
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._child: EngineChild | None = None
        self._active_job: Job | None = None
        self._quiet: set[str] = set()  # the handshake's and close's own requests: not delivered
        self._restart: Callable[[], dict[str, Any]] | None = None
        self._starter: threading.Thread | None = None
        self._remote = False
        self.engine_info: dict[str, Any] = {}
        self.connection_info: ConnectionInfo | None = None  # address and key of the current engine
        self.log_path: Path | None = None

    # --- starting and stopping -----------------------------------------------

    def start_local(
        self,
        timeout_s: float = 60.0,
        session: str | None = None,
        python: str | None = None,
        allow_remote_code: bool = False,
    ) -> dict[str, Any]:
        """Start an engine child on loopback with a fresh key; returns the engine's `hello` info.

        `session` is the engine's `--session MODULE:CALLABLE` (default: the real engine session).
        `allow_remote_code` lets the child run the code a model ships (its user's choice, never a request's).
        """
        self._require_stopped()
        self._restart = lambda: self.start_local(timeout_s, session, python, allow_remote_code)
        self._remote = False
        self._set_state(EngineState.STARTING)
        key = protocol.new_key()
        try:
            self._child = EngineChild(session, python, allow_remote_code)
            self.log_path = self._child.log_path
            self._child.send_key(key)
            address = self._child.read_address(timeout_s)
            return self._open(ConnectionInfo(address, key), timeout_s)
        except BaseException:
            self._abandon()
            self._set_state(EngineState.CRASHED)
            raise

    def connect(self, info: ConnectionInfo | str | Path, timeout_s: float = 10.0) -> dict[str, Any]:
        """Connect to a running engine (a connection file or its `ConnectionInfo`); returns its info."""
        self._require_stopped()
        if not isinstance(info, ConnectionInfo):
            info = ConnectionInfo.from_file(info)
        self._restart = lambda: self.connect(info, timeout_s)
        self._remote = True
        self._set_state(EngineState.STARTING)
        try:
            return self._open(info, timeout_s)
        except BaseException:
            self._abandon()
            self._set_state(EngineState.STOPPED)
            raise

    @property
    def remote(self) -> bool:
        """True when connected (or connecting) to an engine this client did not start."""
        return self._remote

    def restart(self) -> dict[str, Any]:
        """After a crash (or a close): start the same kind of engine again."""
        if self._restart is None:
            raise EngineError("not_running", "no engine was started or connected before")
        if self._connection is not None or self._child is not None:
            self.close()
        return self._restart()

    def start_in_background(self, start: Callable[[], Any]) -> None:
        """Run `start` (`start_local`, `connect` or `restart`, arguments bound) on a short-lived thread.

        Returns at once, STARTING: an engine still open is closed first, here.
        Readiness arrives through `on_state`; a start that fails arrives as an
        `error` event that answers no job (`reply_to` None).
        """
        self._join_starter()
        if self._connection is not None or self._child is not None:
            self.close()
        self._set_state(EngineState.STARTING)

        def run() -> None:
            try:
                start()
            except (WorkbenchError, OSError) as exc:
                kind = exc.kind if isinstance(exc, EngineError) else type(exc).__name__
                text = f"the engine could not be started: {exc}"
                self._deliver(Message("error", protocol.error_payload(kind, text)))

        self._starter = threading.Thread(target=run, name="engine-starter", daemon=True)
        self._starter.start()

    def close(self, timeout_s: float = 5.0, shutdown: bool | None = None) -> None:
        """Disconnect; a local child (or, with `shutdown=True`, a remote engine) is shut down.

        A start running in the background is waited for first. A child that
        does not exit within `timeout_s` is killed. Safe to call twice.
        """
        self._join_starter()
        connection, child = self._connection, self._child
        shutdown = (child is not None) if shutdown is None else shutdown
        if connection is not None:
            connection.closing = True
            if shutdown and connection.alive and self._state in (EngineState.READY, EngineState.BUSY):
                try:
                    self._call_on(connection, "shutdown", {}, timeout_s, quiet=True)
                except (EngineError, concurrent.futures.TimeoutError):
                    pass
            connection.stop()
        if child is not None:
            child.finish(timeout_s)
        self._connection, self._child, self._active_job = None, None, None
        self._set_state(EngineState.STOPPED)

    def __enter__(self) -> EngineClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # --- what the engine is doing -------------------------------------------

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def active_job(self) -> Job | None:
        """The job the engine runs for this client, or None."""
        return self._active_job

    @property
    def pid(self) -> int | None:
        """The local child's process id (None for a remote engine)."""
        return self._child.pid if self._child is not None else None

    @property
    def remote_address(self) -> str | None:
        """Where the engine listens when it is a remote one (None for a local child)."""
        return self.connection_info.address if self._remote and self.connection_info is not None else None

    @property
    def version_mismatch(self) -> str | None:
        """A sentence for the user when the connected engine is another release than this client, else None.

        The protocol version is checked at `hello` and a different one refused;
        a different release with the same protocol works, but may compute
        differently, so a GUI shows this sentence.
        """
        theirs = self.engine_info.get("engine")
        if theirs is None or theirs == __version__:
            return None
        return f"the engine is version {theirs}, this workbench is {__version__}: results may differ"

    # --- requests -----------------------------------------------------------

    def submit(self, request_type: str, params: dict[str, Any] | None = None) -> str:
        """Start a job when the engine is ready for one; returns its id.

        The one place that decides whether a job may start: `EngineError`
        "busy" while another job runs, "not_running" when no engine is ready,
        each with a sentence a window can show as it is. (`send` leaves that
        to the engine, which refuses a second job itself.)
        """
        if request_type not in protocol.JOB_TYPES:
            raise ValueError(f"{request_type!r} is not a job; send it instead")
        state, running = self._state, self._active_job
        if running is not None:
            raise EngineError("busy", f"the engine is busy with {running.request}: cancel it or wait for its result")
        if state is not EngineState.READY:
            todo = "wait until it is ready" if state is EngineState.STARTING else "start or restart it first"
            raise EngineError("not_running", f"the engine is {state.value}: {todo}")
        return self.send(request_type, params)

    def send(self, request_type: str, params: dict[str, Any] | None = None) -> str:
        """Send a request without waiting; returns its id, which its events carry as `reply_to`."""
        return self._send(protocol.request(request_type, params)).id

    def call(
        self, request_type: str, params: dict[str, Any] | None = None, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Send a request and wait for its `result` payload; an `error` raises `EngineError`.

        Events of the request are delivered as usual (`on_event` or `events`).
        """
        connection = self._require_connection()
        return self._call_on(connection, request_type, params or {}, timeout_s)

    def cancel(self, target: str | None = None) -> str:
        """Ask the engine to cancel `target` (default: whatever job runs); returns the request id."""
        return self.send("cancel", {"target": target})

    # --- internals ----------------------------------------------------------

    def _open(self, info: ConnectionInfo, timeout_s: float) -> dict[str, Any]:
        self.connection_info = info
        process = self._child.process if self._child is not None else None
        self._connection = Connection(info, self._handle, self._lost, process, heartbeat=self._remote)
        hello = {"protocol": protocol.PROTOCOL_VERSION, "client": self._client_name}
        try:
            self.engine_info = self._call_on(self._connection, "hello", hello, timeout_s, quiet=True)
        except concurrent.futures.TimeoutError:
            raise EngineError(
                "timeout", f"no answer from the engine at {info.address} within {timeout_s:.0f} s"
            ) from None
        self._set_state(EngineState.READY)
        return self.engine_info

    def _call_on(
        self,
        connection: Connection,
        request_type: str,
        params: dict[str, Any],
        timeout_s: float | None,
        quiet: bool = False,
    ) -> dict[str, Any]:
        if connection.is_io_thread():
            raise RuntimeError("call() from inside on_event would deadlock; use send()")
        message = protocol.request(request_type, params)
        if quiet:
            self._quiet.add(message.id)
        future = connection.expect(message.id)
        self._send(message, connection)
        return future.result(timeout_s)

    def _send(self, message: Message, connection: Connection | None = None) -> Message:
        connection = connection or self._require_connection()
        if message.type in protocol.JOB_TYPES:
            with self._lock:
                if self._active_job is None:
                    self._active_job = Job(message.id, message.type)
            self._set_state(EngineState.BUSY)
        connection.send(message)
        return message

    def _handle(self, message: Message) -> None:
        """On the I/O thread: every message from the engine, after its future was resolved."""
        if message.type in ("result", "error") and message.reply_to is not None:
            with self._lock:
                finished = self._active_job is not None and message.reply_to == self._active_job.id
                if finished:
                    self._active_job = None
            if finished and self._state is EngineState.BUSY:
                self._set_state(EngineState.READY)
        if message.reply_to in self._quiet:
            if message.type in ("result", "error"):
                self._quiet.discard(message.reply_to)
            return
        self._deliver(message)

    def _lost(self, reason: str, crashed: bool) -> None:
        """On the I/O thread: the engine process exited or a remote engine stopped answering."""
        tail = self._child.log_tail() if self._child is not None else ""
        text = f"the engine {reason}" + (f"; last lines of its log ({self.log_path}):\n{tail}" if tail else "")
        with self._lock:
            job, self._active_job = self._active_job, None
        if job is not None:
            self._deliver(Message("error", protocol.error_payload("crashed", text), reply_to=job.id))
        self._set_state(EngineState.CRASHED if crashed else EngineState.STOPPED)

    def _deliver(self, message: Message) -> None:
        if self._on_event is None:
            self.events.put(message)
            return
        try:
            self._on_event(message)
        except Exception:  # a listener's bug must not stop the I/O thread
            log.exception("on_event failed for %s", message.type)

    def _set_state(self, state: EngineState) -> None:
        with self._lock:
            old, self._state = self._state, state
        if old is not state and self._on_state is not None:
            try:
                self._on_state(old, state)
            except Exception:
                log.exception("on_state failed")

    def _join_starter(self) -> None:
        """Wait for a background start to end (unless this is that start's own thread)."""
        starter = self._starter
        if starter is not None and starter is not threading.current_thread():
            starter.join()
            self._starter = None

    def _require_stopped(self) -> None:
        if self._connection is not None or self._child is not None:
            raise EngineError("already_running", "close() this client before starting another engine")

    def _require_connection(self) -> Connection:
        connection = self._connection
        if connection is None or not connection.alive:
            raise EngineError("not_running", f"the engine is {self._state.value}; start or restart it first")
        return connection

    def _abandon(self) -> None:
        """Undo a start that failed half-way."""
        if self._connection is not None:
            self._connection.closing = True
            self._connection.stop()
        if self._child is not None:
            self._child.kill()
        self._connection, self._child = None, None
