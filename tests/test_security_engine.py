"""A real engine process under attack, and clients whose network fails them.

The engines here run `tests.support.engine_sessions:SleepySession`: jobs that take as long as asked, so that
what is tested is the process and the wire (the handshake gate, the limits, the I/O loops, routing
after a reconnect), not a model.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from int8wb.engine.cli.engine_command import write_connection_file
from int8wb.engine.link import connection, protocol, transport
from int8wb.engine.link.client import ConnectionInfo, EngineClient
from int8wb.engine.link.protocol import CLIENT
from int8wb.engine.link.wire import sign
from int8wb.engine.process.server import EngineServer, load_session_factory
from tests.support.net_tools import CuttableProxy, client_behind_proxy, host_port, raw_zmtp_flood, replay

REPO = Path(__file__).resolve().parent.parent
SLEEPY = "tests.support.engine_sessions:SleepySession"


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def remote_engine(tmp_path):
    """(process, ConnectionInfo) of `int8wb engine --listen tcp://127.0.0.1:0` serving SleepySession."""
    connection_file = tmp_path / "engine.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "int8wb.engine",
            "--listen",
            "tcp://127.0.0.1:0",
            "--connection-file",
            str(connection_file),
        ]
        + ["--session", SLEEPY],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not connection_file.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield process, ConnectionInfo.from_file(connection_file)
    finally:
        process.kill()
        process.wait()
        process.stderr.close()


def hello(info: ConnectionInfo) -> dict:
    with EngineClient() as client:
        client.connect(info, timeout_s=30)
        return client.call("hello", {"protocol": protocol.PROTOCOL_VERSION}, timeout_s=30)


# --- finding 1: nothing without the key is read, so nothing is buffered ---------------------------


def test_outsiders_cannot_make_the_engine_buffer_anything(remote_engine):
    process, info = remote_engine
    hello(info)  # the engine is up and has answered once
    before = rss_bytes(process.pid)
    address = host_port(info.address)
    raw_zmtp_flood(address, 64 * 2**20)  # one multipart message that never ends
    raw_zmtp_flood(address, 64 * 2**20, plain=(b"0" * 32, b"not the password"))
    context = zmq.Context()
    keyless = context.socket(zmq.DEALER)  # a well-behaved socket that does not know the key
    keyless.setsockopt(zmq.LINGER, 0)
    keyless.connect(info.address)
    keyless.send_multipart([b"x" * 900] * 200)
    time.sleep(1.0)
    growth = rss_bytes(process.pid) - before
    keyless.close()
    context.term()
    assert growth < 24 * 2**20, f"the engine grew by {growth / 2**20:.0f} MiB for peers without the key"
    stats = hello(info)["stats"]
    # Two clients of this test, each a handshake hello and a call: nothing of the intruders was read.
    assert stats["received"] == 4 and stats["rejected"] == 0, stats
    assert stats["handshakes_refused"] >= 1  # the PLAIN intruder; the others did not even speak PLAIN


def test_both_sockets_bound_what_they_queue_and_each_frame():
    context = zmq.Context()
    gate = transport.HandshakeGate(context, b"k" * 32)
    router = transport.engine_socket(context, "tcp://127.0.0.1:0", protocol.MAX_REQUEST_BYTES)
    dealer = transport.client_socket(context, b"k" * 32, protocol.new_session(), "tcp://127.0.0.1:9")
    try:
        assert router.getsockopt(zmq.MAXMSGSIZE) == protocol.MAX_REQUEST_BYTES
        assert router.getsockopt(zmq.RCVHWM) == protocol.REQUEST_QUEUE
        assert router.getsockopt(zmq.SNDHWM) == protocol.EVENT_QUEUE
        assert dealer.getsockopt(zmq.MAXMSGSIZE) == protocol.MAX_EVENT_BYTES
        assert dealer.getsockopt(zmq.RCVHWM) == protocol.EVENT_QUEUE
    finally:
        for sock in (router, dealer):
            sock.close(linger=0)
        gate.close()
        context.term()


# --- finding 4: malformed but signed messages end neither loop ------------------------------------


def test_signed_malformed_array_references_do_not_end_the_engine(remote_engine):
    process, info = remote_engine
    session = protocol.new_session()
    context = zmq.Context()
    peer = transport.client_socket(context, info.key, session, info.address)
    bad_references = [
        {"__ndarray__": 0, "dtype": "(,)i4", "shape": [1]},
        {"__ndarray__": 0, "dtype": "<f4", "shape": [1] * 70},
        {"__ndarray__": 0, "dtype": "<f4", "shape": [0, 2**70]},
    ]
    for seq, reference in enumerate(bad_references, start=1):
        header = {
            "v": protocol.PROTOCOL_VERSION,
            "type": "scan",
            "id": protocol.new_id(),
            "reply_to": None,
            "from": CLIENT,
            "session": session.hex(),
            "to": None,
            "seq": seq,
            "payload": {"x": reference},
        }
        frames = [json.dumps(header).encode(), b"\0" * 4]
        peer.send_multipart([sign(info.key, frames), *frames])
    time.sleep(0.5)
    peer.close(linger=0)
    context.term()
    assert process.poll() is None, "the engine died"
    stats = hello(info)["stats"]
    assert stats["rejected"] == len(bad_references) and stats["jobs"] == 0, stats


def test_a_failure_inside_the_client_io_loop_ends_in_lost_not_in_silence(remote_engine):
    _, info = remote_engine
    lost = []

    def broken_listener(message):
        raise RuntimeError("a bug on the client side")

    link = connection.Connection(
        info, broken_listener, lambda reason, crashed: lost.append((reason, crashed)), None, False
    )
    try:
        link.send(protocol.request("hello", {"protocol": protocol.PROTOCOL_VERSION}))
        deadline = time.monotonic() + 10
        while not lost and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        link.stop()
    assert lost and lost[0][1] is True and "RuntimeError" in lost[0][0]


# --- finding 5: a reconnect keeps the client's identity, and a final event sent meanwhile arrives -


class Events:
    def __init__(self) -> None:
        self.messages: list[protocol.Message] = []
        self.changed = threading.Condition()

    def __call__(self, message: protocol.Message) -> None:
        with self.changed:
            self.messages.append(message)
            self.changed.notify_all()

    def wait(self, predicate, timeout_s: float) -> protocol.Message | None:
        with self.changed:
            self.changed.wait_for(lambda: any(predicate(m) for m in self.messages), timeout_s)
            return next((m for m in self.messages if predicate(m)), None)

    def final(self, job: str) -> list[protocol.Message]:
        return [m for m in self.messages if m.reply_to == job and m.type in ("result", "error")]


@pytest.fixture
def quick_heartbeat(monkeypatch):
    monkeypatch.setattr(connection, "HEARTBEAT_S", 0.3)
    monkeypatch.setattr(connection, "HEARTBEAT_TIMEOUT_S", 20.0)


def test_a_result_sent_while_the_network_was_down_still_arrives(remote_engine, quick_heartbeat):
    _, info = remote_engine
    events = Events()
    with client_behind_proxy(info, events) as (client, proxy):
        job = client.send("scan", {"seconds": 1.0})
        assert events.wait(lambda m: m.reply_to == job and m.type == "progress", 10)
        with proxy.down():
            time.sleep(2.0)  # the job ends meanwhile: its result goes nowhere
        final = events.wait(lambda m: m.reply_to == job and m.type in ("result", "error"), 15)
        assert final is not None and final.type == "result", final
        assert final.payload["result"]["slept"] == 1.0
        assert final.payload["result"]["values"].tolist() == [0, 1, 2, 3]
        assert len(events.final(job)) == 1
        assert client.state.value == "ready"


def test_a_job_keeps_streaming_to_the_client_after_a_reconnect(remote_engine, quick_heartbeat):
    _, info = remote_engine
    events = Events()
    with client_behind_proxy(info, events) as (client, proxy):
        job = client.send("scan", {"seconds": 3.0})
        assert events.wait(lambda m: m.reply_to == job and m.type == "progress", 10)
        with proxy.down():
            time.sleep(0.5)
        cut_at = len(events.messages)
        final = events.wait(lambda m: m.reply_to == job and m.type in ("result", "error"), 15)
        assert final is not None and final.type == "result"
        after = [m for m in events.messages[cut_at:] if m.reply_to == job and m.type == "progress"]
        assert after, "no progress reached the client after it reconnected"


def test_a_job_the_engine_no_longer_knows_ends_in_an_error(remote_engine, quick_heartbeat):
    _, info = remote_engine
    events = Events()
    with client_behind_proxy(info, events) as (client, proxy):
        job = client.send("scan", {"seconds": 0.3})
        assert events.wait(lambda m: m.reply_to == job and m.type == "progress", 10)
        with proxy.down(), EngineClient() as other:  # meanwhile, others run enough jobs that the engine forgets it
            time.sleep(1.0)
            other.connect(info, timeout_s=30)
            for _ in range(protocol.KEPT_FINAL_EVENTS):
                other.call("quantize", {}, timeout_s=30)
            assert other.call("job_state", {"job": job}, timeout_s=30)["state"] == "unknown"
        final = events.wait(lambda m: m.reply_to == job and m.type in ("result", "error"), 15)
        assert final is not None and final.type == "error" and final.payload["kind"] == "lost"
        assert client.state.value == "ready"


def test_job_state_answers_for_running_finished_and_unknown_jobs(remote_engine):
    _, info = remote_engine
    with EngineClient() as client:
        client.connect(info, timeout_s=30)
        job = client.send("scan", {"seconds": 1.0})
        assert client.call("job_state", {"job": job}, timeout_s=10)["state"] == "running"
        deadline = time.monotonic() + 10
        while (answer := client.call("job_state", {"job": job}, timeout_s=10))["state"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert answer["state"] == "finished" and answer["event"]["type"] == "result"
        assert answer["event"]["payload"]["result"]["slept"] == 1.0
        assert client.call("job_state", {"job": "f" * 32}, timeout_s=10) == {
            "job": "f" * 32,
            "state": "unknown",
            "event": None,
        }


# --- finding 6: a recorded connection replayed byte for byte runs nothing again -------------------


def test_a_recorded_connection_replayed_runs_nothing_again(remote_engine):
    _, info = remote_engine
    proxy = CuttableProxy(host_port(info.address), record=True)
    with EngineClient() as client:
        client.connect(ConnectionInfo(proxy.address, info.key), timeout_s=30)
        client.call("scan", {"seconds": 0.1}, timeout_s=30)
    proxy.close()
    before = hello(info)
    for _ in range(2):
        for data in proxy.recorded:
            replay(host_port(info.address), bytes(data))
    after = hello(info)
    assert after["stats"]["jobs"] == before["stats"]["jobs"] == 1
    assert after["stats"]["rejected"] - before["stats"]["rejected"] == 2 * 2  # its hello and its scan, twice


# --- finding 10: the connection file is never written through a planted link ----------------------


def test_the_connection_file_is_never_written_through_a_planted_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    victim.chmod(0o644)
    target = tmp_path / "engine.json"
    for name in (f".{target.name}.{os.getpid()}.tmp", f".{target.name}.tmp", f"{target.name}.tmp"):
        (tmp_path / name).symlink_to(victim)
    write_connection_file(target, "tcp://127.0.0.1:5555", b"k" * 32)
    assert victim.read_text() == "precious" and (victim.stat().st_mode & 0o777) == 0o644
    assert (target.stat().st_mode & 0o777) == 0o600 and not target.is_symlink()
    assert json.loads(target.read_text())["key"] == (b"k" * 32).hex()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.is_symlink()) == ["engine.json", "victim.txt"]


# --- finding 11: IPv6 addresses bind --------------------------------------------------------------


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_an_ipv6_address_binds_and_serves():
    key = protocol.new_key()
    server = EngineServer(key, "tcp://[::1]:0", load_session_factory(SLEEPY))
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        assert server.address.startswith("tcp://[::1]:")
        with EngineClient() as client:
            client.connect(ConnectionInfo(server.address, key), timeout_s=30)
            assert client.call("scan", {"seconds": 0.1}, timeout_s=30)["slept"] == 0.1
            client.close(shutdown=True)
    finally:
        thread.join(10)
    assert not thread.is_alive()
