"""The protocol between two in-memory endpoints (ZeroMQ inproc sockets, no second process)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zmq

from int8wb.engine.link import protocol
from int8wb.engine.link.protocol import CLIENT, ENGINE, Message, ProtocolError, VersionMismatch
from int8wb.engine.link.wire import Codec, sign

KEY = b"k" * 32
CLIENT_SESSION, ENGINE_SESSION = b"\x01" * 16, b"\x02" * 16


def sender(message_type: str, key: bytes = KEY) -> Codec:
    """The side that sends `message_type`: a client for requests, the engine for events."""
    if message_type in protocol.REQUEST_TYPES:
        return Codec(key, CLIENT, CLIENT_SESSION)
    return Codec(key, ENGINE, ENGINE_SESSION)


def receiver(message_type: str, **limits) -> Codec:
    if message_type in protocol.REQUEST_TYPES:
        return Codec(KEY, ENGINE, ENGINE_SESSION, **limits)
    return Codec(KEY, CLIENT, CLIENT_SESSION, **limits)


def encode(message: Message, key: bytes = KEY) -> list:
    to = None if message.type in protocol.REQUEST_TYPES else CLIENT_SESSION.hex()
    return sender(message.type, key).encode(message, to)


def stamped(header: dict) -> bytes:
    """A request header with a valid stamp, the rest as given."""
    stamp = {"v": protocol.PROTOCOL_VERSION, "from": CLIENT, "session": CLIENT_SESSION.hex(), "to": None, "seq": 1}
    return json.dumps({**stamp, **header}).encode()


@pytest.fixture
def endpoints():
    """(send, receive): frames sent on one inproc PAIR socket arrive on the other as a list of bytes."""
    context = zmq.Context()
    left, right = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    left.bind("inproc://protocol-test")
    right.connect("inproc://protocol-test")

    def send(frames):
        left.send_multipart(frames, copy=False)

    def receive():
        assert right.poll(2000), "nothing arrived"
        return right.recv_multipart()

    yield send, receive
    left.close(0)
    right.close(0)
    context.term()


def sample_payload(message_type: str) -> dict:
    layer = {
        "index": 3,
        "names": ["model.layers.0.mlp.down_proj"],
        "layer": 0,
        "kind": "down_proj",
        "absmax": np.linspace(0, 7, 1536, dtype=np.float32),
        "count_over": np.arange(1536, dtype=np.int64),
        "hist": np.ones(90, dtype=np.int64),
        "n_tokens": 512,
        "final": True,
    }
    return {
        "hello": {"protocol": protocol.PROTOCOL_VERSION, "client": "test"},
        "load_model": {"path": None, "device": "cpu"},
        "scan": {"tokens": 512, "threshold": 6.0},
        "quantize": {"methods": ["llm-int8"], "threshold": 6.0},
        "evaluate": {"tokens": 1024, "methods": ["vectorwise", "absmax-tensor"]},
        "task_accuracy": {"tasks": ["piqa", "/data/smoke.yaml"], "limit": 40, "methods": ["llm-int8"]},
        "bench_decode": {"new_tokens": 32, "repeats": 3, "methods": ["absmax-tensor", "llm-int8"]},
        "plan_memory": {"layers": 80, "hidden": 8192},
        "export": {"path": "/tmp/out", "method": "llm-int8"},
        "sensitivity": {"method": "vectorwise", "target": 0.01},
        "super_weights": {"candidates": 3, "tokens": 2048},
        "cancel": {"target": None},
        "job_state": {"job": "0" * 32},
        "shutdown": {},
        "progress": {"fraction": 0.25, "message": "layer 3 of 30"},
        "scan_layer": layer,
        "log": {"message": "loaded", "level": "info"},
        "result": {"request": "scan", "result": {"layers": [layer, layer], "report": {"q": [1, 2]}}},
        "error": protocol.error_payload("bad_input", "tokens must be positive", "Traceback ..."),
    }[message_type]


def assert_same(a, b):
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        assert np.ascontiguousarray(a).tobytes() == b.tobytes()
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("message_type", protocol.MESSAGE_TYPES)
def test_every_message_type_round_trips(endpoints, message_type):
    send, receive = endpoints
    sent = Message(
        message_type,
        sample_payload(message_type),
        reply_to=None if message_type in protocol.REQUEST_TYPES else protocol.new_id(),
    )
    send(encode(sent))
    got = receiver(message_type).decode(receive())
    assert (got.type, got.id, got.reply_to) == (sent.type, sent.id, sent.reply_to)
    assert_same(sent.payload, got.payload)


def test_arrays_are_bit_exact(endpoints):
    send, receive = endpoints
    weird = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45, 3.4028235e38], dtype=np.float32)
    weird.view(np.uint32)[0] = 0x7FC0_1234  # a NaN with a payload
    arrays = {
        "weird_f4": weird,
        "f2": np.array([65504, -1e-7, 0.333], dtype=np.float16),
        "i8": np.array([np.iinfo(np.int64).min, -1, np.iinfo(np.int64).max]),
        "u1": np.arange(256, dtype=np.uint8),
        "big_endian": np.arange(6, dtype=">f8").reshape(2, 3),
        "c8": np.array([1 + 2j, -3.5j], dtype=np.complex64),
        "bools": np.array([True, False, True]),
        "scalar": np.array(7, dtype=np.int32),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "transposed": np.arange(12, dtype=np.int16).reshape(3, 4).T,
        "nested": [{"deep": [np.full((2, 2), 5, np.int8)]}],
    }
    send(encode(Message("result", {"request": "scan", "result": arrays}, reply_to="r")))
    got = receiver("result").decode(receive()).payload["result"]
    assert_same(arrays, got)
    assert got["weird_f4"].view(np.uint32)[0] == 0x7FC0_1234
    assert got["transposed"].shape == (4, 3) and got["transposed"][1, 0] == 1


def test_arrays_travel_as_frames_not_json():
    frames = encode(Message("scan_layer", sample_payload("scan_layer")))
    header = json.loads(bytes(frames[1]))
    assert header["payload"]["absmax"] == {"__ndarray__": 0, "dtype": "<f4", "shape": [1536]}
    assert len(frames) == 2 + 3 and memoryview(frames[2]).nbytes == 1536 * 4


def test_wrong_key_is_rejected(endpoints):
    send, receive = endpoints
    send(encode(protocol.request("shutdown"), key=b"x" * 32))
    with pytest.raises(ProtocolError, match="signature"):
        receiver("shutdown").decode(receive())


@pytest.mark.parametrize("frame", [0, 1, 2])
def test_tampered_frame_is_rejected(endpoints, frame):
    send, receive = endpoints
    frames = [bytearray(bytes(f)) for f in encode(Message("scan_layer", sample_payload("scan_layer")))]
    frames[frame][len(frames[frame]) // 2] ^= 0x01
    send(frames)
    with pytest.raises(ProtocolError, match="signature"):
        receiver("scan_layer").decode(receive())


def test_moved_or_dropped_frames_are_rejected():
    frames = [bytes(f) for f in encode(Message("scan_layer", sample_payload("scan_layer")))]
    swapped = frames[:2] + [frames[3], frames[2], frames[4]]
    shifted = frames[:2] + [frames[2] + frames[3][:4], frames[3][4:], frames[4]]
    for bad in (swapped, shifted, frames[:-1], frames + [b""], frames[1:]):
        with pytest.raises(ProtocolError):
            receiver("scan_layer").decode(bad)


def test_wrong_version_is_rejected_with_the_peer_version(endpoints):
    send, receive = endpoints
    header = json.dumps({"v": 99, "type": "scan", "id": "abc", "reply_to": None, "payload": {}}).encode()
    send([sign(KEY, [header]), header])
    with pytest.raises(VersionMismatch) as info:
        receiver("scan").decode(receive())
    assert info.value.peer_version == 99 and info.value.message.id == "abc"


def test_garbage_is_rejected(endpoints):
    send, receive = endpoints
    rng = np.random.default_rng(0)
    codec = receiver("scan")
    for _ in range(200):
        frames = [rng.bytes(int(rng.integers(0, 64))) for _ in range(int(rng.integers(1, 5)))]
        send(frames)
        with pytest.raises(ProtocolError):
            codec.decode(receive())


@pytest.mark.parametrize(
    "header",
    [
        b"\xff\xfe not utf-8",
        b"not json",
        b"[1, 2]",
        b'{"v": 2}',
        b"[" * 100000,
        stamped({"type": "launch_missiles", "id": "a", "payload": {}}),
        stamped({"type": "scan", "id": "a", "payload": []}),
        stamped({"type": "hello", "id": "a", "payload": {"protocol": True}}),
        stamped({"type": "scan", "id": "a", "payload": {"x": {"__ndarray__": 0, "dtype": "|O", "shape": [1]}}}),
        stamped({"type": "scan", "id": "a", "payload": {"x": {"__ndarray__": 3, "dtype": "<f4", "shape": [1]}}}),
    ],
)
def test_signed_but_malformed_headers_are_rejected(header):
    with pytest.raises(ProtocolError):
        receiver("scan").decode([sign(KEY, [header]), header])


@pytest.mark.parametrize(
    "payload",
    [
        {"fraction": 2.0, "message": ""},
        {"fraction": float("nan"), "message": ""},
        {"fraction": 0.5},
    ],
)
def test_signed_but_malformed_progress_is_rejected(payload):
    header = json.dumps(
        {
            "v": protocol.PROTOCOL_VERSION,
            "type": "progress",
            "id": "a",
            "reply_to": "b",
            "from": ENGINE,
            "session": ENGINE_SESSION.hex(),
            "to": CLIENT_SESSION.hex(),
            "seq": 1,
            "payload": payload,
        }
    ).encode()
    with pytest.raises(ProtocolError):
        receiver("progress").decode([sign(KEY, [header]), header])


def test_array_frame_must_match_its_shape_and_be_referenced():
    header = stamped({"type": "scan", "id": "a", "payload": {"x": {"__ndarray__": 0, "dtype": "<f4", "shape": [3]}}})
    with pytest.raises(ProtocolError, match="bytes"):
        receiver("scan").decode([sign(KEY, [header, b"12345678"]), header, b"12345678"])
    unreferenced = stamped({"type": "scan", "id": "a", "payload": {}})
    with pytest.raises(ProtocolError, match="not referenced"):
        receiver("scan").decode([sign(KEY, [unreferenced, b"x"]), unreferenced, b"x"])


def test_oversize_message_is_rejected(endpoints):
    send, receive = endpoints
    big = Message("scan", {"blob": np.zeros(1 << 20, dtype=np.uint8)})
    send(encode(big))
    with pytest.raises(ProtocolError, match="exceeds"):
        receiver("scan", max_message_bytes=1 << 19).decode(receive())


def test_replayed_message_is_rejected():
    frames = encode(protocol.request("shutdown"))
    engine_side = receiver("shutdown")
    assert engine_side.decode(frames).type == "shutdown"
    with pytest.raises(ProtocolError, match="replay"):
        engine_side.decode(frames)


@pytest.mark.parametrize(
    "payload, match",
    [
        ({"x": np.array([object()])}, "dtype"),
        ({"x": {1: 2}}, "strings"),
        ({"x": {1, 2}}, "set"),
        ({"__ndarray__": 0}, "reserved"),
    ],
)
def test_unsendable_payloads_fail_on_encode(payload, match):
    with pytest.raises(ProtocolError, match=match):
        sender("scan").encode(Message("scan", payload))


def test_numpy_scalars_and_paths_become_json():
    from pathlib import Path

    frames = encode(Message("scan", {"n": np.int64(3), "x": np.float32(0.5), "p": Path("/a/b")}))
    assert receiver("scan").decode(frames).payload == {"n": 3, "x": 0.5, "p": "/a/b"}


def test_unknown_types_and_short_keys_are_refused():
    with pytest.raises(ProtocolError):
        protocol.request("format_disk")
    with pytest.raises(ProtocolError):
        protocol.event("scan", None, {})
    with pytest.raises(ProtocolError):
        Codec(b"short", CLIENT, CLIENT_SESSION)
    assert len(protocol.new_key()) == 32 and protocol.new_key() != protocol.new_key()
