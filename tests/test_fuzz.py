"""Thousands of random and mutated frames against a live engine: it drops them all and still answers.

The attacker holds the key for the handshake (engine.link.transport), so its frames reach the decoder:
the gate in front of it is tested in tests/test_security_engine.py.
"""

from __future__ import annotations

import time

import numpy as np
import zmq

from int8wb.engine.link import protocol, transport
from int8wb.engine.link.client import EngineClient, EngineState
from int8wb.engine.link.wire import Codec


def test_engine_survives_random_and_mutated_frames():
    client = EngineClient()
    client.start_local(timeout_s=60)
    try:
        session = protocol.new_session()
        unsigned = Codec(b"\0" * 32, protocol.CLIENT, session).encode(protocol.request("hello", {"protocol": 2}))
        valid = [bytes(f) for f in unsigned]
        valid_hello = Codec(_key(client), protocol.CLIENT, session).encode(protocol.request("shutdown"))
        rng = np.random.default_rng(1234)
        context = zmq.Context()
        attacker = transport.client_socket(context, _key(client), session, client.connection_info.address)
        attacker.setsockopt(zmq.LINGER, 0)
        sent = 0
        for i in range(3000):
            attacker.send_multipart(_mutant(rng, valid, [bytes(f) for f in valid_hello], i))
            sent += 1
        # Every mutant of the signed shutdown was refused, or the engine would be gone by now.
        # The attacker's connection and ours are not ordered: ask until all of its frames were seen.
        deadline = time.monotonic() + 60
        while True:
            info = client.call("hello", {"protocol": protocol.PROTOCOL_VERSION}, timeout_s=30)
            if info["stats"]["rejected"] >= sent or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        attacker.close()
        context.term()
        assert client.state is EngineState.READY
        assert info["stats"]["rejected"] == sent
        assert info["stats"]["jobs"] == 0
        assert client.call("hello", {"protocol": protocol.PROTOCOL_VERSION}, timeout_s=30)["pid"] == client.pid
    finally:
        client.close()


def _key(client: EngineClient) -> bytes:
    return client.connection_info.key


def _mutant(rng: np.random.Generator, unsigned: list[bytes], signed_shutdown: list[bytes], i: int) -> list[bytes]:
    """Random frames, or a real message with bytes flipped, frames dropped, duplicated or truncated."""
    choice = i % 6
    if choice == 0:
        return [rng.bytes(int(rng.integers(0, 200))) for _ in range(int(rng.integers(1, 6)))]
    frames = list(signed_shutdown if choice in (1, 2) else unsigned)
    if choice == 1:  # one flipped bit in a correctly signed shutdown
        index = int(rng.integers(0, len(frames)))
        frame = bytearray(frames[index])
        if frame:
            frame[int(rng.integers(0, len(frame)))] ^= 1 << int(rng.integers(0, 8))
        frames[index] = bytes(frame)
    elif choice == 2:  # truncated or extended
        frames[1] = frames[1][: int(rng.integers(0, len(frames[1])))] if i % 4 else frames[1] + b" "
    elif choice == 3:
        frames = frames[::-1]
    elif choice == 4:
        frames = frames + [rng.bytes(16)]
    else:
        frames = [b"", *frames]
    return frames
