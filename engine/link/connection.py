"""One connection to one engine: the I/O thread that owns its ZeroMQ socket, and what it needs.

`engine.link.client.EngineClient` holds one `Connection` at a time; the names
here are re-exported there, which is where clients import them from.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from int8wb.engine.errors import BadInput, WorkbenchError
from int8wb.engine.link import protocol, transport
from int8wb.engine.link.protocol import Message, ProtocolError, VersionMismatch
from int8wb.engine.link.wire import Codec, Prepared

log = logging.getLogger("engine.link.client")

HEARTBEAT_S = 5.0  # a remote engine silent this long gets a `hello`
HEARTBEAT_TIMEOUT_S = 15.0  # ... and is declared lost if that goes unanswered this long


class EngineError(WorkbenchError):
    """An `error` from the engine (or about it): `kind`, message, and the engine's traceback text."""

    def __init__(self, kind: str, message: str, traceback_text: str = "") -> None:
        super().__init__(message)
        self.kind, self.traceback_text = kind, traceback_text


@dataclasses.dataclass(frozen=True)
class ConnectionInfo:
    """Where an engine listens and the key it signs with: the content of a connection file."""

    address: str
    key: bytes

    @classmethod
    def from_file(cls, path: str | Path) -> ConnectionInfo:
        try:
            data = json.loads(Path(path).read_text())
            address, key = data["address"], bytes.fromhex(data["key"])
        except OSError as exc:
            raise BadInput(f"cannot read the connection file {path}: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError):
            raise BadInput(f"{path} is not an engine connection file (JSON with address and key)") from None
        if data.get("protocol", protocol.PROTOCOL_VERSION) != protocol.PROTOCOL_VERSION:
            raise BadInput(
                f"{path} is for protocol {data.get('protocol')}, this client speaks {protocol.PROTOCOL_VERSION}"
            )
        if not isinstance(address, str) or not address.startswith("tcp://") or len(key) < 16:
            raise BadInput(f"{path}: address must be tcp://HOST:PORT and the key at least 16 bytes")
        return cls(address, key)


class Connection:
    """One connection to one engine: the I/O thread that owns the DEALER socket.

    Other threads pack their requests and hand them to it over an inproc PAIR
    socket (under a lock); it stamps and signs them as it sends, decodes what
    arrives, calls `on_message` with each message, then resolves the `expect`ed
    future of a result or error. It watches a local child process and, with
    `heartbeat`, pings a remote engine that has been silent; when either is
    gone, or the I/O thread itself fails, it calls `on_lost`.

    The DEALER keeps one routing id (`session`) for the connection's life, so
    after a network blip ZeroMQ reconnects it as the same client and a running
    job's events reach it again. The pings of a client that waits for jobs ask
    for their state (`job_state`): a final event sent while the connection was
    down arrives that way, and a job the engine no longer knows ends in an
    error of kind "lost".
    """

    def __init__(
        self,
        info: ConnectionInfo,
        on_message: Callable[[Message], None],
        on_lost: Callable[[str, bool], None],
        process: subprocess.Popen | None,
        heartbeat: bool,
    ) -> None:
        self._info, self._on_message, self._on_lost = info, on_message, on_lost
        self._process, self._heartbeat = process, heartbeat
        self.session = protocol.new_session()
        self._codec = Codec(info.key, protocol.CLIENT, self.session)
        self._context = zmq.Context()
        self._inbox = self._context.socket(zmq.PAIR)
        self._inbox.bind(f"inproc://client-{id(self)}")
        self._outbox = self._context.socket(zmq.PAIR)
        self._outbox.setsockopt(zmq.SNDHWM, 0)
        self._outbox.connect(f"inproc://client-{id(self)}")
        self._send_lock, self._futures_lock = threading.Lock(), threading.Lock()
        self._futures: dict[str, concurrent.futures.Future] = {}
        self._pings: dict[str, str | None] = {}  # ping request id -> the job it asks about (None: a hello)
        self._waiting: dict[str, str] = {}  # job id -> request type, until its final event (I/O thread only)
        self._finished: collections.deque[str] = collections.deque(maxlen=64)  # jobs whose final event came
        self._stop = threading.Event()
        self.closing, self.alive = False, True
        self._thread = threading.Thread(target=self._run, name="engine-client-io", daemon=True)
        self._thread.start()

    def expect(self, request_id: str) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._futures_lock:
            self._futures[request_id] = future
        return future

    def send(self, message: Message) -> None:
        prepared = self._codec.prepare(message)
        parts = [prepared.type.encode(), prepared.id.encode(), (prepared.reply_to or "").encode()]
        with self._send_lock:
            if not self.alive:
                raise EngineError("not_running", "the connection to the engine is closed")
            self._outbox.send_multipart([*parts, prepared.payload_json.encode(), *prepared.buffers], copy=False)

    def is_io_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def stop(self) -> None:
        """End the I/O thread and close the sockets (waits for the thread unless called on it)."""
        self._stop.set()
        with self._send_lock:
            if not self._outbox.closed and self._thread.is_alive():
                try:
                    self._outbox.send(b"", zmq.NOBLOCK)
                except zmq.Again:  # the I/O thread has closed its end already
                    pass
        if not self.is_io_thread():
            self._thread.join()
            with self._send_lock:
                self._outbox.close(linger=0)
            self._context.term()

    def _run(self) -> None:
        dealer = transport.client_socket(self._context, self._info.key, self.session, self._info.address)
        poller = zmq.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(self._inbox, zmq.POLLIN)
        self._last_heard, self._ping_sent = time.monotonic(), None
        lost = None
        try:
            while not self._stop.is_set() and lost is None:
                ready = dict(poller.poll(100))
                if self._inbox in ready:
                    self._forward(dealer)
                if dealer in ready:
                    self._receive(dealer)
                lost = self._check_alive(dealer)
        except Exception as exc:  # noqa: BLE001 - whatever ends this thread must end in "lost", never a hang
            log.exception("the connection to the engine failed")
            lost = (f"connection failed ({type(exc).__name__}: {exc})", True)
        finally:
            self._shut(dealer, 0 if lost else 200)
        if lost is not None:
            self._on_lost(*lost)

    def _forward(self, dealer: zmq.Socket) -> None:
        """Seal and send what other threads packed: type, id, reply_to, payload JSON, buffers."""
        while True:
            try:
                frames = self._inbox.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) < 4:
                continue  # the wake-up of `stop`
            type_, id_, reply_to, payload_json = (frame.bytes.decode() for frame in frames[:4])
            prepared = Prepared(type_, id_, reply_to or None, payload_json, tuple(f.buffer for f in frames[4:]))
            if type_ in protocol.JOB_TYPES:
                self._waiting[id_] = type_
            dealer.send_multipart(self._codec.seal(prepared), copy=False)

    def _receive(self, dealer: zmq.Socket) -> None:
        while True:
            try:
                frames = dealer.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._last_heard, self._ping_sent = time.monotonic(), None
            try:
                message = self._codec.decode([frame.buffer for frame in frames])
            except VersionMismatch as exc:
                self._resolve(exc.message.reply_to, error=EngineError("version", str(exc)))
                continue
            except ProtocolError as exc:
                log.warning("dropped a message from the engine: %s", exc)
                continue
            if message.reply_to in self._pings:
                self._answered(self._pings.pop(message.reply_to), message)
            else:
                self._take(message)

    def _take(self, message: Message) -> None:
        """Hand a message on (once for a job's final event) and resolve the future it answers."""
        if message.type in ("result", "error"):
            if message.reply_to in self._finished:
                return  # a job's final event that came already (a job_state answer crossed it)
            if self._waiting.pop(message.reply_to, None) is not None:
                self._finished.append(message.reply_to)
        self._on_message(message)
        if message.type == "result":
            self._resolve(message.reply_to, result=message.payload["result"])
        elif message.type == "error":
            payload = message.payload
            self._resolve(
                message.reply_to, error=EngineError(payload["kind"], payload["message"], payload["traceback"])
            )

    def _answered(self, job: str | None, answer: Message) -> None:
        """A ping's answer; for a job still waited for, its final event if the engine has one, or "lost"."""
        if job is None or job not in self._waiting or answer.type != "result":
            return
        state = answer.payload["result"].get("state")
        final = answer.payload["result"].get("event")
        if state == "finished" and isinstance(final, dict):
            try:
                message = Message(final.get("type"), final.get("payload"), reply_to=job)
                protocol.check_fields(message)
            except (ProtocolError, AttributeError):
                message = None
            if message is not None and message.type in ("result", "error"):
                log.info("job %s ended while the connection was down; its final event came by job_state", job)
                self._take(message)
                return
        if state in ("finished", "unknown"):
            text = f"the engine no longer knows job {job} (it may have been restarted): its result is lost"
            self._take(Message("error", protocol.error_payload("lost", text), reply_to=job))

    def _resolve(self, request_id: str | None, result: Any = None, error: Exception | None = None) -> None:
        with self._futures_lock:
            future = self._futures.pop(request_id, None) if request_id else None
        if future is not None and not future.done():
            future.set_exception(error) if error is not None else future.set_result(result)

    def _check_alive(self, dealer: zmq.Socket) -> tuple[str, bool] | None:
        """(reason, crashed) once the engine is gone, else None."""
        if self._process is not None and not self.closing:
            status = self._process.poll()
            if status is not None:
                if status < 0:
                    return f"was killed by signal {-status}", True
                return f"exited with status {status}", status != 0
        if self._heartbeat and not self.closing:
            now = time.monotonic()
            if self._ping_sent is not None and now - self._ping_sent > HEARTBEAT_TIMEOUT_S:
                return f"at {self._info.address} stopped answering", True
            if self._ping_sent is None and now - self._last_heard > HEARTBEAT_S:
                self._ping(dealer)
                self._ping_sent = now
        return None

    def _ping(self, dealer: zmq.Socket) -> None:
        """Ask about every job waited for, or just say hello: either answer shows the engine is there."""
        questions = [("job_state", {"job": job}, job) for job in self._waiting] or [
            ("hello", {"protocol": protocol.PROTOCOL_VERSION, "client": "heartbeat"}, None)
        ]
        for request_type, payload, job in questions:
            ping = protocol.request(request_type, payload)
            self._pings[ping.id] = job
            dealer.send_multipart(self._codec.encode(ping), copy=False)

    def _shut(self, dealer: zmq.Socket, linger_ms: int) -> None:
        with self._send_lock:
            self.alive = False
        if not dealer.closed:
            dealer.close(linger=linger_ms)
            self._inbox.close(linger=0)
        with self._futures_lock:
            futures, self._futures = list(self._futures.values()), {}
        for future in futures:
            if not future.done():
                future.set_exception(
                    EngineError("crashed" if not self.closing else "stopped", "the connection to the engine ended")
                )
