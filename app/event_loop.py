"""Drive the Qt event loop from a script (benchmarks, screenshots) until something has happened."""

from __future__ import annotations

import time
from collections.abc import Callable

from PySide6.QtWidgets import QApplication


def process_events_until(condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.01) -> None:
    """Keep the event loop turning until `condition()` holds; TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing happened within {timeout_s:g} s")
        QApplication.processEvents()
        time.sleep(poll_s)


def settle(turns: int = 20, pause_s: float = 0.02) -> None:
    """A few event-loop turns with pauses, so that pending layouts and paints land before a grab."""
    for _ in range(turns):
        QApplication.processEvents()
        time.sleep(pause_s)
