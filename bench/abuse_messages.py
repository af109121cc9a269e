"""What bench/abuse.py sends: a peer that holds the key, and requests malformed on purpose.

Every message made here must be refused by the engine (or, for the job requests with a wrong
parameter, answered with an error that names the input): the bench counts any other outcome as a
message wrongly accepted.
"""

from __future__ import annotations

import json
import time

import numpy as np
import zmq

from int8wb.engine.link import protocol, transport
from int8wb.engine.link.client import ConnectionInfo
from int8wb.engine.link.protocol import CLIENT, ENGINE
from int8wb.engine.link.wire import Codec, sign


class KeyHolder:
    """A peer that passes the handshake and signs as a client: what a key holder (or a bug) can send."""

    def __init__(self, info: ConnectionInfo) -> None:
        self.key = info.key
        self.session = protocol.new_session()
        self.seq = 0
        self.context = zmq.Context()
        self.socket = transport.client_socket(self.context, self.key, self.session, info.address)
        self.replies = Codec(self.key, CLIENT, self.session)

    def send_raw(self, frames: list[bytes]) -> None:
        self.socket.send_multipart(frames)

    def signed(self, header: dict, buffers: list[bytes] = ()) -> list[bytes]:
        """A correctly signed message: header fields over a valid stamp with this peer's next counter."""
        self.seq += 1
        stamp = {"v": protocol.PROTOCOL_VERSION, "type": "hello", "id": protocol.new_id(), "reply_to": None}
        stamp.update({"from": CLIENT, "session": self.session.hex(), "to": None, "seq": self.seq, "payload": {}})
        text = json.dumps({**stamp, **header}).encode()
        return [sign(self.key, [text, *buffers]), text, *buffers]

    def request(self, request_type: str, payload: dict, timeout_s: float = 120) -> protocol.Message | None:
        """Send a well-formed request (whatever its parameters) and wait for its final event."""
        request_id = protocol.new_id()
        self.send_raw(self.signed({"type": request_type, "id": request_id, "payload": payload}))
        deadline = time.monotonic() + timeout_s
        while self.socket.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            reply = self.replies.decode(self.socket.recv_multipart())
            if reply.reply_to == request_id and reply.type in ("result", "error"):
                return reply
        return None

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


BAD_DTYPES = ["(,)i4", "(2,)<i4", "|O", "O", "<U4", "V8", "<M8[s]", "<f4<f4", "", "f", "<f16", "a", "S3", ">x4", 7]
BAD_SHAPES = [[-1], [1.5], [True], [0, 2**70], [2**62, 2**62, 0], "7", None, [[1]], {"n": 1}]
BAD_INDICES = [-1, 1, 5, True, 2**80, "0", None, 0.0]


def malformed_array(rng: np.random.Generator) -> tuple[dict, list[bytes]]:
    """A payload whose one array reference is wrong in a way chosen at random."""
    reference, frames = {"__ndarray__": 0, "dtype": "<f4", "shape": [2]}, [bytes(8)]
    flaw = int(rng.integers(0, 7))
    if flaw == 0:
        reference["dtype"] = BAD_DTYPES[int(rng.integers(0, len(BAD_DTYPES)))]
    elif flaw == 1:
        reference["shape"] = BAD_SHAPES[int(rng.integers(0, len(BAD_SHAPES)))]
    elif flaw == 2:
        reference["shape"] = [1] * int(rng.integers(protocol.MAX_NDIM + 1, 80))
        frames = [bytes(4)]
    elif flaw == 3:
        reference["__ndarray__"] = BAD_INDICES[int(rng.integers(0, len(BAD_INDICES)))]
    elif flaw == 4:
        frames = [bytes(int(rng.choice([0, 4, 7, 9, 16])))]
    elif flaw == 5:
        frames = frames + [bytes(4)]  # a frame nobody references
    else:
        reference["extra"] = 1
    return {"x": reference, "y": [1, {"z": reference}] if flaw == 6 else 0}, frames


def malformed_envelope(rng: np.random.Generator) -> dict:
    """Header fields of a request, one of them wrong."""
    choices = [
        {"v": True},
        {"v": 1},
        {"v": 3},
        {"v": "2"},
        {"v": 2.0},
        {"type": "launch_missiles"},
        {"type": 5},
        {"type": "progress", "payload": {"fraction": 0.5, "message": ""}},
        {"id": 5},
        {"id": ""},
        {"id": "a" * 65},
        {"reply_to": 5},
        {"reply_to": "a" * 65},
        {"payload": []},
        {"payload": "x"},
        {"from": ENGINE},
        {"from": None},
        {"session": 5},
        {"session": "a" * 65},
        {"to": "00" * 16},
        {"seq": 0},
        {"seq": -1},
        {"seq": True},
        {"seq": 1.5},
        {"seq": "9"},
        {"seq": None},
        {"type": "hello", "payload": {"protocol": "2"}},
        {"type": "hello", "payload": {"protocol": True}},
        {"type": "hello", "payload": {}},
        {"type": "job_state", "payload": {"job": 5}},
        {"type": "job_state", "payload": {}},
    ]
    return choices[int(rng.integers(0, len(choices)))]


NAN, INF = float("nan"), float("inf")
BAD_PARAMETERS = {
    "scan": {
        "tokens": ["x", -5, 0, True, 1.5, [1]],
        "threshold": [NAN, -1.0, "6", 0, INF],
        "seq_len": [1, -3, "512", 10**9],
        "batch_size": [0, "8", -1],
        "corpus": ["/no/such/corpus.txt", 5, ["a"]],
    },
    "quantize": {"methods": [["int4"], 5, [], "nope", [None]], "threshold": [NAN, -1]},
    "evaluate": {"tokens": ["x", -1], "window": [1, -5, "512", 10**9], "batch_size": [0, "4"], "methods": [["x"], 7]},
    "export": {"method": ["int4", 5, None], "out": [5, None, ""], "max_shard_size": ["lots", -1, True]},
    "plan_memory": {"preset": ["no-such-model", 7], "config": ["/no/such/config.json", 5]},
    "load_model": {"model": [[1, 2], 5.5], "device": ["banana", "cuda:99", 7], "dtype": ["float8", 5]},
}
