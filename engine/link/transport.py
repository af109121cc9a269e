"""The sockets of a connection: their limits, the client's identity and the engine's handshake gate.

ZeroMQ reads a multipart message whole before it hands over the first frame,
and bounds only the size of each frame, so no check on received messages can
stop a peer that sends frames without end. What stops it is the handshake:
the engine's ROUTER is a PLAIN server whose authentication handler
(`HandshakeGate`, ZeroMQ's ZAP) lets in only peers whose password proves the
session key (`engine.link.protocol.handshake_password`); every other connection is
dropped before a single message frame is read. Behind the gate each frame is
bounded by `MAXMSGSIZE` and the queue of whole messages by high-water marks.
"""

from __future__ import annotations

import hmac
import logging
import time
from urllib.parse import urlsplit

import zmq

from int8wb.engine.errors import WorkbenchError
from int8wb.engine.link.protocol import EVENT_QUEUE, MAX_EVENT_BYTES, REQUEST_QUEUE, ZAP_DOMAIN, handshake_password

log = logging.getLogger("engine.link.transport")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks, in each context
REFUSAL_LOG_INTERVAL_S = 60.0


class HandshakeGate:
    """Answers the handshakes of one ZeroMQ context: PLAIN peers that hold the key get in, nobody else.

    Bind it before the socket it guards; the owner polls `socket` and calls
    `serve()` when it is readable.
    """

    def __init__(self, context: zmq.Context, key: bytes) -> None:
        self._key = key
        self.socket = context.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(ZAP_ENDPOINT)
        self.admitted = 0
        self.refused = 0
        self._last_logged: dict[bytes, float] = {}

    def serve(self) -> None:
        """Answer every handshake waiting now."""
        while True:
            try:
                request = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.socket.send_multipart(self._answer(request))

    def _answer(self, request: list[bytes]) -> list[bytes]:
        if len(request) < 6:
            return [b"1.0", b"", b"500", b"malformed authentication request", b"", b""]
        version, request_id, domain, address, _identity, mechanism, *credentials = request
        if mechanism == b"PLAIN" and domain == ZAP_DOMAIN and len(credentials) == 2:
            username, password = credentials
            if hmac.compare_digest(password, handshake_password(self._key, username)):
                self.admitted += 1
                return [version, request_id, b"200", b"OK", username, b""]
        self.refused += 1
        self._log_refusal(address, mechanism)
        return [version, request_id, b"400", b"the handshake does not prove the session key", b"", b""]

    def _log_refusal(self, address: bytes, mechanism: bytes) -> None:
        """One line per peer address and minute: a peer retrying for hours must not fill the log."""
        now = time.monotonic()
        if now - self._last_logged.get(address, -REFUSAL_LOG_INTERVAL_S) >= REFUSAL_LOG_INTERVAL_S:
            if len(self._last_logged) > 1024:
                self._last_logged.clear()
            self._last_logged[address] = now
            log.warning(
                "refused a connection from %s (%s handshake without the session key)",
                address.decode(errors="replace"),
                mechanism.decode(errors="replace"),
            )

    def close(self) -> None:
        self.socket.close(linger=0)


def uses_ipv6(address: str) -> bool:
    """Whether `address` names an IPv6 host (`tcp://[::1]:5555`): ZeroMQ needs `IPV6` set for those.

    Only for those: with the option set, an IPv4 address binds as an IPv6-mapped one and says so.
    """
    return ":" in (urlsplit(address).hostname or "")


def engine_socket(context: zmq.Context, listen: str, max_request_bytes: int) -> zmq.Socket:
    """The engine's ROUTER bound to `listen`, behind the context's `HandshakeGate` (bind that first)."""
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.PLAIN_SERVER, 1)
    router.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a client that reconnects takes its identity back
    router.setsockopt(zmq.MAXMSGSIZE, max_request_bytes)
    router.setsockopt(zmq.RCVHWM, REQUEST_QUEUE)
    router.setsockopt(zmq.SNDHWM, EVENT_QUEUE)  # beyond it, events for a client that does not read are dropped
    router.setsockopt(zmq.IPV6, uses_ipv6(listen))
    router.setsockopt(zmq.LINGER, 1000)
    try:
        router.bind(listen)
    except zmq.ZMQError as exc:
        router.close(linger=0)
        raise WorkbenchError(f"cannot listen on {listen}: {exc}") from None
    return router


def client_socket(
    context: zmq.Context, key: bytes, session: bytes, address: str, max_event_bytes: int = MAX_EVENT_BYTES
) -> zmq.Socket:
    """A DEALER connected to `address` with routing id `session` and the handshake that proves `key`."""
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.ROUTING_ID, session)
    dealer.setsockopt(zmq.PLAIN_USERNAME, session.hex().encode())
    dealer.setsockopt(zmq.PLAIN_PASSWORD, handshake_password(key, session.hex().encode()))
    dealer.setsockopt(zmq.MAXMSGSIZE, max_event_bytes)
    dealer.setsockopt(zmq.RCVHWM, EVENT_QUEUE)
    dealer.setsockopt(zmq.SNDHWM, 0)  # the client's own requests, queued across a reconnect
    dealer.setsockopt(zmq.IPV6, uses_ipv6(address))
    dealer.connect(address)
    return dealer
