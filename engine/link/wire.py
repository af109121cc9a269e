"""Messages to signed frames and back: the encoding `engine.link.protocol` describes.

Sending is two steps, so that the costly part can run on any thread while the
counter that orders a session's messages is taken by the one thread that
sends: `prepare` checks a message and packs its payload (JSON text and array
buffers); `seal` stamps it (direction, session, counter) and signs it. Frames
leave in the order they were sealed, which is the order of their counters.

`decode` is the receiving side. It checks the size and the signature before it
parses a single byte, so unauthenticated peers never reach the JSON parser,
then the envelope, the stamp (nothing not newer than the last accepted message
of its session is taken) and every array reference. Whatever it will not
accept, for whatever reason, is a `ProtocolError`: no input makes it raise
anything else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import pathlib
import threading
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from int8wb.engine.link.protocol import (
    ALLOWED_DTYPE_KINDS,
    ARRAY_KEY,
    CLIENT,
    ENGINE,
    EVENT_TYPES,
    MAX_EVENT_BYTES,
    MAX_EVENT_FRAMES,
    MAX_NDIM,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    SIGNATURE_BYTES,
    Message,
    ProtocolError,
    VersionMismatch,
    check_fields,
)

MAX_ID_CHARS = 64
MAX_DIMENSION = 2**62


def sign(key: bytes, frames: Iterable[bytes | memoryview]) -> bytes:
    """HMAC-SHA256 over length-prefixed frames (see engine.link.protocol)."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for frame in frames:
        view = memoryview(frame)
        mac.update(view.nbytes.to_bytes(8, "little"))
        mac.update(view)
    return mac.digest()


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A checked message with its payload packed, ready to be sealed."""

    type: str
    id: str
    reply_to: str | None
    payload_json: str
    buffers: tuple[memoryview, ...]


class Codec:
    """Turns `Message`s into signed frames and back, for one side (`role`) of one session key.

    `session` is this side's session id (bytes); `max_message_bytes` and
    `max_frames` bound what `decode` accepts.
    """

    def __init__(
        self,
        key: bytes,
        role: str,
        session: bytes,
        max_message_bytes: int = MAX_EVENT_BYTES,
        max_frames: int = MAX_EVENT_FRAMES,
    ) -> None:
        if not isinstance(key, bytes) or len(key) < 16:
            raise ProtocolError("the session key must be at least 16 bytes")
        if role not in (CLIENT, ENGINE):
            raise ProtocolError(f"role must be {CLIENT!r} or {ENGINE!r}, got {role!r}")
        self._key, self.role, self.session = key, role, session.hex()
        self.max_message_bytes, self.max_frames = max_message_bytes, max_frames
        self._sent = 0
        self._sent_lock = threading.Lock()
        self._last_seen: dict[str, int] = {}  # peer session -> highest counter accepted

    # --- sending ------------------------------------------------------------------

    def prepare(self, message: Message) -> Prepared:
        """Check `message` and pack its payload; `ProtocolError` for what cannot be sent."""
        if message.type not in MESSAGE_TYPES:
            raise ProtocolError(f"unknown message type {message.type!r}")
        if (message.type in REQUEST_TYPES) != (self.role == CLIENT):
            raise ProtocolError(f"the {self.role} does not send {message.type} messages")
        check_fields(message)
        buffers: list[memoryview] = []
        payload = _pack(message.payload, buffers, "payload")
        payload_json = json.dumps(payload, separators=(",", ":"))
        return Prepared(message.type, message.id, message.reply_to, payload_json, tuple(buffers))

    def seal(self, prepared: Prepared, to: str | None = None) -> list[bytes | memoryview]:
        """Frames to send, [signature, header, *buffers], stamped with this side's next counter.

        `to` is the client session an event is for (None for requests).
        """
        with self._sent_lock:
            self._sent += 1
            seq = self._sent
        stamp = {
            "v": PROTOCOL_VERSION,
            "type": prepared.type,
            "id": prepared.id,
            "reply_to": prepared.reply_to,
            "from": self.role,
            "session": self.session,
            "to": to,
            "seq": seq,
        }
        header = (json.dumps(stamp, separators=(",", ":"))[:-1] + ',"payload":' + prepared.payload_json + "}").encode()
        frames: list[bytes | memoryview] = [header, *prepared.buffers]
        return [sign(self._key, frames), *frames]

    def encode(self, message: Message, to: str | None = None) -> list[bytes | memoryview]:
        """`prepare` and `seal` in one step (for a side that sends from one thread)."""
        return self.seal(self.prepare(message), to)

    # --- receiving ----------------------------------------------------------------

    def decode(self, frames: Sequence[bytes | memoryview]) -> Message:
        """The message in `frames` (as `seal` made them), or `ProtocolError`."""
        try:
            return self._decode(frames)
        except ProtocolError:
            raise
        except Exception as exc:  # noqa: BLE001 - nothing a peer sends may end a read loop
            raise ProtocolError(f"undecodable message ({type(exc).__name__}: {exc})") from None

    def _decode(self, frames: Sequence[bytes | memoryview]) -> Message:
        if not 2 <= len(frames) <= self.max_frames:
            raise ProtocolError(f"a message has 2..{self.max_frames} frames, got {len(frames)}")
        views = [memoryview(frame).cast("B") for frame in frames]
        size = sum(view.nbytes for view in views)
        if size > self.max_message_bytes:
            raise ProtocolError(f"message of {size} bytes exceeds the limit of {self.max_message_bytes}")
        signature = bytes(views[0])
        if len(signature) != SIGNATURE_BYTES or not hmac.compare_digest(signature, sign(self._key, views[1:])):
            raise ProtocolError("bad or missing signature")
        try:
            header = json.loads(bytes(views[1]).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ProtocolError(f"header is not UTF-8 JSON: {exc}") from None
        message, sender, seq = self._message_from_header(header, views[2:])
        self._last_seen[sender] = seq
        return message

    def _message_from_header(self, header: Any, buffers: Sequence[memoryview]) -> tuple[Message, str, int]:
        if not isinstance(header, dict) or not {"v", "type", "id", "payload"} <= set(header):
            raise ProtocolError("header must be an object with v, type, id, reply_to, from, session, to, seq, payload")
        type_, id_, reply_to, payload = header["type"], header["id"], header.get("reply_to"), header["payload"]
        if not _is_id(id_) or not isinstance(type_, str):
            raise ProtocolError(f"header type and id must be strings (id at most {MAX_ID_CHARS} characters)")
        if reply_to is not None and not _is_id(reply_to):
            raise ProtocolError(f"header reply_to must be null or a string of at most {MAX_ID_CHARS} characters")
        if not isinstance(payload, dict):
            raise ProtocolError("header payload must be an object")
        version = header["v"]
        if not isinstance(version, int) or isinstance(version, bool) or version != PROTOCOL_VERSION:
            raise VersionMismatch(version, Message(type_, {}, id_, reply_to))
        if type_ not in MESSAGE_TYPES:
            raise ProtocolError(f"unknown message type {type_!r}")
        sender, seq = self._check_stamp(header, type_)
        used: set[int] = set()
        payload = _unpack(payload, buffers, used)
        if len(used) != len(buffers):
            raise ProtocolError(f"{len(buffers) - len(used)} binary frames are not referenced by the payload")
        message = Message(type_, payload, id_, reply_to, sender)
        check_fields(message)
        return message, sender, seq

    def _check_stamp(self, header: dict, type_: str) -> tuple[str, int]:
        """(sender session, counter) of a message this side may take; `ProtocolError` for a replay or a reflection."""
        origin, sender, to, seq = header.get("from"), header.get("session"), header.get("to"), header.get("seq")
        expected = ENGINE if self.role == CLIENT else CLIENT
        if origin != expected or (type_ in EVENT_TYPES) != (expected == ENGINE):
            raise ProtocolError(f"a {type_} message from {origin!r} is not for the {self.role}")
        if not _is_id(sender):
            raise ProtocolError("header session must be a string of at most 64 characters")
        if to != (self.session if self.role == CLIENT else None):
            raise ProtocolError(f"the message is addressed to session {to!r}, not to this one")
        if self.role == CLIENT and self._last_seen and sender not in self._last_seen:
            raise ProtocolError(f"the message comes from engine session {sender}, not from the one connected")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise ProtocolError(f"header seq must be a positive integer, got {seq!r}")
        if seq <= self._last_seen.get(sender, 0):
            raise ProtocolError(f"replayed or reordered message: seq {seq} of session {sender} is not newer")
        return sender, seq


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS


# --- payload <-> JSON + buffers --------------------------------------------------


def _pack(value: Any, buffers: list[memoryview], path: str) -> Any:
    """Copy of `value` with arrays replaced by references to their frames; arrays appended to `buffers`."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in ALLOWED_DTYPE_KINDS or value.ndim > MAX_NDIM:
            raise ProtocolError(f"{path}: arrays of dtype {value.dtype} and {value.ndim} dimensions cannot be sent")
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
    if not _is_shape(shape):
        raise ProtocolError(f"array shape {shape!r} is not a list of at most {MAX_NDIM} non-negative integers")
    dtype = _dtype(dtype_str)
    frame = frames[index]
    needed = math.prod(shape) * dtype.itemsize
    if needed != frame.nbytes or math.prod(shape) >= MAX_DIMENSION:
        raise ProtocolError(
            f"array frame {index} has {frame.nbytes} bytes, shape {shape} of {dtype_str} needs {needed}"
        )
    used.add(index)
    return np.frombuffer(frame, dtype=dtype).reshape(shape)


def _is_shape(shape: Any) -> bool:
    return (
        isinstance(shape, list)
        and len(shape) <= MAX_NDIM
        and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < MAX_DIMENSION for n in shape)
    )


def _dtype(text: Any) -> np.dtype:
    """The numpy dtype `text` names, if it is one of the plain kinds the protocol carries."""
    try:
        with warnings.catch_warnings():  # numpy warns about old aliases ("a") before they are refused here
            warnings.simplefilter("ignore")
            dtype = np.dtype(text) if isinstance(text, str) and len(text) <= 8 else None
    except (TypeError, ValueError, SyntaxError):  # numpy parses dtype strings, and reports them all three ways
        dtype = None
    if dtype is None or dtype.kind not in ALLOWED_DTYPE_KINDS or dtype.str != text or dtype.shape:
        raise ProtocolError(f"array dtype {text!r} is not allowed")
    return dtype
