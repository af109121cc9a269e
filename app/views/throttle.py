"""Coalesce bursts of model events into one refresh per interval on the UI thread.

A scan streams a few hundred `scan_layer` events, often several per event-loop
turn. Views whose refresh costs more than a row update (the histogram curves,
the threshold summary table) ask for a refresh on each event; the refresh runs
once when the interval has passed, with whatever statistics are there by then.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, QTimer


class Coalescer(QObject):
    """Runs `callback` at most once per `interval_ms`, however often `request` is called in between."""

    def __init__(self, callback: Callable[[], None], interval_ms: int, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._callback = callback
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(callback)

    def request(self) -> None:
        """Refresh within the interval (the first request of a burst starts the clock)."""
        if not self._timer.isActive():
            self._timer.start()

    def now(self) -> None:
        """Refresh at once (the state the user acts on must be current) and drop a pending request."""
        self._timer.stop()
        self._callback()

    def follow_scan(self, event: str, data: object) -> None:
        """A scan-statistics listener: a streamed row asks for a refresh within the interval; any other event
        (a new scan, its end, a file opened) refreshes at once."""
        if event == "row":
            self.request()
        else:
            self.now()
