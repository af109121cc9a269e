"""A real engine process: streaming, cancel, crash, parent death, remote connection files."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from int8wb.engine.link import protocol
from int8wb.engine.link.client import ConnectionInfo, EngineClient, EngineError, EngineState
from tests.support.fixtures_engine import process_alive, wait_dead

REPO = Path(__file__).resolve().parent.parent


class Recorder:
    """Collects events from the client's I/O thread; `wait_for` blocks until one matches."""

    def __init__(self) -> None:
        self.events: list[protocol.Message] = []
        self.states: list[EngineState] = []
        self._changed = threading.Condition()

    def on_event(self, message: protocol.Message) -> None:
        with self._changed:
            self.events.append((time.monotonic(), message))
            self._changed.notify_all()

    def on_state(self, old: EngineState, new: EngineState) -> None:
        self.states.append(new)

    def wait_for(self, predicate, timeout_s: float) -> tuple[float, protocol.Message]:
        with self._changed:
            found = self._changed.wait_for(lambda: next((e for e in self.events if predicate(e[1])), None), timeout_s)
            assert found, f"no matching event within {timeout_s} s; got {[m.type for _, m in self.events]}"
            return found

    def of(self, job: str) -> list[protocol.Message]:
        return [m for _, m in self.events if m.reply_to == job]


def ends(job: str):
    return lambda m: m.reply_to == job and m.type in ("result", "error")


@pytest.fixture(scope="module")
def loaded_engine():
    """An engine child with the default model loaded, shared by the module's slow tests."""
    recorder = Recorder()
    client = EngineClient(on_event=recorder.on_event, on_state=recorder.on_state)
    client.start_local(timeout_s=120)
    client.call("load_model", {}, timeout_s=600)
    yield client, recorder
    client.close()


@pytest.mark.slow
def test_scan_streams_one_scan_layer_per_linear_input_before_the_result(loaded_engine):
    client, recorder = loaded_engine
    job = client.send("scan", {"tokens": 512, "seq_len": 256, "batch_size": 2})
    assert client.state is EngineState.BUSY
    recorder.wait_for(ends(job), 300)
    events = recorder.of(job)
    assert events[-1].type == "result", events[-1].payload
    layers = [m.payload for m in events if m.type == "scan_layer"]
    result_layers = events[-1].payload["result"]["layers"]
    assert len(layers) == len(result_layers) == 30 * 4  # each distinct Linear input once
    assert [p["index"] for p in layers] == list(range(len(layers)))
    assert [p["names"] for p in layers] == [p["names"] for p in result_layers]
    assert sum(len(p["names"]) for p in layers) == 30 * 7
    assert layers[0]["absmax"].shape == (576,) and layers[0]["absmax"].dtype.str == "<f4"
    assert (layers[5]["absmax"] == result_layers[5]["absmax"]).all()
    fractions = [m.payload["fraction"] for m in events if m.type == "progress"]
    assert fractions == sorted(fractions) and len(set(fractions)) == len(fractions)
    assert client.state is EngineState.READY


@pytest.mark.slow
def test_cancel_during_a_scan_returns_within_a_second(loaded_engine):
    client, recorder = loaded_engine
    job = client.send("scan", {"tokens": 8192, "seq_len": 512, "batch_size": 4})
    recorder.wait_for(lambda m: m.reply_to == job and m.type == "scan_layer", 300)
    asked = time.monotonic()
    client.cancel(job)
    ended, last = recorder.wait_for(ends(job), 30)
    assert last.type == "error" and last.payload["kind"] == "cancelled"
    assert ended - asked < 1.0, f"cancel took {ended - asked:.2f} s"
    assert len([m for m in recorder.of(job) if m.type == "scan_layer"]) < 210
    assert client.call("scan", {"tokens": 256, "seq_len": 128}, timeout_s=300)["tokens"] == 256


