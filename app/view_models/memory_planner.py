"""The memory planner's jobs, without Qt: check the user's choice, send `plan_memory`, read the engine's answer.

The planner dialog only draws what this model says and forwards what the user does (its widgets'
values go into `request`, Plan calls `plan`); the job itself is sent and tracked like every other
job of the window (`JobSender`), so a crash or a stop while a plan runs ends it here, with a
sentence, and the Plan button comes back. A plan result can also be read without an engine
(`read`), which the tests and the dialog's own `show_result` use.

Events to listeners (`subscribe`) as (event, data):

    "planning"  text              a plan was sent; `running` is True until it ends
    "planned"   PlanViewModel     a plan was read: draw it
    "error"     (text, details)   the choice was refused, or the plan could not be sent, finished or read
"""

from __future__ import annotations

from typing import Any

from int8wb.app.view_models.jobs import JobSender, as_sentence
from int8wb.app.view_models.plan import PlanRequest, PlanViewModel
from int8wb.engine.errors import WorkbenchError
from int8wb.engine.link.client import EngineClient, EngineError, EngineState

PLANNING = "Planning… (a preset or config is built on the meta device; no weights are read)"


class MemoryPlanner(JobSender):
    """The planner dialog's request, its `plan_memory` job and the last plan read; see the module docstring."""

    def __init__(self, client: EngineClient, threshold: float | None = None) -> None:
        super().__init__(client)
        self.request = PlanRequest(threshold=threshold)
        self.has_model = False  # the window has a model loaded: it may be planned
        self.plan_view: PlanViewModel | None = None  # the last plan read, kept while a new one fails

    @property
    def running(self) -> bool:
        return self.job is not None

    def plan(self) -> str | None:
        """Send `plan_memory` for `request`; returns the job id, or None after an "error" event saying why."""
        try:
            self.request.check(self.has_model)
        except WorkbenchError as exc:
            return self._fail(str(exc))
        try:
            job = self.send("plan_memory", self.request.params())
        except EngineError as exc:
            return self._fail(f"{as_sentence(str(exc))} Then press Plan again.")
        except OSError as exc:
            return self._fail(f"Could not send the plan: {exc}")
        self._emit("planning", PLANNING)
        return job

    def read(self, result: dict[str, Any]) -> PlanViewModel:
        """Read a `plan_memory` result and tell the listeners; raises `BadInput` for a result without methods."""
        view = PlanViewModel(result)
        self.plan_view = view
        self._emit("planned", view)
        return view

    # --- engine events (GUI thread) ----------------------------------------------------------------

    def on_finished(self, job: str, request: str, result: dict[str, Any]) -> None:
        if self.finish(job) is None:
            return  # a job of the workbench's
        try:
            self.read(result)
        except (WorkbenchError, KeyError, TypeError, ValueError) as exc:
            self._fail(f"The engine's plan could not be read: {exc}")

    def on_failed(self, job: str, kind: str, message: str, traceback_text: str) -> None:
        if self.finish(job) is not None:
            self._fail(f"Plan failed ({kind}): {message}", traceback_text)

    def on_state(self, state: EngineState) -> None:
        if self.lose(state) is not None:
            self._fail(
                f"The engine {state.value} before the plan came back; "
                "restart it from the Engine menu and press Plan again."
            )

    def _fail(self, text: str, details: str = "") -> None:
        self._emit("error", (text, details))
        return None
