"""A Qt-free client for the engine process: start or connect, send requests, receive events.

Usage (a local engine as a child process, with a fresh random key on loopback):

    client = EngineClient(on_event=handle_event, on_state=handle_state)
    client.start_local()                      # blocks until the engine answered `hello`
    job = client.send("scan", {"tokens": 512}) # returns the request id at once
    ...                                        # handle_event(message) gets progress, scan_layer, result
    result = client.call("plan_memory", {...}) # or block for a result (raises EngineError)
    client.cancel()                            # cancel the running job
    client.close()                             # shuts the child down; nothing is left running

Threads: one I/O thread per connection owns the ZeroMQ socket. `on_event` and
`on_state` are called *on that thread*: a GUI must not touch widgets there,
it should emit a queued signal (a QObject wrapper re-emits each message as a
Qt signal, delivered in the GUI thread). Without `on_event`, messages are put
on `client.events` (a `queue.Queue`) for any thread to poll. `send`, `call`,
`cancel` and `close` may be called from any thread; `call` must not be called
from inside `on_event` (it would wait for the thread it runs on).

Messages are `engine.protocol.Message`s: `type` (progress, scan_layer,
log, result, error), `reply_to` (the request id `send` returned) and
`payload` (dict; arrays are read-only numpy arrays).

State (`EngineState`, `client.state`): STARTING until the handshake, READY,
BUSY from sending a job until its result or error, CRASHED when the engine
process died (or a remote engine stopped answering), STOPPED after `close`.
When the engine crashes, the running job gets an `error` message of kind
"crashed", pending `call`s raise `EngineError`, and `restart()` starts a new
engine (or reconnects) in the same client object.
"""

from __future__ import annotations

import concurrent.futures
import enum
import json
import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine import __version__, protocol
from engine.connection import Connection, ConnectionInfo, EngineError
from engine.protocol import Message

log = logging.getLogger("engine.client")

_SPAWNED_PIDS: list[int] = []


def spawned_engine_pids() -> list[int]:
    """Process ids of every local engine this process has started (tests check that none survives)."""
    return list(_SPAWNED_PIDS)


def _frozen_without(python: str | None) -> bool:
    """True in a frozen bundle (PyInstaller sets `sys.frozen`) unless another interpreter was asked for."""
    return python is None and bool(getattr(sys, "frozen", False))


def _engine_command(python: str | None) -> list[str]:
    """How to start the engine: `python -m engine`, or in a frozen bundle its own executable's `engine` command.

    A frozen executable is no Python interpreter (`-m` means nothing to it); the
    bundle's entry point runs `int8wb` with its arguments, so `engine` starts
    the engine from the same bundle (packaging/launcher.py).
    """
    if _frozen_without(python):
        return [sys.executable, "engine"]
    return [python or sys.executable, "-m", "engine"]


