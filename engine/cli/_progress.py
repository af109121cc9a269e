"""A progress bar on stderr for CLI jobs that take more than a second."""

from __future__ import annotations

import sys
import time

from int8wb.engine.task import Task

BAR_WIDTH = 30
SHOW_AFTER_S = 1.0


class ProgressBarTask(Task):
    """Draws `[#####.....]  42%  message` on stderr, once the job has run for a second."""

    def __init__(self, label: str, stream=None, enabled: bool = True) -> None:
        super().__init__(min_interval_s=0.1)
        self.label, self.stream, self.enabled = label, stream or sys.stderr, enabled
        self.started = time.monotonic()
        self.drawn = False

    def _emit_progress(self, fraction: float, message: str) -> None:
        if not self.enabled or time.monotonic() - self.started < SHOW_AFTER_S:
            return
        filled = int(round(fraction * BAR_WIDTH))
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        self.stream.write(f"\r{self.label} [{bar}] {fraction:4.0%}  {message[:60]:<60}")
        self.stream.flush()
        self.drawn = True

    def _emit_log(self, message: str) -> None:
        if self.enabled:
            self.finish()
            self.stream.write(f"{self.label}: {message}\n")
            self.stream.flush()

    def finish(self) -> None:
        """End the bar's line so that what follows starts on a fresh one."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
