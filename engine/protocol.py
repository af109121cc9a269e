"""The wire protocol between the workbench GUI (or any other client) and an engine process.

This module is the whole contract: pure Python + numpy, no torch, no Qt. A
client written in another language needs only what this docstring says.

Transport
---------
ZeroMQ. The engine binds a ROUTER socket; each client connects a DEALER
socket. A local engine listens on `tcp://127.0.0.1:<random port>`; a remote
one on the address its user gave, and writes a connection file (see
`engine.client.ConnectionInfo`): JSON `{"address": "tcp://host:port",
"key": "<hex>", "protocol": 1}`, file mode 0600.

Frames of one message (as the DEALER sends and receives them; the ROUTER sees
one identity frame in front, which is not part of the message):

    frame 0      signature: 32 raw bytes, HMAC-SHA256 with the session key
    frame 1      header: UTF-8 JSON object (the envelope)
    frame 2..    one binary frame per numpy array in the payload, in order

The signature covers frames 1.. : for each frame, its length as an unsigned
64-bit little-endian integer followed by its bytes (the length prefix stops
anyone from moving bytes across a frame boundary without breaking the
signature). Messages with a missing or wrong signature are dropped and logged,
never parsed further; so are garbage, oversize messages, a repeated signature
(replay) and unknown types.

Envelope (frame 1):

    {"v": 1, "type": "scan", "id": "<32 hex>", "reply_to": null | "<id>",
     "payload": {...}}

`v` is `PROTOCOL_VERSION`; a signed message with another version is refused
(the engine answers it with an `error` event of kind "version" carrying its own
version in `payload.protocol`). `id` is unique per message (uuid4 hex).
Events set `reply_to` to the id of the request they belong to.

Arrays: anywhere in a payload, a numpy array is replaced by the reference
`{"__ndarray__": i, "dtype": "<f4", "shape": [576]}` where `i` indexes the
binary frames (0 = frame 2), `dtype` is numpy's `dtype.str` (byte order +
kind + item size; kinds b, i, u, f, c only) and the frame holds the array's
bytes in C order. Nothing is ever pickled. JSON floats may be `NaN`,
`Infinity` and `-Infinity` (as Python's json module writes them).

Requests (client -> engine) and their payloads:

    hello        {"protocol": 1, "client": "name"}        -> result: engine info
    load_model   params of the job (see engine.session)  -> result
    scan         params; streams scan_layer events       -> result
    quantize, evaluate, plan_memory, export              -> result
    cancel       {"target": "<job id>" | null}           -> result {"cancelled": bool}
    shutdown     {}                                       -> result, then the engine exits

Events (engine -> client), all with `reply_to` set to the request's id:

    progress     {"fraction": 0..1, "message": str}   at most ~20/s, only when it moved
    scan_layer   one Linear layer's statistics: {"index", "name", "layer", "kind",
                 "absmax": f4[in], "count_over": i8[in], "hist": i8[bins],
                 "n_tokens", "final"}
    log          {"message": str, "level": "info" | "warning" | "error"}
    result       {"request": "<request type>", "result": {...}}
    error        {"kind": str, "message": str, "traceback": str}

The engine runs one job (`JOB_TYPES`) at a time; another job request while one
runs gets an `error` of kind "busy". `hello`, `cancel` and `shutdown` are
answered at once, also while a job runs. A cancelled job ends with an `error`
of kind "cancelled".
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import json
import math
import pathlib
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from engine.errors import WorkbenchError

PROTOCOL_VERSION = 1

JOB_TYPES = ("load_model", "scan", "quantize", "evaluate", "plan_memory", "export")
CONTROL_TYPES = ("hello", "cancel", "shutdown")
REQUEST_TYPES = CONTROL_TYPES + JOB_TYPES
EVENT_TYPES = ("progress", "scan_layer", "log", "result", "error")
MESSAGE_TYPES = REQUEST_TYPES + EVENT_TYPES

# Required payload fields per message type and the JSON types they must have.
REQUIRED_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "hello": {"protocol": (int,)},
    "progress": {"fraction": (int, float), "message": (str,)},
    "scan_layer": {"index": (int,), "name": (str,)},
    "log": {"message": (str,)},
    "result": {"request": (str,), "result": (dict,)},
    "error": {"kind": (str,), "message": (str,), "traceback": (str,)},
}

SIGNATURE_BYTES = 32
ARRAY_KEY = "__ndarray__"
ALLOWED_DTYPE_KINDS = "biufc"

# Requests are small (arrays travel from the engine, not to it); events can be large.
DEFAULT_MAX_REQUEST_BYTES = 64 * 2**20
DEFAULT_MAX_EVENT_BYTES = 8 * 2**30
DEFAULT_MAX_FRAMES = 1 << 16
REPLAY_HISTORY = 1 << 16


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
    import secrets

    return secrets.token_bytes(32)


@dataclasses.dataclass
class Message:
    """One protocol message. `payload` may hold numpy arrays at any depth."""

    type: str
    payload: dict[str, Any] = dataclasses.field(default_factory=dict)
    id: str = dataclasses.field(default_factory=new_id)
    reply_to: str | None = None

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


def sign(key: bytes, frames: Iterable[bytes | memoryview]) -> bytes:
    """HMAC-SHA256 over length-prefixed frames (see the module docstring)."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for frame in frames:
        view = memoryview(frame)
        mac.update(view.nbytes.to_bytes(8, "little"))
        mac.update(view)
    return mac.digest()


