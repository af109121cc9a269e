"""The engine process: serves `engine.link.protocol` requests on a ZeroMQ ROUTER socket.

One job (`protocol.JOB_TYPES`) runs at a time, in a worker thread, while the
main loop keeps reading the socket: `hello`, `cancel`, `job_state` and
`shutdown` are answered at once, and a second job request gets an `error` of
kind "busy". The worker checks and packs its own events (progress, scan_layer,
log, the final result or error: the costly part) and hands them to the main
loop over an inproc socket; the main loop stamps each with the engine's next
counter and signs it as it sends, so events leave in counter order. The final
event of the last few jobs is kept for `job_state`.

Only peers that pass the handshake (engine.link.transport) reach the main loop. Any
message that fails `Codec.decode` (unsigned, badly signed, replayed,
garbage, oversize, unknown type, wrong version) is dropped and logged; only a
correctly signed message of another protocol version gets an answer, an
`error` of kind "version", so that the other side can say what is wrong.

A local engine (started by `engine.link.client`) exits when its parent dies: it
watches its stdin pipe for end-of-file and polls `os.getppid()`.
"""

from __future__ import annotations

import collections
import importlib
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import zmq

from int8wb.engine.errors import WorkbenchError
from int8wb.engine.installation import __version__
from int8wb.engine.link import protocol, transport
from int8wb.engine.link.protocol import Message, ProtocolError, VersionMismatch
from int8wb.engine.link.wire import Codec, Prepared
from int8wb.engine.model import dependencies
from int8wb.engine.task import CallbackTask

log = logging.getLogger("engine.process.server")

DEFAULT_SESSION = "int8wb.engine.process.session:Session"
POLL_INTERVAL_MS = 100
SHUTDOWN_JOIN_S = 5.0