class EngineState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    CRASHED = "crashed"
    STOPPED = "stopped"


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
        self._process: subprocess.Popen | None = None
        self._active_job: str | None = None
        self._quiet: set[str] = set()  # the handshake's and close's own requests: not delivered
        self._restart: Callable[[], dict[str, Any]] | None = None
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

        The key goes to the child on its stdin, which stays open: when this
        process dies, the child reads end-of-file and exits. `session` is the
        engine's `--session MODULE:CALLABLE` (default: the real engine session).
        `allow_remote_code` lets the child run the code a model ships (its user's choice, never a request's).
        """
        self._require_stopped()
        self._restart = lambda: self.start_local(timeout_s, session, python, allow_remote_code)
        self._set_state(EngineState.STARTING)
        key = protocol.new_key()
        command = _engine_command(python) + [
            "--key-stdin",
            "--parent-pid",
            str(os.getpid()),
            "--listen",
            "tcp://127.0.0.1:0",
        ]
        if session:
            command += ["--session", session]
        if allow_remote_code:
            command.append("--allow-remote-code")
        env = dict(os.environ)
        if not _frozen_without(python):
            package_root = str(Path(__file__).resolve().parent.parent)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        log_fd, log_name = tempfile.mkstemp(prefix="int8wb-engine-", suffix=".log")
        self.log_path = Path(log_name)
        try:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_fd,
                env=env,
                close_fds=True,
                start_new_session=(os.name == "posix"),
            )
        finally:
            os.close(log_fd)
        _SPAWNED_PIDS.append(self._process.pid)
        try:
            self._process.stdin.write((json.dumps({"key": key.hex()}) + "\n").encode())
            self._process.stdin.flush()
            address = self._read_ready_line(timeout_s)["address"]
            return self._open(ConnectionInfo(address, key), timeout_s, remote=False)
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
        self._set_state(EngineState.STARTING)
        try:
            return self._open(info, timeout_s, remote=True)
        except BaseException:
            self._abandon()
            self._set_state(EngineState.STOPPED)
            raise

    def restart(self) -> dict[str, Any]:
        """After a crash (or a close): start the same kind of engine again."""
        if self._restart is None:
            raise EngineError("not_running", "no engine was started or connected before")
        self.close()
        return self._restart()

    def close(self, timeout_s: float = 5.0, shutdown: bool | None = None) -> None:
        """Disconnect; a local child (or, with `shutdown=True`, a remote engine) is shut down.

        A child that does not exit within `timeout_s` is killed. Safe to call twice.
        """
        connection, process = self._connection, self._process
        shutdown = (process is not None) if shutdown is None else shutdown
        if connection is not None:
            connection.closing = True
            if shutdown and connection.alive and self._state in (EngineState.READY, EngineState.BUSY):
                try:
                    self._call_on(connection, "shutdown", {}, timeout_s, quiet=True)
                except (EngineError, concurrent.futures.TimeoutError):
                    pass
            connection.stop()
        if process is not None:
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("engine %d did not exit; killing it", process.pid)
                self._kill_process()
            self._close_pipes(process)
            if process.returncode == 0 and self.log_path is not None:
                self.log_path.unlink(missing_ok=True)
        self._connection, self._process, self._active_job = None, None, None
        self._set_state(EngineState.STOPPED)

    def __enter__(self) -> EngineClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # --- requests -----------------------------------------------------------

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def pid(self) -> int | None:
        """The local child's process id (None for a remote engine)."""
        return self._process.pid if self._process is not None else None

    @property
    def active_job(self) -> str | None:
        return self._active_job

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

    def _open(self, info: ConnectionInfo, timeout_s: float, remote: bool) -> dict[str, Any]:
        self.connection_info = info
        self._connection = Connection(info, self._handle, self._lost, self._process, heartbeat=remote)
        hello = {"protocol": protocol.PROTOCOL_VERSION, "client": self._client_name}
        try:
            self.engine_info = self._call_on(self._connection, "hello", hello, timeout_s, quiet=True)
        except concurrent.futures.TimeoutError:
            raise EngineError(
                "timeout", f"no answer from the engine at {info.address} within {timeout_s:.0f} s"
            ) from None
        self._set_state(EngineState.READY)
        return self.engine_info

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
                    self._active_job = message.id
            self._set_state(EngineState.BUSY)
        connection.send(message)
        return message

    def _handle(self, message: Message) -> None:
        """On the I/O thread: every message from the engine, after its future was resolved."""
        if message.type in ("result", "error") and message.reply_to is not None:
            with self._lock:
                finished = message.reply_to == self._active_job
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
        tail = self._log_tail()
        text = f"the engine {reason}" + (f"; last lines of its log ({self.log_path}):\n{tail}" if tail else "")
        with self._lock:
            job, self._active_job = self._active_job, None
        if job is not None:
            self._deliver(protocol.Message("error", protocol.error_payload("crashed", text), reply_to=job))
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

    def _require_stopped(self) -> None:
        if self._connection is not None or self._process is not None:
            raise EngineError("already_running", "close() this client before starting another engine")

    def _require_connection(self) -> Connection:
        connection = self._connection
        if connection is None or not connection.alive:
            raise EngineError("not_running", f"the engine is {self._state.value}; start or restart it first")
        return connection

    def _read_ready_line(self, timeout_s: float) -> dict[str, Any]:
        """The child prints {"address", "pid"} once it listens; wait for it without blocking forever."""
        process, lines = self._process, queue.Queue()
        threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
        deadline, line = time.monotonic() + timeout_s, b""
        while not line and process.poll() is None:
            if time.monotonic() > deadline:
                raise EngineError("timeout", f"the engine did not start within {timeout_s:.0f} s")
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                pass
        try:
            return json.loads(line)
        except ValueError:
            raise EngineError(
                "crashed", f"the engine exited while starting (status {process.poll()}):\n{self._log_tail()}"
            ) from None

    def _abandon(self) -> None:
        """Undo a start that failed half-way."""
        if self._connection is not None:
            self._connection.closing = True
            self._connection.stop()
        self._kill_process()
        self._connection, self._process = None, None

    def _kill_process(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        if process is not None:
            self._close_pipes(process)

    @staticmethod
    def _close_pipes(process: subprocess.Popen) -> None:
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass

    def _log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or self._process is None:
            return ""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
