"""The wire protocol between the workbench GUI (or any other client) and an engine process.

This module is the contract: pure Python + numpy, no torch, no Qt. A client
written in another language needs only what this docstring says; the
encoding itself lives in `engine.link.wire` and the sockets in `engine.link.transport`.

Transport and handshake
-----------------------
ZeroMQ. The engine binds a ROUTER socket; each client connects a DEALER
socket. A local engine listens on `tcp://127.0.0.1:<random port>`; a remote
one on the address its user gave, and writes a connection file (see
`engine.link.client.ConnectionInfo`): JSON `{"address": "tcp://host:port",
"key": "<hex>", "protocol": 2}`, file mode 0600.

A peer must pass ZeroMQ's PLAIN handshake before the engine reads a single
message from it: the username is the client's session id (32 hex characters,
see below) and the password `handshake_password(key, username)`, the hex
HMAC-SHA256 of `HANDSHAKE_LABEL + username` under the session key. The engine
drops any other connection during the handshake, so nobody without the key can
make it buffer anything (ZeroMQ holds a multipart message until its last
frame, before any code of ours could look at it). The handshake proves
knowledge of the key but travels in clear text: someone who watches the
network can repeat it, and only then reach the message checks below.

Each client picks a session id (16 random bytes, the first one not zero) per
connection and uses those bytes as its DEALER's routing id, so that a
reconnect after a network blip keeps the same identity and a running job's
events find the client again (the engine hands the identity over to the new
connection).

Frames of one message (as the DEALER sends and receives them; the ROUTER sees
the identity frame in front, which is not part of the message):

    frame 0      signature: 32 raw bytes, HMAC-SHA256 with the session key
    frame 1      header: UTF-8 JSON object (the envelope)
    frame 2..    one binary frame per numpy array in the payload, in order

The signature covers frames 1.. : for each frame, its length as an unsigned
64-bit little-endian integer followed by its bytes (the length prefix stops
anyone from moving bytes across a frame boundary without breaking the
signature). Messages with a missing or wrong signature are dropped and logged,
never parsed further; so are garbage, oversize messages, replays and unknown
types. What a message may cost is bounded before it is read: each frame by the
socket (`MAX_REQUEST_BYTES` towards the engine, `MAX_EVENT_BYTES` towards a
client), the frame count and total size by the receiver, the queue of whole
messages by high-water marks on both sides.

Envelope (frame 1):

    {"v": 2, "type": "scan", "id": "<32 hex>", "reply_to": null | "<id>",
     "from": "client" | "engine", "session": "<32 hex>", "to": null | "<32 hex>",
     "seq": 7, "payload": {...}}

`v` is `PROTOCOL_VERSION` (an integer, not a boolean); a signed message with
another version is refused (the engine answers it with an `error` event of
kind "version" carrying its own version in `payload.protocol`). `id` is unique
per message (uuid4 hex). Events set `reply_to` to the id of the request they
belong to. `from` says which side sent the message (requests come from a
client, events from the engine), `session` is the sender's session id, `to`
the client session an event is for (null in requests), and `seq` counts the
sender's messages from 1. A receiver takes a message only if its `seq` is
larger than the last one it accepted from that session: a captured message
can never be replayed, however many came after it. The engine checks that a
request's `session` is the routing id it arrived on; a client takes only
events addressed to its own session, from one engine session.

Arrays: anywhere in a payload, a numpy array is replaced by the reference
`{"__ndarray__": i, "dtype": "<f4", "shape": [576]}` where `i` indexes the
binary frames (0 = frame 2), `dtype` is numpy's `dtype.str` (byte order +
kind + item size; kinds b, i, u, f, c only), `shape` has at most `MAX_NDIM`
non-negative dimensions, and the frame holds the array's bytes in C order.
Nothing is ever pickled. JSON floats may be `NaN`, `Infinity` and `-Infinity`
(as Python's json module writes them).

Requests (client -> engine) and their payloads:

    hello        {"protocol": 2, "client": "name"}        -> result: engine info
    load_model   params of the job (see engine.process.session)  -> result
    scan         params; streams scan_layer events       -> result
    quantize, evaluate, task_accuracy, bench_decode,
    plan_memory, export, sensitivity, super_weights      -> result
    cancel       {"target": "<job id>" | null}           -> result {"cancelled": bool}
    job_state    {"job": "<job id>"}                      -> result {"job", "state", "event"}
    shutdown     {}                                       -> result, then the engine exits

`job_state` answers "running", "finished" (with `event`: the job's final
`{"type": "result" | "error", "payload": {...}}`, kept for the last
`KEPT_FINAL_EVENTS` jobs) or "unknown". A client whose connection blipped asks
it for the job it waits for: a final event sent while it was away is not lost,
and a job the engine no longer knows ends in an error instead of a wait.
No request can make the engine run a model's own code: only whoever starts
the engine can allow that (`int8wb engine --allow-remote-code`).

Events (engine -> client), all with `reply_to` set to the request's id:

    progress     {"fraction": 0..1, "message": str}   at most ~20/s, only when it moved
    scan_layer   one distinct Linear input's statistics, sent once for all the Linears
                 that read it (q/k/v, gate/up): {"index", "names": [Linear names],
                 "out_features": [one per name], "layer", "kind", "absmax": f4[in],
                 "count_over": i8[in], "hist": i8[bins], "weight_absmax": f4[in] (over
                 the Linears SmoothQuant smooths together), "smoothable", "n_tokens",
                 "final", and "sqnr_db": {name: {method: dB}} when the scan measures
                 errors (params "error_methods")}
    log          {"message": str, "level": "info" | "warning" | "error"}
    result       {"request": "<request type>", "result": {...}}
    error        {"kind": str, "message": str, "traceback": str}

The engine runs one job (`JOB_TYPES`) at a time; another job request while one
runs gets an `error` of kind "busy". `hello`, `cancel`, `job_state` and
`shutdown` are answered at once, also while a job runs. A cancelled job ends
with an `error` of kind "cancelled".
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import uuid
from typing import Any

from int8wb.engine.errors import WorkbenchError

PROTOCOL_VERSION = 2  # 2: the handshake gate and the stamp (from, session, to, seq)

JOB_TYPES = (
    "load_model",
    "scan",
    "quantize",
    "evaluate",
    "task_accuracy",
    "bench_decode",
    "plan_memory",
    "export",
    "sensitivity",
    "super_weights",
)
CONTROL_TYPES = ("hello", "cancel", "job_state", "shutdown")
REQUEST_TYPES = CONTROL_TYPES + JOB_TYPES
EVENT_TYPES = ("progress", "scan_layer", "log", "result", "error")
MESSAGE_TYPES = REQUEST_TYPES + EVENT_TYPES
JOB_STATES = ("running", "finished", "unknown")
CLIENT, ENGINE = "client", "engine"  # the `from` of requests and of events

# Required payload fields per message type and the JSON types they must have.
REQUIRED_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "hello": {"protocol": (int,)},
    "job_state": {"job": (str,)},
    "progress": {"fraction": (int, float), "message": (str,)},
    "scan_layer": {"index": (int,), "names": (list,)},
    "log": {"message": (str,)},
    "result": {"request": (str,), "result": (dict,)},
    "error": {"kind": (str,), "message": (str,), "traceback": (str,)},
}

SIGNATURE_BYTES = 32
SESSION_BYTES = 16
ARRAY_KEY = "__ndarray__"
ALLOWED_DTYPE_KINDS = "biufc"
MAX_NDIM = 32
HANDSHAKE_LABEL = b"int8wb handshake\0"
ZAP_DOMAIN = b"int8wb"

# Requests are small (arrays travel from the engine, not to it); events can be large.
MAX_REQUEST_BYTES = 4 * 2**20
MAX_REQUEST_FRAMES = 2 + 64
MAX_EVENT_BYTES = 2**30
MAX_EVENT_FRAMES = 2 + 2**16
# Whole messages a socket queues for one peer before it stops reading (or, sending, drops).
REQUEST_QUEUE = 16
EVENT_QUEUE = 10_000
KEPT_FINAL_EVENTS = 4


class ProtocolError(WorkbenchError):
    """A message that cannot be sent or must not be accepted."""

    kind = "protocol"


class VersionMismatch(ProtocolError):
    """A correctly signed message from a peer that speaks another protocol version."""

    kind = "version"

    def __init__(self, peer_version: Any, message: Message) -> None:
        super().__init__(f"peer speaks protocol version {peer_version!r}, this side speaks {PROTOCOL_VERSION}")
        self.peer_version = peer_version
        self.message = message


def new_id() -> str:
    return uuid.uuid4().hex


def new_key() -> bytes:
    """A fresh random session key (32 bytes)."""
    return secrets.token_bytes(32)


def new_session() -> bytes:
    """A fresh session id, usable as a ZeroMQ routing id (whose first byte must not be zero)."""
    session = bytearray(secrets.token_bytes(SESSION_BYTES))
    session[0] = session[0] or 1
    return bytes(session)


def handshake_password(key: bytes, username: bytes) -> bytes:
    """The PLAIN password that proves knowledge of `key` at the handshake (see the module docstring)."""
    return hmac.new(key, HANDSHAKE_LABEL + username, hashlib.sha256).hexdigest().encode()


@dataclasses.dataclass
class Message:
    """One protocol message. `payload` may hold numpy arrays at any depth.

    `sender` is the session id the message was signed under (set by the receiving codec).
    """

    type: str
    payload: dict[str, Any] = dataclasses.field(default_factory=dict)
    id: str = dataclasses.field(default_factory=new_id)
    reply_to: str | None = None
    sender: str | None = None

    @property
    def is_request(self) -> bool:
        return self.type in REQUEST_TYPES


def request(type_: str, payload: dict[str, Any] | None = None) -> Message:
    if type_ not in REQUEST_TYPES:
        raise ProtocolError(f"unknown request type {type_!r}; known: {', '.join(REQUEST_TYPES)}")
    return Message(type_, dict(payload or {}))


def event(type_: str, reply_to: str | None, payload: dict[str, Any]) -> Message:
    if type_ not in EVENT_TYPES:
        raise ProtocolError(f"unknown event type {type_!r}; known: {', '.join(EVENT_TYPES)}")
    return Message(type_, payload, reply_to=reply_to)


def error_payload(kind: str, message: str, traceback_text: str = "") -> dict[str, str]:
    return {"kind": kind, "message": message, "traceback": traceback_text}


def check_fields(message: Message) -> None:
    """`ProtocolError` unless the payload has the fields its type requires, of the right JSON types."""
    for field, types in REQUIRED_FIELDS.get(message.type, {}).items():
        value = message.payload.get(field)
        if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
            names = "/".join(t.__name__ for t in types)
            raise ProtocolError(f"{message.type}: payload field {field!r} must be {names}, got {value!r}")
    if message.type == "progress" and not 0.0 <= message.payload["fraction"] <= 1.0:
        raise ProtocolError(f"progress fraction {message.payload['fraction']!r} is outside [0, 1]")
