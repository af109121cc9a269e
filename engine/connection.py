"""One connection to one engine: the I/O thread that owns its ZeroMQ socket, and what it needs.

`engine.client.EngineClient` holds one `Connection` at a time; the names
here are re-exported there, which is where clients import them from.
"""

from __future__ import annotations

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

from engine import protocol
from engine.errors import BadInput, WorkbenchError
from engine.protocol import Codec, Message, ProtocolError, VersionMismatch

log = logging.getLogger("engine.client")

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

    Other threads hand it signed frames over an inproc PAIR socket (under a
    lock); it forwards them, decodes what arrives, calls `on_message` with
    each message, then resolves the `expect`ed future of a result or error.
    It watches a local child process and, with `heartbeat`, pings a remote
    engine that has been silent; when either is gone it calls `on_lost`.
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
        self._codec = Codec(info.key)
        self._context = zmq.Context()
        self._inbox = self._context.socket(zmq.PAIR)
        self._inbox.bind(f"inproc://client-{id(self)}")
        self._outbox = self._context.socket(zmq.PAIR)
        self._outbox.setsockopt(zmq.SNDHWM, 0)
        self._outbox.connect(f"inproc://client-{id(self)}")
        self._send_lock, self._futures_lock = threading.Lock(), threading.Lock()
        self._futures: dict[str, concurrent.futures.Future] = {}
        self._pings: set[str] = set()
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
        frames = self._codec.encode(message)
        with self._send_lock:
            if not self.alive:
                raise EngineError("not_running", "the connection to the engine is closed")
            self._outbox.send_multipart(frames, copy=False)

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
        dealer = self._context.socket(zmq.DEALER)
        for option in (zmq.SNDHWM, zmq.RCVHWM):
            dealer.setsockopt(option, 0)
        dealer.connect(self._info.address)
        poller = zmq.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(self._inbox, zmq.POLLIN)
        self._last_heard, self._ping_sent = time.monotonic(), None
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(100))
                if self._inbox in ready:
                    self._forward(dealer)
                if dealer in ready:
                    self._receive(dealer)
                lost = self._check_alive(dealer)
                if lost is not None:
                    self._shut(dealer, 0)
                    self._on_lost(*lost)
                    return
        finally:
            self._shut(dealer, 200)

    def _forward(self, dealer: zmq.Socket) -> None:
        while True:
            try:
                frames = self._inbox.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) > 1:
                dealer.send_multipart(frames, copy=False)

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
                self._pings.discard(message.reply_to)
                continue
            self._on_message(message)
            if message.type == "result":
                self._resolve(message.reply_to, result=message.payload["result"])
            elif message.type == "error":
                payload = message.payload
                self._resolve(
                    message.reply_to, error=EngineError(payload["kind"], payload["message"], payload["traceback"])
                )

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
                ping = protocol.request("hello", {"protocol": protocol.PROTOCOL_VERSION, "client": "heartbeat"})
                self._pings.add(ping.id)
                dealer.send_multipart(self._codec.encode(ping), copy=False)
                self._ping_sent = now
        return None

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