# --- payload <-> JSON + buffers --------------------------------------------------


def _pack(value: Any, buffers: list[memoryview], path: str) -> Any:
    """Copy of `value` with arrays replaced by references to their frames; arrays appended to `buffers`."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in ALLOWED_DTYPE_KINDS:
            raise ProtocolError(f"{path}: arrays of dtype {value.dtype} cannot be sent")
        array = value if value.flags.c_contiguous else value.copy(order="C")  # keeps 0-d arrays 0-d
        buffers.append(memoryview(array.reshape(-1).view(np.uint8)))
        return {ARRAY_KEY: len(buffers) - 1, "dtype": array.dtype.str, "shape": list(array.shape)}
    if isinstance(value, dict):
        if ARRAY_KEY in value:
            raise ProtocolError(f"{path}: the key {ARRAY_KEY!r} is reserved for arrays")
        packed = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProtocolError(f"{path}: dict keys must be strings, got {key!r}")
            packed[key] = _pack(item, buffers, f"{path}.{key}")
        return packed
    if isinstance(value, (list, tuple)):
        return [_pack(item, buffers, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, np.generic):
        return _pack(value.item(), buffers, path)
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ProtocolError(f"{path}: values of type {type(value).__name__} cannot be sent")


def _unpack(value: Any, frames: Sequence[memoryview], used: set[int]) -> Any:
    if isinstance(value, dict):
        if ARRAY_KEY in value:
            return _unpack_array(value, frames, used)
        return {key: _unpack(item, frames, used) for key, item in value.items()}
    if isinstance(value, list):
        return [_unpack(item, frames, used) for item in value]
    return value


def _unpack_array(spec: dict, frames: Sequence[memoryview], used: set[int]) -> np.ndarray:
    index, dtype_str, shape = spec.get(ARRAY_KEY), spec.get("dtype"), spec.get("shape")
    if set(spec) != {ARRAY_KEY, "dtype", "shape"}:
        raise ProtocolError(f"array reference has unexpected keys {sorted(spec)}")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(frames):
        raise ProtocolError(f"array reference points at frame {index!r} of {len(frames)}")
    if index in used:
        raise ProtocolError(f"array frame {index} is referenced twice")
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ProtocolError(f"array shape {shape!r} is not a list of non-negative integers")
    try:
        dtype = np.dtype(dtype_str) if isinstance(dtype_str, str) and len(dtype_str) <= 8 else None
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in ALLOWED_DTYPE_KINDS or dtype.str != dtype_str:
        raise ProtocolError(f"array dtype {dtype_str!r} is not allowed")
    frame = frames[index]
    if math.prod(shape) * dtype.itemsize != frame.nbytes:
        raise ProtocolError(
            f"array frame {index} has {frame.nbytes} bytes, shape {shape} of {dtype_str} needs "
            f"{math.prod(shape) * dtype.itemsize}"
        )
    used.add(index)
    return np.frombuffer(frame, dtype=dtype).reshape(shape)


def _check_fields(message: Message) -> None:
    for field, types in REQUIRED_FIELDS.get(message.type, {}).items():
        value = message.payload.get(field)
        if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
            names = "/".join(t.__name__ for t in types)
            raise ProtocolError(f"{message.type}: payload field {field!r} must be {names}, got {value!r}")
    if message.type == "progress" and not 0.0 <= message.payload["fraction"] <= 1.0:
        raise ProtocolError(f"progress fraction {message.payload['fraction']!r} is outside [0, 1]")


class Codec:
    """Turns `Message`s into signed frames and back, for one session key.

    `decode` raises `ProtocolError` for anything it will not accept; it checks
    the size and the signature before it parses a single byte, so unauthenticated
    peers never reach the JSON parser. Decoded arrays are read-only views of the
    received frames (copy one to write to it). `reject_replays` keeps a bounded
    history of signatures seen and refuses a message seen before.
    """

    def __init__(
        self,
        key: bytes,
        max_message_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_frames: int = DEFAULT_MAX_FRAMES,
        reject_replays: bool = True,
    ) -> None:
        if not isinstance(key, bytes) or len(key) < 16:
            raise ProtocolError("the session key must be at least 16 bytes")
        self._key = key
        self.max_message_bytes = max_message_bytes
        self.max_frames = max_frames
        self._reject_replays = reject_replays
        self._seen: set[bytes] = set()
        self._seen_order: collections.deque[bytes] = collections.deque()

    def encode(self, message: Message) -> list[bytes | memoryview]:
        """Frames to send: [signature, header, *array buffers]."""
        if message.type not in MESSAGE_TYPES:
            raise ProtocolError(f"unknown message type {message.type!r}")
        _check_fields(message)
        buffers: list[memoryview] = []
        payload = _pack(message.payload, buffers, "payload")
        header = {
            "v": PROTOCOL_VERSION,
            "type": message.type,
            "id": message.id,
            "reply_to": message.reply_to,
            "payload": payload,
        }
        header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
        frames: list[bytes | memoryview] = [header_bytes, *buffers]
        return [sign(self._key, frames), *frames]

    def decode(self, frames: Sequence[bytes | memoryview]) -> Message:
        """The message in `frames` (as `encode` made them), or `ProtocolError`."""
        if not 2 <= len(frames) <= self.max_frames:
            raise ProtocolError(f"a message has 2..{self.max_frames} frames, got {len(frames)}")
        views = [memoryview(frame).cast("B") for frame in frames]
        size = sum(view.nbytes for view in views)
        if size > self.max_message_bytes:
            raise ProtocolError(f"message of {size} bytes exceeds the limit of {self.max_message_bytes}")
        signature = bytes(views[0])
        if len(signature) != SIGNATURE_BYTES or not hmac.compare_digest(signature, sign(self._key, views[1:])):
            raise ProtocolError("bad or missing signature")
        if self._reject_replays and signature in self._seen:
            raise ProtocolError("replayed message (signature seen before)")
        try:
            header = json.loads(bytes(views[1]).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ProtocolError(f"header is not UTF-8 JSON: {exc}") from None
        message = self._message_from_header(header, views[2:])
        self._remember(signature)
        return message

    def _message_from_header(self, header: Any, buffers: Sequence[memoryview]) -> Message:
        if not isinstance(header, dict) or not {"v", "type", "id", "payload"} <= set(header):
            raise ProtocolError("header must be an object with v, type, id, reply_to, payload")
        type_, id_, reply_to, payload = header["type"], header["id"], header.get("reply_to"), header["payload"]
        if not isinstance(type_, str) or not isinstance(id_, str) or not 0 < len(id_) <= 64:
            raise ProtocolError("header type and id must be strings (id at most 64 characters)")
        if reply_to is not None and (not isinstance(reply_to, str) or len(reply_to) > 64):
            raise ProtocolError("header reply_to must be null or a string of at most 64 characters")
        if not isinstance(payload, dict):
            raise ProtocolError("header payload must be an object")
        if header["v"] != PROTOCOL_VERSION:
            raise VersionMismatch(header["v"], Message(type_, {}, id_, reply_to))
        if type_ not in MESSAGE_TYPES:
            raise ProtocolError(f"unknown message type {type_!r}")
        used: set[int] = set()
        try:
            payload = _unpack(payload, buffers, used)
        except RecursionError:
            raise ProtocolError("payload is nested too deeply") from None
        if len(used) != len(buffers):
            raise ProtocolError(f"{len(buffers) - len(used)} binary frames are not referenced by the payload")
        message = Message(type_, payload, id_, reply_to)
        _check_fields(message)
        return message

    def _remember(self, signature: bytes) -> None:
        if not self._reject_replays:
            return
        self._seen.add(signature)
        self._seen_order.append(signature)
        if len(self._seen_order) > REPLAY_HISTORY:
            self._seen.discard(self._seen_order.popleft())


def error_payload(kind: str, message: str, traceback_text: str = "") -> dict[str, str]:
    return {"kind": kind, "message": message, "traceback": traceback_text}
