"""The `task` every engine capability receives: progress, partial results, cancellation.

An engine capability is a plain function `run(params, task) -> result`. The CLI,
the server and the tests call the same function; only the `Task` differs:

- the CLI's task draws a progress bar on stderr,
- the server's task sends `progress` and `scan_layer` events to the GUI,
- `Task()` itself ignores everything, which is what tests and library callers want.

Progress is a fraction in [0, 1] of the whole job. A sub-step reports on its
own 0..1 scale through `task.slice(start, end)`, which maps it onto its part of
the parent's range (Orange3's `wrap_callback`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from int8wb.engine.errors import Cancelled


class Task:
    """A job's link to whoever started it. Subclass and override the `_emit_*` hooks."""

    def __init__(self, min_interval_s: float = 0.05) -> None:
        self._cancel_event = threading.Event()
        self._min_interval_s = min_interval_s
        self._last_fraction = -1.0
        self._last_time = 0.0

    # --- what a job calls ---------------------------------------------------

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress; throttled to changes, and to one report per interval unless finished."""
        fraction = min(max(float(fraction), 0.0), 1.0)
        now = time.monotonic()
        moved = round(fraction, 3) != round(self._last_fraction, 3)
        due = now - self._last_time >= self._min_interval_s or fraction >= 1.0
        if moved and due:
            self._last_fraction, self._last_time = fraction, now
            self._emit_progress(fraction, message)

    def partial(self, kind: str, payload: dict[str, Any]) -> None:
        """Deliver part of the result early (for instance one layer's scan statistics)."""
        self._emit_partial(kind, payload)

    def log(self, message: str) -> None:
        """A line for the user's log."""
        self._emit_log(message)

    def cancelled(self) -> bool:
        """True once cancellation was requested; jobs ask between layers or batches."""
        return self._cancel_event.is_set()

    def check_cancelled(self) -> None:
        """Raise `Cancelled` if cancellation was requested."""
        if self._cancel_event.is_set():
            raise Cancelled("cancelled on request")

    def slice(self, start: float, end: float) -> TaskSlice:
        """A view of this task whose progress 0..1 maps onto [start, end] of this one."""
        return TaskSlice(self, start, end)

    # --- what the owner calls -----------------------------------------------

    def cancel(self) -> None:
        self._cancel_event.set()

    # --- hooks ---------------------------------------------------------------

    def _emit_progress(self, fraction: float, message: str) -> None:
        pass

    def _emit_partial(self, kind: str, payload: dict[str, Any]) -> None:
        pass

    def _emit_log(self, message: str) -> None:
        pass


class TaskSlice:
    """Forwards to a parent task, rescaling progress onto the parent's [start, end]."""

    def __init__(self, parent: Task | TaskSlice, start: float, end: float) -> None:
        self._parent, self._start, self._end = parent, start, end

    def progress(self, fraction: float, message: str = "") -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        self._parent.progress(self._start + (self._end - self._start) * fraction, message)

    def partial(self, kind: str, payload: dict[str, Any]) -> None:
        self._parent.partial(kind, payload)

    def log(self, message: str) -> None:
        self._parent.log(message)

    def cancelled(self) -> bool:
        return self._parent.cancelled()

    def check_cancelled(self) -> None:
        self._parent.check_cancelled()

    def slice(self, start: float, end: float) -> TaskSlice:
        return TaskSlice(self, start, end)


class CallbackTask(Task):
    """A task that hands every report to plain callables (used by the server and tests)."""

    def __init__(
        self,
        on_progress: Callable[[float, str], None] | None = None,
        on_partial: Callable[[str, dict[str, Any]], None] | None = None,
        on_log: Callable[[str], None] | None = None,
        min_interval_s: float = 0.05,
    ) -> None:
        super().__init__(min_interval_s)
        self._on_progress, self._on_partial, self._on_log = on_progress, on_partial, on_log

    def _emit_progress(self, fraction: float, message: str) -> None:
        if self._on_progress:
            self._on_progress(fraction, message)

    def _emit_partial(self, kind: str, payload: dict[str, Any]) -> None:
        if self._on_partial:
            self._on_partial(kind, payload)

    def _emit_log(self, message: str) -> None:
        if self._on_log:
            self._on_log(message)


class CancelOnly:
    """A view of a task that answers cancellation and drops everything else.

    For a sub-step that runs many times within one reported step (quantizing each decoder layer of a
    layer-by-layer pass, whose progress the loop reports): its own progress would jump back and forth.
    """

    def __init__(self, parent: Task | TaskSlice) -> None:
        self._parent = parent

    def progress(self, fraction: float, message: str = "") -> None:
        pass

    def partial(self, kind: str, payload: dict[str, Any]) -> None:
        pass

    def log(self, message: str) -> None:
        pass

    def cancelled(self) -> bool:
        return self._parent.cancelled()

    def check_cancelled(self) -> None:
        self._parent.check_cancelled()

    def slice(self, start: float, end: float) -> CancelOnly:
        return self
