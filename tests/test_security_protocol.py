"""Attacks on the encoding: malformed but signed messages, replays, reflections, lying versions.

Everything a peer can send must end in `ProtocolError` (never another exception, which would end a
read loop), and nothing signed may be taken twice, or by the wrong side.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from int8wb.engine.link import protocol
from int8wb.engine.link.protocol import CLIENT, ENGINE, Message, ProtocolError, VersionMismatch
from int8wb.engine.link.wire import Codec, sign

KEY = b"s" * 32
CLIENT_SESSION, ENGINE_SESSION = b"\x01" * 16, b"\x02" * 16


def engine_side() -> Codec:
    return Codec(KEY, ENGINE, ENGINE_SESSION)


def client_side() -> Codec:
    return Codec(KEY, CLIENT, CLIENT_SESSION)


def signed_request(payload, seq: int = 1, **header) -> list[bytes]:
    """A correctly signed scan request whose header and payload are whatever the test says."""
    fields = {
        "v": protocol.PROTOCOL_VERSION,
        "type": "scan",
        "id": "a" * 32,
        "reply_to": None,
        "from": CLIENT,
        "session": CLIENT_SESSION.hex(),
        "to": None,
        "seq": seq,
        "payload": payload,
        **header,
    }
    text = json.dumps(fields).encode()
    buffers = header.pop("_buffers", None) or []
    return [sign(KEY, [text, *buffers]), text, *buffers]


def array_reference(dtype, shape, index=0) -> dict:
    return {"__ndarray__": index, "dtype": dtype, "shape": shape}


@pytest.mark.parametrize(
    "reference, frame",
    [
        (array_reference("(,)i4", [1]), b"\0" * 4),  # numpy raises SyntaxError parsing it
        (array_reference("(2,)<i4", [1]), b"\0" * 8),  # a subarray dtype: not a plain kind
        (array_reference("<f4", [1] * 70), b"\0" * 4),  # more dimensions than numpy has
        (array_reference("<f4", [0, 2**70]), b""),  # no bytes, but a dimension numpy cannot hold
        (array_reference("<f4", [2**62, 2**62, 0]), b""),
        (array_reference("<f4", [-1]), b""),
        (array_reference("<f4", [1.5]), b"\0" * 4),
        (array_reference("<f4", "7"), b"\0" * 4),
        (array_reference("<f4", [True]), b"\0" * 4),
        (array_reference(["<f4"], [1]), b"\0" * 4),
        (array_reference("<f4" * 5, [1]), b"\0" * 4),
        (array_reference("<f4", [1], index=True), b"\0" * 4),
        (array_reference("<f4", [1], index=2**80), b"\0" * 4),
    ],
)
def test_malformed_array_references_are_protocol_errors(reference, frame):
    header = json.dumps(
        {
            "v": protocol.PROTOCOL_VERSION,
            "type": "scan",
            "id": "a" * 32,
            "reply_to": None,
            "from": CLIENT,
            "session": CLIENT_SESSION.hex(),
            "to": None,
            "seq": 1,
            "payload": {"x": reference},
        }
    ).encode()
    with pytest.raises(ProtocolError):
        engine_side().decode([sign(KEY, [header, frame]), header, frame])


def test_random_signed_headers_only_ever_raise_protocol_errors():
    """Mutate a valid request's JSON at random, sign it again: the decoder refuses or accepts, nothing else.

    It must do both: the valid request and some mutations (in the id's letters, say) are taken, so a
    decoder that refused everything would fail here too.
    """
    rng = np.random.default_rng(7)
    good = json.dumps(
        {
            "v": protocol.PROTOCOL_VERSION,
            "type": "scan",
            "id": "a" * 32,
            "reply_to": None,
            "from": CLIENT,
            "session": CLIENT_SESSION.hex(),
            "to": None,
            "seq": 1,
            "payload": {"tokens": 512, "x": array_reference("<f4", [2])},
        }
    ).encode()
    valid = engine_side().decode([sign(KEY, [good, b"\0" * 8]), good, b"\0" * 8])
    assert valid.type == "scan" and valid.payload["tokens"] == 512 and valid.payload["x"].shape == (2,)
    alphabet = b'{}[],:"0123456789-.eE+ ()<>|iufcbO\\/ntrlsa'
    accepted = refused = 0
    for _ in range(3000):
        text = bytearray(good)
        for _ in range(int(rng.integers(1, 6))):
            text[int(rng.integers(0, len(text)))] = alphabet[int(rng.integers(0, len(alphabet)))]
        frames = [bytes(text), b"\0" * 8]
        try:
            message = engine_side().decode([sign(KEY, frames), *frames])
        except ProtocolError:
            refused += 1
        else:
            assert isinstance(message, Message)
            accepted += 1
    assert accepted >= 30 and refused >= 30, f"{accepted} accepted, {refused} refused of 3000"


@pytest.mark.parametrize("version", [True, 1.0, "2", None, [2]])
def test_a_version_that_only_equals_the_current_one_is_refused(version):
    """`"v": true` == 1 in Python: the version must be the integer itself."""
    frames = signed_request({}, v=version)
    with pytest.raises(VersionMismatch):
        engine_side().decode(frames)


@pytest.mark.slow
def test_an_old_request_cannot_be_replayed_however_many_came_after():
    client, engine = client_side(), engine_side()
    first = client.encode(protocol.request("export", {"out": "/tmp/x", "overwrite": True}))
    assert engine.decode(first).type == "export"
    for _ in range(70_000):  # more than any history of signatures would keep
        engine.decode(client.encode(protocol.request("hello", {"protocol": protocol.PROTOCOL_VERSION})))
    with pytest.raises(ProtocolError, match="replayed"):
        engine.decode(first)


def test_messages_are_taken_in_counter_order_only():
    client, engine = client_side(), engine_side()
    earlier = client.encode(protocol.request("hello", {"protocol": 2}))
    later = client.encode(protocol.request("hello", {"protocol": 2}))
    engine.decode(later)
    with pytest.raises(ProtocolError, match="not newer"):
        engine.decode(earlier)


@pytest.mark.parametrize("seq", [0, -1, True, 1.5, "1", None])
def test_the_counter_must_be_a_positive_integer(seq):
    with pytest.raises(ProtocolError, match="seq"):
        engine_side().decode(signed_request({}, seq=seq))


def test_a_message_is_taken_only_by_the_side_and_session_it_was_sent_to():
    engine_codec = engine_side()
    event = engine_codec.encode(Message("log", {"message": "hi"}, reply_to="r"), to=CLIENT_SESSION.hex())
    with pytest.raises(ProtocolError, match="not for the engine"):
        engine_side().decode(event)  # an engine's event reflected back to an engine
    with pytest.raises(ProtocolError, match="addressed to session"):
        Codec(KEY, CLIENT, b"\x03" * 16).decode(event)  # an event for another client
    assert client_side().decode(event).payload == {"message": "hi"}
    with pytest.raises(ProtocolError, match="not for the engine"):
        engine_side().decode(signed_request({}, **{"from": ENGINE}))
    with pytest.raises(ProtocolError, match="addressed"):
        engine_side().decode(signed_request({}, to=ENGINE_SESSION.hex()))
    with pytest.raises(ProtocolError, match="does not send"):
        engine_codec.encode(protocol.request("shutdown"))


def test_a_client_takes_events_from_one_engine_session_only():
    client = client_side()
    first, second = engine_side(), Codec(KEY, ENGINE, b"\x04" * 16)
    client.decode(first.encode(Message("log", {"message": "a"}, reply_to="r"), to=CLIENT_SESSION.hex()))
    with pytest.raises(ProtocolError, match="not from the one connected"):
        client.decode(second.encode(Message("log", {"message": "b"}, reply_to="r"), to=CLIENT_SESSION.hex()))


def test_the_receiving_limits_hold_before_the_signature_is_checked():
    engine = Codec(KEY, ENGINE, ENGINE_SESSION, max_message_bytes=1 << 16, max_frames=protocol.MAX_REQUEST_FRAMES)
    many = [b"\0" * 32, b"{}", *([b"x"] * protocol.MAX_REQUEST_FRAMES)]
    with pytest.raises(ProtocolError, match="frames"):
        engine.decode(many)
    with pytest.raises(ProtocolError, match="exceeds"):
        engine.decode([b"\0" * 32, b"{}", b"x" * (1 << 16)])
