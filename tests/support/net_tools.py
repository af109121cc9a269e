"""Network helpers for attacking an engine (tests and bench/abuse.py).

`raw_zmtp_flood` speaks ZeroMQ's wire protocol (ZMTP 3.0) over a plain TCP
socket, so it can send what no well-behaved ZeroMQ socket would: one
multipart message that never ends. `CuttableProxy` relays TCP between a client
and an engine and can drop every connection on demand, as a network blip would
(`client_behind_proxy` connects a client through one; `proxy.down()` is the blip).
`no_network` shuts the network for work that must run offline.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from unittest import mock

from int8wb.engine.link.client import ConnectionInfo, EngineClient

ZMTP_GREETING_BYTES = 64


def _greeting(mechanism: bytes) -> bytes:
    return b"\xff" + b"\0" * 8 + b"\x7f" + bytes([3, 0]) + mechanism.ljust(20, b"\0") + b"\0" + b"\0" * 31


def _command(name: bytes, body: bytes) -> bytes:
    data = bytes([len(name)]) + name + body
    return (bytes([0x04, len(data)]) if len(data) < 256 else b"\x06" + struct.pack(">Q", len(data))) + data


def _property(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + struct.pack(">I", len(value)) + value


def raw_zmtp_flood(address: tuple[str, int], total_bytes: int, plain: tuple[bytes, bytes] | None = None) -> int:
    """Greet as a DEALER (NULL mechanism, or PLAIN with (username, password)), then send frames that all
    say "more follows" until `total_bytes` are sent or the peer hangs up; returns the bytes sent."""
    frame = b"\x01\xff" + b"x" * 255  # short frame, MORE flag set: the message never ends
    chunk = frame * 4096
    sent = 0
    with socket.create_connection(address, timeout=10) as connection:
        try:
            connection.sendall(_greeting(b"PLAIN" if plain else b"NULL"))
            connection.recv(ZMTP_GREETING_BYTES)
            if plain:
                username, password = plain
                hello = bytes([len(username)]) + username + bytes([len(password)]) + password
                connection.sendall(_command(b"HELLO", hello))
            else:
                connection.sendall(_command(b"READY", _property(b"Socket-Type", b"DEALER")))
            while sent < total_bytes:
                connection.sendall(chunk)
                sent += len(chunk)
        except OSError:  # the engine hung up: what a gate does
            pass
    return sent


def _zmtp_units(data: bytes) -> list[bytes]:
    """A recorded ZMTP stream cut into its greeting and its frames (commands and message frames)."""
    units, position = [data[:ZMTP_GREETING_BYTES]], ZMTP_GREETING_BYTES
    while position < len(data):
        flags = data[position]
        if flags & 0x02:  # long frame: 8-byte size
            size, header = struct.unpack(">Q", data[position + 1 : position + 9])[0], 9
        else:
            size, header = data[position + 1], 2
        units.append(data[position : position + header + size])
        position += header + size
    return units


def replay(address: tuple[str, int], data: bytes, listen_s: float = 0.5) -> None:
    """Play a recorded client connection again on a new one, step by step as its handshake wants:
    greeting, then each handshake command after the engine's answer to the one before, then the rest."""
    units = _zmtp_units(data)
    with socket.create_connection(address, timeout=5) as connection:
        try:
            connection.sendall(units[0])
            connection.recv(ZMTP_GREETING_BYTES)
            rest = 1
            while rest < len(units) and units[rest][0] & 0x04:  # a command: HELLO, INITIATE
                connection.sendall(units[rest])
                connection.recv(1 << 16)
                rest += 1
            connection.sendall(b"".join(units[rest:]))
            connection.settimeout(listen_s)
            while connection.recv(1 << 16):
                pass
        except OSError:
            pass


def host_port(address: str) -> tuple[str, int]:
    """("127.0.0.1", 5555) from an engine address "tcp://127.0.0.1:5555"."""
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    """Every socket connection in this process fails the test, naming where it went."""

    def refuse(_socket: socket.socket, address: object) -> None:
        raise AssertionError(f"tried to reach the network: {address}")

    with mock.patch.object(socket.socket, "connect", refuse):
        yield


@contextlib.contextmanager
def client_behind_proxy(
    info: ConnectionInfo, on_event: Callable, timeout_s: float = 30
) -> Iterator[tuple[EngineClient, CuttableProxy]]:
    """A client connected to the engine `info` names through a `CuttableProxy`; both are closed at the end."""
    proxy = CuttableProxy(host_port(info.address))
    client = EngineClient(on_event=on_event)
    try:
        client.connect(ConnectionInfo(proxy.address, info.key), timeout_s=timeout_s)
        yield client, proxy
    finally:
        client.close()
        proxy.close()


class CuttableProxy:
    """Relays TCP from a loopback port to `target`; `cut()` drops every connection and refuses new ones
    until `restore()`. With `record`, what clients sent is kept, per connection, in `recorded`."""

    def __init__(self, target: tuple[str, int], record: bool = False) -> None:
        self._target = target
        self._record = record
        self.recorded: list[bytearray] = []
        self._recording: dict[socket.socket, bytearray] = {}
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._up, self._stopped = True, False
        self._thread = threading.Thread(target=self._run, name="cuttable-proxy", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def cut(self) -> None:
        with self._lock:
            self._up = False
            for sock in list(self._pairs):
                self._drop(sock)

    def restore(self) -> None:
        with self._lock:
            self._up = True

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The network is cut for the body of the `with`, and restored after it (also when it raises)."""
        self.cut()
        try:
            yield
        finally:
            self.restore()

    def close(self) -> None:
        self.cut()
        self._stopped = True
        self._thread.join(5)
        self._listener.close()

    def _run(self) -> None:
        while not self._stopped:
            for key, _ in self._selector.select(0.05):
                with self._lock:
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj in self._pairs:
                        self._relay(key.fileobj)

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        if not self._up:
            client.close()
            return
        try:
            upstream = socket.create_connection(self._target, timeout=5)
        except OSError:
            client.close()
            return
        self._pairs[client], self._pairs[upstream] = upstream, client
        if self._record:
            self._recording[client] = bytearray()
            self.recorded.append(self._recording[client])
        for sock in (client, upstream):
            self._selector.register(sock, selectors.EVENT_READ, None)

    def _relay(self, source: socket.socket) -> None:
        try:
            data = source.recv(1 << 16)
            if data:
                if source in self._recording:
                    self._recording[source] += data
                self._pairs[source].sendall(data)
                return
        except OSError:
            pass
        self._drop(source)

    def _drop(self, sock: socket.socket) -> None:
        other = self._pairs.pop(sock, None)
        for end in (sock, other):
            if end is None:
                continue
            self._pairs.pop(end, None)
            self._recording.pop(end, None)
            try:
                self._selector.unregister(end)
            except (KeyError, ValueError):
                pass
            end.close()