@pytest.mark.slow
def test_second_job_is_refused_as_busy_and_errors_keep_the_engine_serving(loaded_engine):
    client, recorder = loaded_engine
    job = client.send("scan", {"tokens": 4096, "seq_len": 512})
    with pytest.raises(EngineError) as busy:
        client.call("scan", {"tokens": 256}, timeout_s=30)
    assert busy.value.kind == "busy" and job in str(busy.value)
    client.cancel()
    recorder.wait_for(ends(job), 60)
    with pytest.raises(EngineError) as bad:
        client.call("scan", {"tokens": -5}, timeout_s=30)
    assert bad.value.kind == "bad_input" and "tokens" in str(bad.value)
    assert "Traceback" in bad.value.traceback_text
    with pytest.raises(EngineError) as unknown:
        client.call("export", {"path": 5}, timeout_s=30)
    assert unknown.value.kind in ("bad_input", "internal") and unknown.value.traceback_text
    assert client.call("hello", {"protocol": 1}, timeout_s=10)["busy"] is False
    assert client.state is EngineState.READY


def test_engine_killed_mid_job_is_reported_as_crashed_and_can_be_restarted():
    recorder = Recorder()
    client = EngineClient(on_event=recorder.on_event, on_state=recorder.on_state)
    first = client.start_local(timeout_s=60)["pid"]
    try:
        job = client.send("load_model", {})
        time.sleep(0.5)
        assert client.state is EngineState.BUSY
        os.kill(first, signal.SIGKILL)
        _, crash = recorder.wait_for(ends(job), 10)
        assert crash.payload["kind"] == "crashed" and "signal 9" in crash.payload["message"]
        assert client.state is EngineState.CRASHED
        with pytest.raises(EngineError, match="crashed"):
            client.send("scan", {})
        second = client.restart()["pid"]
        assert second != first and client.state is EngineState.READY
        assert client.call("hello", {"protocol": 1}, timeout_s=10)["pid"] == second
        assert recorder.states[-4:] == [
            EngineState.CRASHED,
            EngineState.STOPPED,
            EngineState.STARTING,
            EngineState.READY,
        ]
    finally:
        client.close()
    assert client.state is EngineState.STOPPED and wait_dead(second, 5)


def test_engine_exits_when_its_parent_is_killed(tmp_path):
    script = textwrap.dedent("""
        import sys, time
        from int8wb.engine.link.client import EngineClient
        client = EngineClient()
        client.start_local(timeout_s=60)
        print(client.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        engine_pid = int(parent.stdout.readline())
        assert process_alive(engine_pid)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
    assert wait_dead(engine_pid, 10), "the engine outlived its killed parent"


def test_remote_engine_serves_clients_with_the_connection_file_key_only(tmp_path):
    connection_file = tmp_path / "engine.json"
    # Through the `int8wb engine` command, as a user starts a remote engine.
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "int8wb.engine.cli",
            "engine",
            "--listen",
            "tcp://127.0.0.1:0",
            "--connection-file",
            str(connection_file),
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not connection_file.exists() and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.05)
        assert stat.S_IMODE(connection_file.stat().st_mode) == 0o600
        info = ConnectionInfo.from_file(connection_file)
        assert info.address.startswith("tcp://127.0.0.1:")
        assert json.loads(connection_file.read_text())["protocol"] == protocol.PROTOCOL_VERSION

        intruder = EngineClient()
        with pytest.raises(EngineError, match="no answer"):
            intruder.connect(ConnectionInfo(info.address, b"\x01" * 32), timeout_s=1.5)
        assert intruder.state is EngineState.STOPPED

        client = EngineClient()
        hello = client.connect(connection_file, timeout_s=30)
        # The intruder never got past the handshake: nothing it sent was even read.
        assert hello["pid"] == server.pid and hello["stats"]["handshakes_refused"] >= 1
        assert hello["stats"]["received"] == 1 and hello["stats"]["rejected"] == 0  # our own hello only
        assert client.pid is None and client.state is EngineState.READY
        client.close()  # a remote engine keeps running for its other clients
        assert server.poll() is None
        again = EngineClient()
        again.connect(connection_file, timeout_s=30)
        again.close(shutdown=True)
        assert server.wait(10) == 0
        assert not connection_file.exists()
        assert "refused a connection from 127.0.0.1" in server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        server.stderr.close()


def test_bad_listen_address_and_connection_files_are_explained(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "int8wb.engine",
            "--listen",
            "localhost:80",
            "--connection-file",
            str(tmp_path / "c.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "tcp://HOST:PORT" in run.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(EngineError.__mro__[1], match="not an engine connection file"):
        ConnectionInfo.from_file(bad)
