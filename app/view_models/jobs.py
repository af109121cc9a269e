"""Engine jobs from the window, without Qt: how a view model sends a job and knows the events that are its own.

The engine runs one job at a time, and `EngineClient.submit` alone decides whether one may start.
Every view model that sends jobs (the workflow's `Workbench`, the memory planner's `MemoryPlanner`)
is a `JobSender`: it keeps the job it sent and answers only that job's events, so a plan the
planner asked for never lands in the Run's results and a scan never in the planner. When the
engine crashes, the running job gets a "crashed" failure (engine.link.client); when the engine is
stopped or left for another, no failure comes, and `lose` ends the job on that state instead.

Engine events come in through the sender's `on_*` methods in the GUI thread
(`QtEngineClient.connect_listener` wires them; tests call them directly). What the window should
show goes out to listeners (`subscribe`) as (event, data); each sender documents its events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from int8wb.engine.link.client import EngineClient, EngineState, Job

REQUEST_LABELS = {
    "load_model": "Loading the model",
    "scan": "Scanning",
    "quantize": "Quantizing",
    "evaluate": "Evaluating",
    "plan_memory": "Planning GPUs",
    "bench_decode": "Timing decoding",
    "export": "Exporting",
    "sensitivity": "Measuring sensitivity",
    "task_accuracy": "Scoring tasks",
    "super_weights": "Finding the super weight",
}


def as_sentence(text: str) -> str:
    """An engine or client message as a sentence for the status bar: capital first, full stop last."""
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "?", "!")) else ".")


class JobSender:
    """The job one view model sent and waits for, and the listeners it tells what to show."""

    def __init__(self, client: EngineClient) -> None:
        self.client = client
        self.job: Job | None = None  # the job this sender sent and waits for
        self._listeners: list[Callable[[str, Any], None]] = []

    def subscribe(self, listener: Callable[[str, Any], None]) -> None:
        self._listeners.append(listener)

    def _emit(self, event: str, data: Any = None) -> None:
        for listener in list(self._listeners):
            listener(event, data)

    def send(self, request: str, params: dict[str, Any]) -> str:
        """Submit `request`; it becomes this sender's job. Raises `EngineError` when the engine cannot take it now."""
        job = self.client.submit(request, params)
        self.job = Job(job, request)
        return job

    def ours(self, job: str) -> bool:
        return self.job is not None and job == self.job.id

    def finish(self, job: str) -> Job | None:
        """The job a result or failure for `job` ends, if it is this sender's (then it waits no more); else None."""
        if not self.ours(job):
            return None
        finished, self.job = self.job, None
        return finished

    def lose(self, state: EngineState) -> Job | None:
        """The job an engine that crashed or stopped will never answer, dropped; None in any other state."""
        if state not in (EngineState.CRASHED, EngineState.STOPPED) or self.job is None:
            return None
        lost, self.job = self.job, None
        return lost
