"""The engine under attack: floods, garbage, malformed signed requests, replays, a reconnect mid-scan.

Starts a real `int8wb engine --listen tcp://127.0.0.1:PORT --connection-file ...`, loads the
default model in it, then, while a thread samples the engine's resident memory:

1. 1 GiB of unsigned multipart messages: half from peers without the key (raw ZeroMQ wire
   protocol, messages that never end, and a PLAIN handshake with a wrong password), half from a
   peer that passed the handshake (complete messages of 1 MiB, each refused by its signature);
2. 10,000 random frames from a peer that passed the handshake;
3. 1,000 correctly signed requests: 800 malformed (array references, stamps, envelope, fields),
   which must be dropped, and 200 job requests with wrong parameters, which must be answered with
   an error that names the input (never a result, never "internal");
4. a client's recorded connection replayed byte for byte (handshake and all), and its signed
   frames sent again on a connection of their own;
5. a scan whose client loses its connection twice: once mid-scan, once until the scan has ended.

It reports the engine's memory growth (goal: under 64 MB), its deaths (goal: 0), the messages it
wrongly accepted (goal: 0) and whether each scan's result arrived after the reconnect.

    .venv/bin/python bench/abuse.py [--flood-mib 1024] [--random-frames 10000] [--signed 1000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from abuse_messages import (  # noqa: E402 - beside this script
    BAD_PARAMETERS,
    KeyHolder,
    malformed_array,
    malformed_envelope,
)

from int8wb.engine.link import protocol  # noqa: E402
from int8wb.engine.link.client import ConnectionInfo, EngineClient  # noqa: E402
from int8wb.engine.link.wire import sign  # noqa: E402
from tests.support.net_tools import CuttableProxy, raw_zmtp_flood, replay  # noqa: E402

MIB = 2**20


# --- the engine and what it says about itself -----------------------------------------------------


class Engine:
    """`int8wb engine` on a free loopback port, with a sampler of its resident memory."""

    def __init__(self, workdir: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        connection_file = workdir / "engine.json"
        script = Path(sys.executable).with_name("int8wb")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "int8wb.engine.cli"]
        command += ["engine", "--listen", f"tcp://127.0.0.1:{port}", "--connection-file", str(connection_file)]
        self.log = open(workdir / "engine.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, stderr=self.log, env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 60
        while not connection_file.exists() and time.monotonic() < deadline and self.process.poll() is None:
            time.sleep(0.05)
        self.info = ConnectionInfo.from_file(connection_file)
        self.address = ("127.0.0.1", port)
        self.peak = 0
        self._sampling = True
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def rss(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _sample(self) -> None:
        while self._sampling and self.process.poll() is None:
            try:
                self.peak = max(self.peak, self.rss())
            except OSError:
                return
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        self._sampling = False
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log.close()


class Observer:
    """A legitimate client that asks the engine for its counters."""

    def __init__(self, engine: Engine) -> None:
        self.client = EngineClient()
        self.client.connect(engine.info, timeout_s=60)

    def stats(self) -> dict:
        return self.client.call("hello", {"protocol": protocol.PROTOCOL_VERSION}, timeout_s=60)["stats"]

    def settled(self, expected_rejections: int, before: dict, timeout_s: float = 120) -> dict:
        """Counters once the engine has refused `expected_rejections` more messages (or the time is up)."""
        deadline = time.monotonic() + timeout_s
        while True:
            now = self.stats()
            if now["rejected"] - before["rejected"] >= expected_rejections or time.monotonic() > deadline:
                return now
            time.sleep(0.2)


def refused_row(observer: Observer, before: dict, messages: int, attack: str, sent: str) -> dict:
    """The report of an attack whose `messages` must all be refused, once the engine has seen them.

    Only an attack's messages can be refused meanwhile (the observer's hellos and heartbeats are valid),
    so each of them that was not refused was taken.
    """
    after = observer.settled(messages, before)
    refused = after["rejected"] - before["rejected"]
    return {
        "attack": attack,
        "sent": sent,
        "wrongly_accepted": max(0, messages - refused),
        "refused": refused,
        "handshakes_refused": after["handshakes_refused"] - before["handshakes_refused"],
    }


# --- 1. unsigned floods ---------------------------------------------------------------------------


def unsigned_floods(engine: Engine, observer: Observer, total_mib: int) -> dict:
    before = observer.stats()
    outsider_mib, per_connection = total_mib // 2, 64
    outsider_bytes = 0
    for i in range(max(1, outsider_mib // per_connection)):
        wrong_password = (b"0" * 32, b"not the password") if i % 4 == 3 else None
        outsider_bytes += raw_zmtp_flood(engine.address, per_connection * MIB, wrong_password)
    holder = KeyHolder(engine.info)
    message = [bytes(32)] + [np.random.default_rng(0).bytes(64 * 1024)] * 16  # 1 MiB, a signature of zeros
    messages = total_mib - outsider_mib
    for _ in range(messages):
        holder.send_raw(message)
    sent = (
        f"{outsider_mib} MiB offered by peers without the key ({outsider_bytes / MIB:.1f} MiB got onto "
        f"the wire before the engine hung up), {messages} x 1 MiB from a peer past the handshake"
    )
    row = refused_row(observer, before, messages, f"{total_mib} MiB of unsigned multipart messages", sent)
    holder.close()  # only now: closing drops what it has not sent yet
    return row


# --- 2. random frames -----------------------------------------------------------------------------


def random_frames(engine: Engine, observer: Observer, frames_total: int) -> dict:
    rng = np.random.default_rng(1)
    before = observer.stats()
    holder = KeyHolder(engine.info)
    sent_frames = messages = 0
    while sent_frames < frames_total:
        count = int(min(rng.integers(1, 6), frames_total - sent_frames))
        holder.send_raw([rng.bytes(int(rng.integers(0, 200))) for _ in range(count)])
        sent_frames, messages = sent_frames + count, messages + 1
    row = refused_row(
        observer,
        before,
        messages,
        f"{frames_total:,} random frames",
        f"{messages:,} messages from a peer past the handshake",
    )
    holder.close()
    return row


# --- 3. signed but malformed requests -------------------------------------------------------------


def signed_malformed(engine: Engine, observer: Observer, count: int) -> dict:
    rng = np.random.default_rng(2)
    before = observer.stats()
    holder = KeyHolder(engine.info)
    for i in range(count):
        if i % 3 == 0:
            payload, buffers = malformed_array(rng)
            holder.send_raw(holder.signed({"type": "scan", "payload": payload}, buffers))
        elif i % 3 == 1:
            holder.send_raw(holder.signed(malformed_envelope(rng)))
        else:
            text = [b"\xff\xfe", b"[", b"{" * 100_000, b"null", b'{"v": 2}', b"[" * 5000 + b"]" * 5000]
            header = text[int(rng.integers(0, len(text)))]
            holder.send_raw([sign(holder.key, [header]), header])
    attack = f"{count} signed requests with malformed envelopes, stamps and array references"
    row = refused_row(observer, before, count, attack, f"{count} from a peer past the handshake")
    holder.close()
    return row


def wrong_parameters(engine: Engine, count: int) -> dict:
    """Well-formed job requests with one wrong parameter: each must end in an error naming the input."""
    rng = np.random.default_rng(3)
    holder = KeyHolder(engine.info)
    wrong, kinds = [], {}
    for _ in range(count):
        request_type = list(BAD_PARAMETERS)[int(rng.integers(0, len(BAD_PARAMETERS)))]
        field = list(BAD_PARAMETERS[request_type])[int(rng.integers(0, len(BAD_PARAMETERS[request_type])))]
        values = BAD_PARAMETERS[request_type][field]
        value = values[int(rng.integers(0, len(values)))]
        reply = holder.request(request_type, {field: value})
        kind = "no answer" if reply is None else reply.payload.get("kind", reply.type)
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind not in ("bad_input", "model_load"):
            wrong.append(f"{request_type} {field}={value!r}: {kind}")
    holder.close()
    return {
        "attack": f"{count} signed job requests with a wrong parameter",
        "sent": f"answered: {', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}",
        "wrongly_accepted": len(wrong),
        "refused": count - len(wrong),
        "wrong": sorted(set(wrong))[:10],
    }


# --- 4. replays -------------------------------------------------------------------------------------


def replays(engine: Engine, observer: Observer) -> dict:
    proxy = CuttableProxy(engine.address, record=True)
    start = observer.stats()
    with EngineClient() as client:  # a legitimate session, recorded on the wire
        client.connect(ConnectionInfo(proxy.address, engine.info.key), timeout_s=60)
        for _ in range(20):
            client.call("hello", {"protocol": protocol.PROTOCOL_VERSION}, timeout_s=60)
        client.call("plan_memory", {"preset": "llama-2-7b"}, timeout_s=60)
    proxy.close()
    recorded_messages = observer.stats()["received"] - start["received"] - 1
    holder = KeyHolder(engine.info)
    captured = [holder.signed({"type": "hello", "payload": {"protocol": protocol.PROTOCOL_VERSION}}) for _ in range(20)]
    for frames in captured:
        holder.send_raw(frames)  # accepted once, as sent
    time.sleep(0.5)
    before = observer.stats()
    for _ in range(2):
        for data in proxy.recorded:
            replay(engine.address, bytes(data))
    other = KeyHolder(engine.info)
    for frames in captured:
        holder.send_raw(frames)  # again, on the connection they were signed for
        other.send_raw(frames)  # and on another one
    expected = 2 * recorded_messages + 2 * len(captured)
    sent = (
        f"a recorded client connection replayed twice byte for byte ({2 * recorded_messages} requests), "
        f"{len(captured)} signed requests re-sent on their own and on another connection"
    )
    row = refused_row(observer, before, expected, "replays of captured requests", sent)
    holder.close()
    other.close()
    return row


# --- 5. a reconnect in the middle of a scan -------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[float, protocol.Message]] = []
        self.changed = threading.Condition()

    def __call__(self, message: protocol.Message) -> None:
        with self.changed:
            self.events.append((time.monotonic(), message))
            self.changed.notify_all()

    def wait(self, predicate, timeout_s: float) -> tuple[float, protocol.Message] | None:
        with self.changed:
            self.changed.wait_for(lambda: any(predicate(m) for _, m in self.events), timeout_s)
            return next(((t, m) for t, m in self.events if predicate(m)), None)


def scan_through_a_blip(engine: Engine, observer: Observer, layers: int, until_finished: bool) -> dict:
    """A scan whose client loses its connection: for 1.5 s after the first layer, or from its last
    layers until the engine has sent the result (which then has to come by `job_state`)."""
    proxy = CuttableProxy(engine.address)
    events = Recorder()
    client = EngineClient(on_event=events)
    try:
        client.connect(ConnectionInfo(proxy.address, engine.info.key), timeout_s=60)
        started = time.monotonic()
        job = client.send("scan", {"tokens": 512, "seq_len": 128, "batch_size": 2})
        last_layers = layers - 2 if until_finished else 0
        events.wait(lambda m: m.reply_to == job and m.type == "scan_layer" and m.payload["layer"] >= last_layers, 900)
        proxy.cut()
        cut_at = time.monotonic()
        if until_finished:
            while observer.client.call("job_state", {"job": job}, timeout_s=60)["state"] == "running":
                time.sleep(0.1)
        else:
            time.sleep(1.5)
        proxy.restore()
        restored_at = time.monotonic()
        final = events.wait(lambda m: m.reply_to == job and m.type in ("result", "error"), 900)
        seen = [t for t, m in events.events if m.reply_to == job and m.type == "scan_layer"]
    finally:
        client.close()
        proxy.close()
    arrived = final is not None and final[1].type == "result"
    return {
        "scenario": "cut from its last layers until the engine had sent the result"
        if until_finished
        else "cut for 1.5 s after its first layer",
        "result_arrived": arrived,
        "final": "none" if final is None else final[1].payload.get("kind", final[1].type),
        "cut_s": round(restored_at - cut_at, 1),
        "scan_s": round(final[0] - started, 1) if final else None,
        "seconds_from_reconnect_to_result": round(final[0] - restored_at, 1) if final else None,
        "layers_in_result": len(final[1].payload["result"]["layers"]) if arrived else 0,
        "scan_layer_events": len(seen),
        "scan_layer_events_after_reconnect": sum(t >= restored_at for t in seen),
    }


# --- the run -------------------------------------------------------------------------------------------


def warm_up(observer: Observer) -> int:
    """Load the default model and run each kind of job once, so that imports do not count as growth;
    returns the model's number of decoder layers."""
    layers = observer.client.call("load_model", {}, timeout_s=900)["layers"]
    observer.client.call("scan", {"tokens": 256, "seq_len": 128}, timeout_s=900)
    observer.client.call("evaluate", {"tokens": 1024, "window": 512}, timeout_s=900)
    observer.client.call("plan_memory", {"preset": "llama-2-7b"}, timeout_s=900)
    return layers


