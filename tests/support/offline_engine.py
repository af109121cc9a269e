"""An engine client that sends nothing, for the view models' tests without an engine or Qt.

`OfflineEngine` answers like `engine.link.client.EngineClient` (one job at a time, refusals as
`EngineError`) and records what was submitted; each test plays the engine's events by hand
(`end_job`, then the view model's `on_finished` / `on_failed`).
"""

from __future__ import annotations

from int8wb.engine.link.client import EngineError, EngineState, Job


class OfflineEngine:
    """The surface of `EngineClient` the workflow uses; jobs are recorded, never sent."""

    def __init__(self) -> None:
        self.state = EngineState.READY
        self.active_job: Job | None = None
        self.version_mismatch: str | None = None
        self.sent: list[tuple[str, dict]] = []
        self.cancelled: list[str] = []
        self.started: list[object] = []
        self.remote = False

    def submit(self, request: str, params: dict) -> str:
        if self.active_job is not None:
            raise EngineError("busy", f"the engine is busy with {self.active_job.request}: cancel it or wait")
        if self.state is not EngineState.READY:
            raise EngineError("not_running", f"the engine is {self.state.value}: start or restart it first")
        self.active_job = Job(f"job-{len(self.sent)}", request)
        self.sent.append((request, params))
        return self.active_job.id

    def end_job(self) -> Job:
        job, self.active_job = self.active_job, None
        return job

    def cancel(self, target: str) -> None:
        self.cancelled.append(target)

    def start_in_background(self, start) -> None:
        self.started.append(start)

    start_local = restart = None  # only passed on to start_in_background
