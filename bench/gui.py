"""GUI benchmark: heatmap row update, full redraw at a large shape, and UI event-loop gaps during a real scan.

Run: QT_QPA_PLATFORM=offscreen .venv/bin/python bench/gui.py [--tokens 1024] [--skip-scan]

1. One new layer row at 80 layers x 4 inputs x 8192 dims (320 x 8192 cells):
   statistics in, row coloured, image and overlay updated, painted once.
2. A full redraw of the same grid (colour every cell, repaint), the baseline
   the row update is compared with (the ratio is the point, not the seconds).
3. The longest gap between ticks of a 5 ms timer on the UI thread while the
   window drives a real engine through load + scan of the default model.
   Target: no gap over 50 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LAYERS, KINDS, DIMS = 80, ("attn_in", "attn_out", "mlp_in", "mlp_down"), 8192


def payload(index: int, layer: int, kind: str, rng: np.random.Generator) -> dict:
    absmax = rng.lognormal(0.0, 1.0, DIMS).astype(np.float32)
    return {"index": index, "name": f"model.layers.{layer}.{kind}", "layer": layer, "kind": kind, "absmax": absmax,
            "count_over": (absmax > 6).astype(np.int64), "hist": np.ones(90, np.int64), "n_tokens": 4096,
            "final": True, "out_features": DIMS}


def paint(app, window) -> None:
    window.heatmap.graphics.viewport().repaint()
    app.processEvents()


def bench_heatmap(app, window) -> None:
    rng = np.random.default_rng(0)
    window.model_info = {"layers": LAYERS, "hidden_size": DIMS}
    window._prepare_grid()
    payloads = [payload(i, layer, kind, rng) for i, (layer, kind) in
                enumerate((layer, kind) for layer in range(LAYERS) for kind in KINDS)]
    row_times = []
    for p in payloads:
        started = time.perf_counter()
        window.stats.add_layer(p)
        paint(app, window)
        row_times.append(time.perf_counter() - started)
    redraw_times = []
    for _ in range(5):
        started = time.perf_counter()
        window.heatmap.redraw()
        paint(app, window)
        redraw_times.append(time.perf_counter() - started)
    threshold_times = []
    for value in (3.0, 6.0, 12.0, 24.0, 6.0):
        started = time.perf_counter()
        window.threshold.set_threshold(value)
        paint(app, window)
        threshold_times.append(time.perf_counter() - started)
    row, redraw = statistics.median(row_times[10:]), statistics.median(redraw_times)
    print(f"grid {LAYERS * len(KINDS)} rows x {DIMS} dims")
    print(f"  one new layer row (median of {len(row_times) - 10}):  {row * 1e3:7.2f} ms")
    print(f"  full redraw (median of 5):            {redraw * 1e3:7.2f} ms")
    print(f"  row update / full redraw:             {row / redraw:7.3f}")
    print(f"  threshold move, overlay + panels (median of 5): {statistics.median(threshold_times) * 1e3:7.2f} ms")


def bench_scan_gaps(app, window, tokens: int) -> None:
    from PySide6.QtCore import QElapsedTimer, QTimer

    gaps: list[float] = []
    clock = QElapsedTimer()
    clock.start()
    last = [clock.nsecsElapsed()]

    def tick() -> None:
        now = clock.nsecsElapsed()
        gaps.append((now - last[0]) / 1e6)
        last[0] = now

    def wait(condition, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("the engine did not answer in time")
            app.processEvents()
            time.sleep(0.001)

    window.start_engine()
    wait(lambda: window.client.state.value == "ready", 60)
    window.load_model(None)
    wait(lambda: window.model_info is not None, 180)
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(tick)
    last[0] = clock.nsecsElapsed()
    timer.start()
    started = time.perf_counter()
    window.start_scan({"tokens": tokens, "seq_len": 256})
    wait(lambda: window.stats.finished, 600)
    timer.stop()
    window.close()
    over = [g for g in gaps if g > 50]
    print(f"scan of the default model, {tokens} calibration tokens, {window.stats.rows_filled} rows, "
          f"{time.perf_counter() - started:.1f} s")
    print(f"  UI timer ticks: {len(gaps)}, longest gap {max(gaps):.1f} ms, "
          f"99th percentile {np.percentile(gaps, 99):.1f} ms, gaps over 50 ms: {len(over)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1024, help="calibration tokens of the live scan")
    parser.add_argument("--skip-scan", action="store_true", help="only the heatmap timings (no engine)")
    args = parser.parse_args()
    from PySide6.QtCore import QSettings

    from app.main import create_app
    from app.main_window import MainWindow

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
        bench_scan_gaps(app, window, args.tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