def resident(engine: Engine, samples: int = 10) -> int:
    values = []
    for _ in range(samples):
        values.append(engine.rss())
        time.sleep(0.1)
    return int(statistics.median(values))


def run(args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="int8wb-abuse-"))
    engine = Engine(workdir)
    try:
        observer = Observer(engine)
        layers = warm_up(observer)
        baseline = resident(engine)
        engine.peak = baseline
        rows = [
            unsigned_floods(engine, observer, args.flood_mib),
            random_frames(engine, observer, args.random_frames),
            signed_malformed(engine, observer, args.signed - args.signed // 5),
            wrong_parameters(engine, args.signed // 5),
            replays(engine, observer),
        ]
        after = resident(engine)
        peak = engine.peak
        observer.client.call("load_model", {}, timeout_s=900)  # a wrong load_model above may have dropped it
        blips = [scan_through_a_blip(engine, observer, layers, until_finished=flag) for flag in (False, True)]
        alive = engine.alive() and observer.stats() is not None
        observer.client.close()
    finally:
        engine.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "engine_rss_baseline_mb": round(baseline / 1e6, 1),
        "engine_rss_growth_mb": round((after - baseline) / 1e6, 1),
        "engine_rss_peak_growth_mb": round((peak - baseline) / 1e6, 1),
        "engine_deaths": 0 if alive else 1,
        "wrongly_accepted": sum(row["wrongly_accepted"] for row in rows),
        "attacks": rows,
        "reconnects": blips,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood-mib", type=int, default=1024)
    parser.add_argument("--random-frames", type=int, default=10_000)
    parser.add_argument("--signed", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"engine resident memory: {report['engine_rss_baseline_mb']} MB after warm-up")
    print(f"  growth after the attacks: {report['engine_rss_growth_mb']} MB (goal: under 64 MB)")
    print(f"  peak growth during them:  {report['engine_rss_peak_growth_mb']} MB")
    print(f"engine deaths: {report['engine_deaths']} (goal: 0)")
    print(f"messages wrongly accepted: {report['wrongly_accepted']} (goal: 0)")
    for row in report["attacks"]:
        print(f"- {row['attack']}: {row['sent']}; refused {row['refused']}, wrongly accepted {row['wrongly_accepted']}")
        for line in row.get("wrong", []):
            print(f"    {line}")
    for blip in report["reconnects"]:
        print(
            f"- scan of 512 tokens, {blip['scenario']} ({blip['cut_s']} s): result arrived: {blip['result_arrived']} "
            f"({blip['final']}, {blip['layers_in_result']} layers, {blip['seconds_from_reconnect_to_result']} s after "
            f"the reconnect, scan {blip['scan_s']} s; {blip['scan_layer_events']} scan_layer events, "
            f"{blip['scan_layer_events_after_reconnect']} of them after the reconnect)"
        )
    arrived = all(blip["result_arrived"] for blip in report["reconnects"])
    return 0 if report["engine_deaths"] == 0 and report["wrongly_accepted"] == 0 and arrived else 1


if __name__ == "__main__":
    sys.exit(main())
