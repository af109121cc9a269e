"""Timing several candidates fairly on a shared machine: each run in turn, the median of each kept.

Taking turns spreads a burst of load from elsewhere over every candidate, so their ratio holds when the
absolute seconds do not.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(candidates: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each candidate, after one warm-up each, timed round-robin."""
    for run in candidates.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
