"""GUI benchmark: heatmap row update, full redraw at a large shape, and UI event-loop gaps during a real scan.

Run: QT_QPA_PLATFORM=offscreen .venv/bin/python bench/gui.py [--tokens 1024] [--skip-scan] [--profile]

1. One new layer row at 80 layers x 4 inputs x 8192 dims (320 x 8192 cells):
   statistics in, row coloured, image and overlay updated, painted once.
2. A full redraw of the same grid (colour every cell, repaint), the baseline
   the row update is compared with.
3. A threshold move at that size: overlay, histogram line, summary, repaint.
   Each is timed in wall time and in the UI thread's CPU time (time.thread_time),
   which other processes on a shared machine do not inflate.
4. Gaps between ticks of a 5 ms timer on the UI thread while the window shows
   itself, starts a real engine, loads the default model and scans it, per
   phase. Target: no gap over 50 ms during the scan. Each gap also records the
   UI thread's CPU time in it: a gap with little of it is the thread waiting
   for a core (CPU starvation), not a block. --profile samples the UI thread's
   stack and names the code that ran inside the longest gaps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

LAYERS, KINDS, DIMS = 80, ("attn_in", "attn_out", "mlp_in", "mlp_down"), 8192


def payload(index: int, layer: int, kind: str, rng: np.random.Generator) -> dict:
    absmax = rng.lognormal(0.0, 1.0, DIMS).astype(np.float32)
    return {
        "index": index,
        "names": [f"model.layers.{layer}.{kind}"],
        "layer": layer,
        "kind": kind,
        "absmax": absmax,
        "count_over": (absmax > 6).astype(np.int64),
        "hist": np.ones(90, np.int64),
        "n_tokens": 4096,
        "final": True,
        "out_features": [DIMS],
    }


def paint(app, window) -> None:
    """Deliver the pending updates, paint the heatmap once, then the other views (as one event-loop turn)."""
    app.processEvents()
    window.heatmap.graphics.viewport().repaint()
    app.processEvents()


def timed(app, window, action) -> tuple[float, float]:
    """(wall s, UI-thread CPU s) of `action` and the paint that follows it."""
    wall, cpu = time.perf_counter(), time.thread_time()
    action()
    paint(app, window)
    return time.perf_counter() - wall, time.thread_time() - cpu


def bench_heatmap(app, window) -> None:
    rng = np.random.default_rng(0)
    window.workbench.model_info = {"layers": LAYERS, "hidden_size": DIMS}
    window.workbench.lay_out_grid()
    payloads = [
        payload(i, layer, kind, rng)
        for i, (layer, kind) in enumerate((layer, kind) for layer in range(LAYERS) for kind in KINDS)
    ]
    rows = [timed(app, window, lambda p=p: window.stats.add_layer(p)) for p in payloads][10:]
    redraws = [timed(app, window, window.heatmap.redraw) for _ in range(5)]
    moves = [
        timed(app, window, lambda v=v: window.threshold.set_threshold(v))
        for v in (3.0, 6.0, 12.0, 24.0, 6.0, 4.5, 9.0, 6.0)
    ]

    def line(label: str, times: list[tuple[float, float]]) -> str:
        wall, cpu = (statistics.median(t[i] for t in times) * 1e3 for i in (0, 1))
        worst = max(t[1] for t in times) * 1e3
        return f"  {label:40s} median wall {wall:6.2f} ms, UI-thread CPU {cpu:6.2f} ms (longest {worst:6.2f})"

    print(f"grid {LAYERS * len(KINDS)} rows x {DIMS} dims")
    print(line(f"one new layer row ({len(rows)})", rows))
    print(line("full redraw (5)", redraws))
    print(line(f"threshold move, overlay + panels ({len(moves)})", moves))
    print(
        f"  row update / full redraw (CPU): {statistics.median(t[1] for t in rows) / statistics.median(t[1] for t in redraws):.3f}"
    )


class GapRecorder:
    """Ticks of a 5 ms timer on the UI thread: each gap's wall time and the UI thread's CPU time in it.

    A gap whose CPU time is close to its wall time is the UI thread busy (a
    block); a gap with little CPU time is the thread waiting for a core (other
    processes) or for the GIL. The CPU time of the process's other threads
    in the gap (the engine client's I/O thread) tells the GIL apart: when it
    is small too, the thread was waiting for a core.
    """

    def __init__(self) -> None:
        from PySide6.QtCore import QTimer

        self.gaps: list[tuple[float, float, float, str, float]] = []
        # (start s, wall ms, UI-thread CPU ms, phase, other threads' CPU ms)
        self.phase = ""
        self._last_wall = self._last_cpu = self._last_process = 0.0
        self._timer = QTimer()
        self._timer.setInterval(5)
        self._timer.timeout.connect(self._tick)

    def start(self) -> None:
        self._last_wall, self._last_cpu, self._last_process = (
            time.perf_counter(),
            time.thread_time(),
            time.process_time(),
        )
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def _tick(self) -> None:
        wall, cpu, process = time.perf_counter(), time.thread_time(), time.process_time()
        others = (process - self._last_process) - (cpu - self._last_cpu)
        self.gaps.append(
            (self._last_wall, (wall - self._last_wall) * 1e3, (cpu - self._last_cpu) * 1e3, self.phase, others * 1e3)
        )
        self._last_wall, self._last_cpu, self._last_process = wall, cpu, process

    def report(self, phase: str, limit_ms: float = 50.0) -> str:
        gaps = [g for g in self.gaps if g[3] == phase]
        if not gaps:
            return f"  {phase}: no ticks"
        walls, cpus = np.array([g[1] for g in gaps]), np.array([g[2] for g in gaps])
        worst = int(walls.argmax())
        return (
            f"  {phase:5s} ticks {len(gaps):5d} | wall: longest {walls.max():6.1f} ms (UI CPU in it "
            f"{cpus[worst]:5.1f} ms, other threads {gaps[worst][4]:5.1f} ms), p99 {np.percentile(walls, 99):5.1f}, over {limit_ms:g} ms: "
            f"{int((walls > limit_ms).sum()):3d} | UI-thread CPU: longest {cpus.max():6.1f} ms, "
            f"p99 {np.percentile(cpus, 99):5.1f}, over {limit_ms:g} ms: {int((cpus > limit_ms).sum()):3d}"
        )


class StackSampler:
    """Samples the UI thread's Python stack every 2 ms on a side thread (diagnosis: --profile).

    Shows which code runs inside each long gap. It takes the GIL to sample, so
    it slows the UI thread a little: the gap figures of a --profile run are not
    the ones to report.
    """

    def __init__(self, thread_id: int, interval_s: float = 0.002) -> None:
        import threading

        self.samples: list[tuple[float, tuple[str, ...]]] = []
        self._thread_id, self._interval = thread_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            frame = sys._current_frames().get(self._thread_id)
            stack = []
            while frame is not None and len(stack) < 40:
                code = frame.f_code
                stack.append(f"{Path(code.co_filename).name}:{code.co_name}:{frame.f_lineno}")
                frame = frame.f_back
            self.samples.append((time.perf_counter(), tuple(stack)))

    def describe(self, start: float, wall_ms: float, top: int = 4) -> list[str]:
        """The most frequent innermost frames of this program's and pyqtgraph's code in [start, start + gap]."""
        from collections import Counter

        inside = [stack for t, stack in self.samples if start <= t <= start + wall_ms / 1e3]
        counts: Counter[str] = Counter()
        for stack in inside:
            chain = [
                f for f in stack if not f.startswith(("gui.py:wait", "gui.py:main", "gui.py:bench", "gui.py:<module>"))
            ]
            counts[" < ".join(chain[:4]) or "(idle in Qt)"] += 1
        return [f"      {n:3d}/{len(inside)} {where}" for where, n in counts.most_common(top)]


def bench_scan_gaps(app, window, tokens: int, profile: bool) -> None:
    import threading

    from int8wb.app.event_loop import process_events_until

    recorder = GapRecorder()
    sampler = StackSampler(threading.get_ident()) if profile else None
    if sampler:
        sampler.start()
    recorder.start()

    def settle(seconds: float) -> None:
        """Let the event loop run (and paint) as it would before a person's next click."""
        until = time.perf_counter() + seconds
        process_events_until(lambda: time.perf_counter() > until, seconds + 5, poll_s=0.001)

    # Each phase ends with its own paints (settle) before the next action, so that
    # a gap is the work of one step, not of two steps run in one event-loop turn.
    recorder.phase = "show"  # the window's first layout and paint
    settle(0.5)
    recorder.phase = "start"
    window.model_panel.load_at_start.setChecked(False)  # the load is its own phase below
    window.start_engine()
    process_events_until(lambda: window.workbench.ready, 60, poll_s=0.001)
    settle(0.3)
    recorder.phase = "load"
    window.workbench.load_model(None)
    process_events_until(lambda: window.workbench.model_info is not None, 180, poll_s=0.001)
    settle(0.3)
    recorder.phase = "scan"
    started = time.perf_counter()
    cpu_started = time.thread_time()
    window.workbench.start_scan({"tokens": tokens, "seq_len": 256})
    process_events_until(lambda: window.stats.finished, 600, poll_s=0.001)
    seconds, cpu_seconds = time.perf_counter() - started, time.thread_time() - cpu_started
    recorder.phase = "after"  # the paints that follow the scan's end
    settle(0.5)
    recorder.stop()
    if sampler:
        sampler.stop()
    window.close()
    print(
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
        f"scan of the default model, {tokens} calibration tokens, {window.stats.rows_filled} rows, "
        f"{seconds:.1f} s wall, UI thread CPU {cpu_seconds:.2f} s"
    )
    print(
        "event-loop gaps (5 ms timer), per phase; 'UI-thread CPU' is time.thread_time() of the UI thread within the gap"
    )
    for phase in ("show", "start", "load", "scan", "after"):
        print(recorder.report(phase))
    if sampler:
        print("longest gaps and what the UI thread ran in them (sampled stacks):")
        for start, wall, cpu, phase, _ in sorted(recorder.gaps, key=lambda g: -g[1])[:12]:
            print(f"    {phase:5s} t={start - recorder.gaps[0][0]:7.2f} s  wall {wall:6.1f} ms  UI CPU {cpu:6.1f} ms")
            print("\n".join(sampler.describe(start, wall)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1024, help="calibration tokens of the live scan")
    parser.add_argument("--skip-scan", action="store_true", help="only the heatmap timings (no engine)")
    parser.add_argument(
        "--profile", action="store_true", help="sample the UI thread's stack and name the code inside the longest gaps"
    )
    args = parser.parse_args()
    from PySide6.QtCore import QSettings

    from int8wb.app.main import create_app
    from int8wb.app.main_window import MainWindow

    app = create_app([])
    settings = QSettings(str(Path("/tmp") / "int8wb-bench-gui.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings=settings)
    window.resize(1600, 1000)
    window.show()
    bench_heatmap(app, window)
    window.close()
    if not args.skip_scan:
        window = MainWindow(settings=settings)
        window.resize(1600, 1000)
        window.show()
        bench_scan_gaps(app, window, args.tokens, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