def load_session_factory(spec: str, **options: Any) -> Callable[[], Any]:
    """`module:callable` -> the callable; the engine calls it once, before the first job.

    `options` (such as `allow_remote_code=True`) are passed to it; none are passed when none are given,
    so any callable without parameters serves.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise WorkbenchError(f"session factory must look like module:callable, got {spec!r}")

    def factory() -> Any:
        return getattr(importlib.import_module(module_name), attribute)(**options)

    return factory


class _JobTask(CallbackTask):
    """The task a job runs with: every report becomes a signed event for the requesting client."""

    def __init__(self, send: Callable[[Message], None], request_id: str) -> None:
        super().__init__(
            on_progress=lambda fraction, text: send(
                protocol.event("progress", request_id, {"fraction": fraction, "message": text})
            ),
            on_partial=self._partial,
            on_log=lambda text: send(protocol.event("log", request_id, {"message": text, "level": "info"})),
            min_interval_s=0.05,
        )
        self._send, self._request_id = send, request_id

    def _partial(self, kind: str, payload: dict[str, Any]) -> None:
        if kind != "scan_layer":  # the only partial result the protocol carries
            raise ValueError(f"a job reported a partial result of kind {kind!r}, which the protocol has no event for")
        self._send(protocol.event("scan_layer", self._request_id, payload))


class EngineServer:
    """Binds `listen`, then `serve()` answers requests until `shutdown` or the parent's death.

    `session_factory` builds the object whose `handle(request_type, params, task)`
    runs the jobs (by default `engine.process.session.Session`, imported on the first
    job so that starting an engine and `hello` do not wait for torch).
    """

    def __init__(
        self,
        key: bytes,
        listen: str = "tcp://127.0.0.1:0",
        session_factory: Callable[[], Any] | None = None,
        max_request_bytes: int = protocol.MAX_REQUEST_BYTES,
        parent_pid: int | None = None,
        parent_gone: threading.Event | None = None,
    ) -> None:
        self._codec = Codec(
            key, protocol.ENGINE, protocol.new_session(), max_request_bytes, protocol.MAX_REQUEST_FRAMES
        )
        self._session_factory = session_factory or load_session_factory(DEFAULT_SESSION)
        self._session: Any = None
        self._parent_pid = parent_pid
        self._parent_gone = parent_gone or threading.Event()
        self._context = zmq.Context()
        self._gate = transport.HandshakeGate(self._context, key)
        try:
            self._router = transport.engine_socket(self._context, listen, max_request_bytes)
        except WorkbenchError:
            self._gate.close()
            self._context.destroy(linger=0)
            raise
        self.address: str = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._outbox_address = f"inproc://outbox-{id(self)}"
        self._outbox = self._context.socket(zmq.PULL)
        self._outbox.setsockopt(zmq.RCVHWM, 0)
        self._outbox.bind(self._outbox_address)
        self._lock = threading.Lock()
        self._job: tuple[str, _JobTask, threading.Thread] | None = None
        self._last_thread: threading.Thread | None = None  # outlives `_job` by its last send
        self._finals: collections.OrderedDict[str, Message] = collections.OrderedDict()  # job id -> final event
        self._stopping = False
        self.stats = {"received": 0, "rejected": 0, "jobs": 0}

    # --- main loop --------------------------------------------------------------

    def serve(self) -> int:
        """Run until `shutdown` or until the parent is gone; returns the exit status."""
        poller = zmq.Poller()
        for socket in (self._gate.socket, self._router, self._outbox):
            poller.register(socket, zmq.POLLIN)
        log.info("engine %s (protocol %d) listening on %s", __version__, protocol.PROTOCOL_VERSION, self.address)
        try:
            while not self._stopping:
                ready = dict(poller.poll(POLL_INTERVAL_MS))
                if self._gate.socket in ready:
                    self._gate.serve()
                if self._outbox in ready:
                    self._forward_outbox()
                if self._router in ready:
                    self._read_requests()
                if self._parent_is_gone():
                    log.warning("parent process is gone; exiting")
                    self._cancel_job()
                    return 0
            self._finish_job(SHUTDOWN_JOIN_S)
            self._forward_outbox()
            return 0
        finally:
            self.close()

    def close(self) -> None:
        """Close the sockets; replies already queued get a second to leave."""
        self._outbox.close(linger=0)
        self._gate.close()
        self._router.close(linger=1000)
        if self._last_thread is None or not self._last_thread.is_alive():
            self._context.term()
        else:  # a job that ignored cancellation still holds its socket; do not wait for it
            self._context.destroy(linger=0)

    def _parent_is_gone(self) -> bool:
        if self._parent_gone.is_set():
            return True
        return self._parent_pid is not None and os.getppid() != self._parent_pid

    def _forward_outbox(self) -> None:
        """Seal and send what the job packed: identity, type, id, reply_to, payload JSON, buffers."""
        while True:
            try:
                frames = self._outbox.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity, type_, id_, reply_to, payload_json = (frame.bytes for frame in frames[:5])
            prepared = Prepared(
                type_.decode(),
                id_.decode(),
                reply_to.decode() or None,
                payload_json.decode(),
                tuple(f.buffer for f in frames[5:]),
            )
            self._router.send_multipart([identity, *self._codec.seal(prepared, identity.hex())], copy=False)

    def _read_requests(self) -> None:
        for _ in range(1000):  # bounded, so that a flood cannot starve the outbox
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.stats["received"] += 1
            identity, body = frames[0].bytes, [frame.buffer for frame in frames[1:]]
            try:
                message = self._codec.decode(body)
                if message.sender != identity.hex():
                    raise ProtocolError(f"a message signed for session {message.sender} came from another connection")
            except VersionMismatch as exc:
                self._reject(identity, exc)
                refusal = {**protocol.error_payload("version", str(exc)), "protocol": protocol.PROTOCOL_VERSION}
                self._send(identity, protocol.event("error", exc.message.id, refusal))
                continue
            except ProtocolError as exc:
                self._reject(identity, exc)
                continue
            try:
                self._dispatch(identity, message)
            except Exception:  # a bug in handling one request must not take the engine down
                log.exception("failed to handle %s %s", message.type, message.id)
                failure = protocol.error_payload(
                    "internal", f"the engine failed to handle {message.type}", traceback.format_exc()
                )
                self._send(identity, protocol.event("error", message.id, failure))

    def _reject(self, identity: bytes, exc: ProtocolError) -> None:
        self.stats["rejected"] += 1
        log.warning("dropped a message from peer %s: %s", identity.hex(), exc)

    def _send(self, identity: bytes, message: Message) -> None:
        self._router.send_multipart([identity, *self._codec.encode(message, identity.hex())], copy=False)

    def _reply(self, identity: bytes, request: Message, result: dict[str, Any]) -> None:
        self._send(identity, protocol.event("result", request.id, {"request": request.type, "result": result}))

    # --- requests -----------------------------------------------------------------

    def _dispatch(self, identity: bytes, message: Message) -> None:
        if message.type == "hello":
            self._reply(identity, message, self._info())
        elif message.type == "cancel":
            self._reply(identity, message, self._cancel_job(message.payload.get("target")))
        elif message.type == "job_state":
            self._reply(identity, message, self._job_state(message.payload["job"]))
        elif message.type == "shutdown":
            log.info("shutdown requested")
            self._cancel_job()
            self._reply(identity, message, {"stopping": True})
            self._stopping = True
        else:
            self._start_job(identity, message)

    def _info(self) -> dict[str, Any]:
        with self._lock:
            active = self._job[0] if self._job else None
        return {
            "protocol": protocol.PROTOCOL_VERSION,
            "engine": __version__,
            "pid": os.getpid(),
            "busy": active is not None,
            "active_job": active,
            "request_types": list(protocol.REQUEST_TYPES),
            "stats": {**self.stats, "handshakes_refused": self._gate.refused},
        }

    def _job_state(self, job: str) -> dict[str, Any]:
        """Whether `job` runs, has ended (with its final event) or is unknown here."""
        with self._lock:
            if self._job is not None and self._job[0] == job:
                return {"job": job, "state": "running", "event": None}
            final = self._finals.get(job)
        if final is None:
            return {"job": job, "state": "unknown", "event": None}
        return {"job": job, "state": "finished", "event": {"type": final.type, "payload": final.payload}}

    def _cancel_job(self, target: str | None = None) -> dict[str, Any]:
        with self._lock:
            job = self._job
        if job is None or target not in (None, job[0]):
            return {"cancelled": False, "target": target}
        job[1].cancel()
        log.info("cancelling job %s", job[0])
        return {"cancelled": True, "target": job[0]}

    def _start_job(self, identity: bytes, request: Message) -> None:
        with self._lock:
            busy_with = self._job[0] if self._job else None
            if busy_with is None:
                sender = _OutboxSender(self._context, self._outbox_address, self._codec, identity)
                task = _JobTask(sender.send, request.id)
                thread = threading.Thread(
                    target=self._run_job, args=(request, task, sender), name=f"job-{request.type}", daemon=True
                )
                self._job = (request.id, task, thread)
                self._last_thread = thread
                self.stats["jobs"] += 1
        if busy_with is not None:
            refusal = protocol.error_payload(
                "busy", f"the engine is busy with job {busy_with}; cancel it or wait for its result"
            )
            self._send(identity, protocol.event("error", request.id, refusal))
            return
        log.info("job %s %s started", request.type, request.id)
        thread.start()

    def _run_job(self, request: Message, task: _JobTask, sender: _OutboxSender) -> None:
        started = time.perf_counter()
        try:
            if self._session is None:
                self._session = self._session_factory()
            result = self._session.handle(request.type, request.payload, task)
            final = protocol.event("result", request.id, {"request": request.type, "result": dict(result or {})})
            prepared = self._codec.prepare(final)  # may fail for an unsendable result: reported below
        except BaseException as exc:  # noqa: BLE001 - every failure becomes an error event
            if isinstance(exc, ImportError):
                exc = dependencies.diagnosis(exc)  # names the package, its version and the fix
            kind = exc.kind if isinstance(exc, WorkbenchError) else "internal"
            text = traceback.format_exc()
            if kind != "cancelled":
                log.error("job %s %s failed: %s", request.type, request.id, text)
            final = protocol.event(
                "error", request.id, protocol.error_payload(kind, str(exc) or type(exc).__name__, text)
            )
            prepared = self._codec.prepare(final)
        log.info("job %s %s ended after %.2f s", request.type, request.id, time.perf_counter() - started)
        with self._lock:  # free before the last event leaves, so the next request never sees "busy"
            self._job = None
            self._finals[request.id] = final
            while len(self._finals) > protocol.KEPT_FINAL_EVENTS:
                self._finals.popitem(last=False)
        sender.send_prepared(prepared)
        sender.close()

    def _finish_job(self, timeout_s: float) -> None:
        if self._last_thread is not None:
            self._last_thread.join(timeout_s)


class _OutboxSender:
    """A job's way out: packs on the worker thread, hands the parts to the main loop (which seals) over inproc."""

    def __init__(self, context: zmq.Context, address: str, codec: Codec, identity: bytes) -> None:
        self._context, self._address, self._codec, self._identity = context, address, codec, identity
        self._socket: zmq.Socket | None = None
        self._lock = threading.Lock()  # a job may report from threads of its own

    def send(self, message: Message) -> None:
        self.send_prepared(self._codec.prepare(message))

    def send_prepared(self, prepared: Prepared) -> None:
        parts = [self._identity, prepared.type.encode(), prepared.id.encode(), (prepared.reply_to or "").encode()]
        with self._lock:
            if self._socket is None:
                self._socket = self._context.socket(zmq.PUSH)
                self._socket.setsockopt(zmq.SNDHWM, 0)
                self._socket.connect(self._address)
            self._socket.send_multipart([*parts, prepared.payload_json.encode(), *prepared.buffers], copy=False)

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close(linger=-1)
                self._socket = None
