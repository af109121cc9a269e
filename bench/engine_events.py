"""Engine process boundary: time to the first `scan_layer`, event throughput, overhead vs in-process.

A synthetic scan of a large model's shape (default 80 decoder layers x 7 Linear
inputs x 8192 dimensions: absmax float32, count_over int64 and a 90-bin
histogram per Linear) runs once in-process and once in an engine child, with
the same `SyntheticSession.handle`; the ratio of the two wall times is the cost
of encoding, signing, sending and decoding every event. One run, no timing
assertions.

    .venv/bin/python bench/engine_events.py [--layers 80 --dims 8192]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import numpy as np

from int8wb.engine.link.client import EngineClient
from int8wb.engine.task import CallbackTask

KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class SyntheticSession:
    """A `scan` that emits precomputed statistics of `layers` x 7 Linear inputs of `dims` features."""

    def handle(self, request_type: str, params: dict, task) -> dict:
        layers, dims = int(params["layers"]), int(params["dims"])
        rng = np.random.default_rng(0)
        absmax = rng.random(dims, dtype=np.float32) * 8  # (dims,)
        count_over = rng.integers(0, 512, dims)  # (dims,)
        hist = rng.integers(0, 1 << 20, 90)  # (90,)
        total = layers * len(KINDS)
        for index in range(total):
            task.check_cancelled()
            layer, kind = divmod(index, len(KINDS))
            task.partial(
                "scan_layer",
                {
                    "index": index,
                    "names": [f"model.layers.{layer}.{KINDS[kind]}"],
                    "layer": layer,
                    "kind": KINDS[kind],
                    "absmax": absmax,
                    "count_over": count_over,
                    "hist": hist,
                    "n_tokens": 4096,
                    "final": True,
                },
            )
            task.progress((index + 1) / total, f"layer {layer}")
        return {"layers": total}


def in_process(params: dict) -> tuple[float, int]:
    received = []
    task = CallbackTask(on_partial=lambda kind, payload: received.append(payload))
    started = time.perf_counter()
    SyntheticSession().handle("scan", params, task)
    return time.perf_counter() - started, len(received)


def through_engine(client: EngineClient, done: threading.Event, log: list, params: dict) -> tuple[float, float, int]:
    log.clear()
    done.clear()
    started = time.perf_counter()
    client.send("scan", params)
    done.wait(600)
    first = next(t for t, m in log if m.type == "scan_layer")
    return first - started, log[-1][0] - started, sum(m.type == "scan_layer" for _, m in log)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=80)
    parser.add_argument("--dims", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    params = {"layers": args.layers, "dims": args.dims}
    event_bytes = args.dims * (4 + 8) + 90 * 8

    log: list = []
    done = threading.Event()

    def on_event(message):
        log.append((time.perf_counter(), message))
        if message.type in ("result", "error"):
            done.set()

    client = EngineClient(on_event=on_event)
    started = time.perf_counter()
    client.start_local(session="bench.engine_events:SyntheticSession")
    print(f"engine start + handshake: {time.perf_counter() - started:.3f} s")
    try:
        through_engine(client, done, log, {"layers": 1, "dims": 8})  # first job imports the session
        local = min(in_process(params)[0] for _ in range(args.repeats))
        runs = [through_engine(client, done, log, params) for _ in range(args.repeats)]
    finally:
        client.close()
    first, total, events = min(runs, key=lambda r: r[1])
    print(
        f"shape: {args.layers} layers x {len(KINDS)} Linear x {args.dims} dims "
        f"({events} scan_layer events of {event_bytes / 1e3:.1f} kB)"
    )
    print(f"scan request -> first scan_layer: {first * 1e3:.2f} ms")
    print(
        f"through the engine: {total:.3f} s, {events / total:.0f} events/s, "
        f"{events * event_bytes / total / 1e6:.0f} MB/s"
    )
    print(f"in-process (same session, same task calls): {local:.3f} s")
    print(
        f"process boundary overhead: {total / local:.1f}x the in-process time, "
        f"{(total - local) / events * 1e3:.2f} ms per event"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
