"""The workflow behind the window, without Qt: Load -> Scan -> pick the threshold -> Run -> Export.

It owns what belongs to the workflow: the loaded model's description, the job
it sent and waits for, and the rest of a Run (quantize, then evaluate, then
plan the GPUs, then time greedy decoding: one job after the other, as the
engine runs one at a time).
The engine's own state and its running job belong to the `EngineClient`: this
model asks it, and `EngineClient.submit` alone decides whether a job may start.

Engine events come in through the `on_*` methods in the GUI thread (the window
connects them to the Qt client's signals; tests call them, or
`engine.link.client.dispatch`, directly), so nothing here needs a window. What the
window should show goes out to listeners (`subscribe`) as (event, data):

    "changed"   None                          state, model, job or step changed
    "log"       (text, level)                 a line for the log
    "notice"    (text, milliseconds)          a short message for the status bar
    "error"     (title, message, details)     a failure to show in a dialog
    "progress"  (label, fraction, message)    the running job's progress
    "results"   None                          an evaluation arrived: show the results
    "sensitivity" result                      a sensitivity sweep finished (engine.measure.sensitivity's result)
    "super_weights" result                    the super weight experiment finished (engine.measure.super_weight's)
"""

from __future__ import annotations

import enum
from typing import Any

from int8wb.app.view_models.decode import RUN_DECODE_PARAMS
from int8wb.app.view_models.jobs import REQUEST_LABELS, JobSender, as_sentence
from int8wb.app.view_models.layer_errors import LayerErrors
from int8wb.app.view_models.residual_stream import ResidualStream
from int8wb.app.view_models.results import ResultsModel
from int8wb.app.view_models.scan_stats import ScanStatistics
from int8wb.app.view_models.task_accuracy import TaskAccuracy
from int8wb.app.view_models.threshold import ThresholdModel
from int8wb.engine.link.client import EngineClient, EngineError, EngineState
from int8wb.engine.vocabulary import (
    BASELINE,
    DEFAULT_ALPHA,
    EXPORT_FORMATS,
    FLOAT_BYTES,
    KIND_ORDER,
    NEEDS_SCAN,
    RESULT_GPUS,
)

NO_MODEL = "No model loaded."
LOADING_DEFAULT = "the embedded default model (its first load converts it, about 30 s)"
RESTARTED = "No model loaded (the engine was restarted): load it again."
CRASHED = "The engine stopped: restart it and load the model again. The scan and results shown stay as they were."


class Step(enum.Enum):
    """The workflow's steps, in order; the window's step bar shows them."""

    LOAD = "Load"
    SCAN = "Scan"
    THRESHOLD = "Pick the threshold"
    RUN = "Run"
    EXPORT = "Export"


STEP_HELP = {
    Step.LOAD: "Load a model: the embedded default, a Hugging Face directory or a GGUF file.",
    Step.SCAN: "Run calibration text through the model and record the largest activation of every input "
    "dimension of every Linear layer.",
    Step.THRESHOLD: "Choose which dimensions count as outliers: those over the threshold stay in floating point. "
    "The heatmap and the summary follow at once.",
    Step.RUN: "Quantize with the ticked methods, measure perplexity against the floating-point baseline and "
    "count the GPUs each needs, then time their greedy decoding.",
    Step.EXPORT: "Save a quantized model as safetensors that transformers + bitsandbytes load.",
}

STEP_OF_REQUEST = {
    "load_model": Step.LOAD,
    "scan": Step.SCAN,
    "quantize": Step.RUN,
    "evaluate": Step.RUN,
    "plan_memory": Step.RUN,
    "bench_decode": Step.RUN,
    "export": Step.EXPORT,
    "sensitivity": Step.RUN,
    "task_accuracy": Step.RUN,
    "super_weights": Step.RUN,
}


class Workbench(JobSender):
    """Actions (load, scan, run, export, cancel, engine start) and engine events; see the module docstring."""

    def __init__(
        self,
        client: EngineClient,
        stats: ScanStatistics,
        threshold: ThresholdModel,
        results: ResultsModel,
        errors: LayerErrors | None = None,
    ) -> None:
        super().__init__(client)
        self.stats, self.threshold, self.results = stats, threshold, results
        self.errors = errors or LayerErrors(stats)
        self.residual = ResidualStream()  # the scan's token axis: the residual stream per layer and token
        self.skip_modules: list[str] = []  # Linears the next Run's quantize keeps in floating point
        self.skip_source = ""  # where that list came from, in words
        self.model_info: dict[str, Any] | None = None
        self.model_note = NO_MODEL  # what the model panel says while no model is loaded
        self.pending: list[tuple[str, dict[str, Any]]] = []  # the rest of a Run: evaluate, plan_memory
        self.load_when_ready: dict[str, Any] | None = None  # load_model params for the engine's first READY
        self.threshold_chosen = False  # the threshold was moved since the last scan
        self.allow_remote_code = False  # the local engine may run the code a model ships (the user's setting)
        self.exported_to: str | None = None
        self.alpha = DEFAULT_ALPHA  # SmoothQuant's alpha for the next Run (the SmoothQuant panel's slider)
        self.super_weights: dict[str, Any] | None = None  # the last super weight experiment on this model
        self.keep_super_weights = False  # the next Run keeps the super weights it found in floating point
        threshold.subscribe(self._on_threshold)

    # --- what the window shows ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.client.state is EngineState.READY

    @property
    def loaded(self) -> bool:
        """A model is loaded and the engine is ready for the next job."""
        return self.ready and self.model_info is not None

    @property
    def running(self) -> bool:
        """A job of this workbench runs, or a Run has steps left."""
        return self.job is not None or bool(self.pending)

    def step(self) -> Step:
        """The step the user is at: the running job's, else the first one not done yet."""
        if self.job is not None:
            return STEP_OF_REQUEST[self.job.request]
        if self.pending:
            return Step.RUN
        if self.model_info is None:
            return Step.LOAD
        if self.results.has_evaluation:
            return Step.EXPORT
        if self.stats.finished:
            return Step.RUN if self.threshold_chosen else Step.THRESHOLD
        return Step.SCAN

    def quantized_methods(self) -> list[str]:
        """The methods of the last Run that export can save."""
        return [m for m, row in self.results.rows.items() if m != BASELINE and row.int8_bytes]

    # --- actions -----------------------------------------------------------------------------------

    def start_engine(self) -> None:
        """Start the local engine in the background; READY arrives through `on_state`."""
        self._log("starting the engine")
        self.client.start_in_background(lambda: self.client.start_local(allow_remote_code=self.allow_remote_code))

    def connect_file(self, path: str) -> None:
        """Leave the current engine for the remote one a connection file names."""
        self._log(f"connecting to the engine of {path}")
        self._forget_model(NO_MODEL)
        self.client.start_in_background(lambda: self.client.connect(path))

    def restart_engine(self) -> None:
        self._log("restarting the engine")
        self._forget_model(RESTARTED)
        if self.client.remote:
            self.client.start_in_background(self.client.restart)
        else:  # a local engine starts with the current remote-code setting
            self.start_engine()

    def load_model(self, path: str | None, offload: str = "auto") -> str | None:
        """Load a model directory, GGUF file or hub id; None loads the embedded default model.

        `offload` (engine.vocabulary.OFFLOAD_MODES): in memory, layer by layer from disk, or as the engine judges.
        """
        return self._submit("load_model", {**({"model": path} if path else {}), "offload": offload})

    def start_scan(self, params: dict[str, Any]) -> str | None:
        if self.model_info is None:
            return self.refuse("Load a model before scanning it.")
        smoothing = {"alpha": self.alpha} if params.get("error_methods") else {}  # the error pass's smoothquant
        job = self._submit("scan", {**params, "threshold": self.threshold.threshold, **smoothing})
        if job is not None:
            self.errors.begin(params.get("error_methods") or ())
            self.lay_out_grid(previous_scan_widths=True)
        return job

    def run_sensitivity(self, params: dict[str, Any]) -> str | None:
        """The sensitivity sweep (engine.measure.sensitivity) at the current threshold; its result comes as
        a "sensitivity" event."""
        if self.model_info is None:
            return self.refuse("Load a model before measuring which Linears to keep in floating point.")
        if params.get("method") in NEEDS_SCAN and not self.stats.finished:
            return self.refuse(f"{params['method']} takes its outlier dimensions from a scan: scan first.")
        return self._submit("sensitivity", {**params, "threshold": self.threshold.threshold})

    def run_super_weights(self, params: dict[str, Any] | None = None) -> str | None:
        """The super weight experiment (engine.measure.super_weight); its result comes as a "super_weights" event."""
        if self.model_info is None:
            return self.refuse("Load a model before looking for its super weight.")
        return self._submit("super_weights", dict(params or {}))

    def set_keep_super_weights(self, keep: bool) -> None:
        """Keep the found super weights in floating point from the next Run on (refused until one was found)."""
        if keep and not (self.super_weights or {}).get("super_weights"):
            self.refuse("No super weight found yet: run the super weight experiment first.")
            keep = False
        self.keep_super_weights = keep
        self._changed()

    def set_skip_list(self, modules: list[str], source: str = "") -> None:
        """Keep `modules` in floating point from the next Run on (so in its export too); [] quantizes all."""
        self.skip_modules, self.skip_source = list(modules), source if modules else ""
        self._emit("notice", (self.skip_note() or "The next Run quantizes every Linear.", 10000))
        self._changed()

    def skip_note(self) -> str:
        """What the window says about the skip list ("" when there is none)."""
        if not self.skip_modules:
            return ""
        count = len(self.skip_modules)
        source = f" ({self.skip_source})" if self.skip_source else ""
        return (
            f"The next Run keeps {count} Linear{'' if count == 1 else 's'} in floating point{source}; "
            f"its export writes {'it' if count == 1 else 'them'} in floating point and lists "
            f"{'it' if count == 1 else 'them'} in llm_int8_skip_modules."
        )

    def run_methods(self, methods: list[str], eval_params: dict[str, Any]) -> str | None:
        """Quantize with `methods`, evaluate them, plan their GPUs, time their decoding (one job after the other);
        with `eval_params["tasks"]` (lm-eval task names or a task YAML), score them on those tasks last."""
        if self.model_info is None:
            return self.refuse("Load a model before quantizing it.")
        if not methods:
            return self.refuse("Tick at least one method.")
        if any(m in NEEDS_SCAN for m in methods) and not self.stats.finished:
            return self.refuse(
                "Static LLM.int8() and SmoothQuant take what they need from a scan: scan first, "
                "or tick the dynamic variant."
            )
        threshold = self.threshold.threshold
        skip = {"skip_modules": list(self.skip_modules)} if self.skip_modules else {}
        skip.update({"keep_super_weights": True} if self.keep_super_weights else {})
        job = self._submit("quantize", {"methods": methods, "threshold": threshold, "alpha": self.alpha, **skip})
        if job is not None:
            evaluate = {key: value for key, value in eval_params.items() if key != "tasks"}
            tasks = (
                [("task_accuracy", {"methods": methods, "tasks": eval_params["tasks"]})]
                if eval_params.get("tasks")
                else []
            )
            self.pending = [
                ("evaluate", {"methods": methods, **evaluate}),
                ("plan_memory", {"methods": [BASELINE, *methods], "gpus": list(RESULT_GPUS), "threshold": threshold}),
                ("bench_decode", {"methods": methods, **RUN_DECODE_PARAMS}),
                *tasks,
            ]
        return job

    def export_to(self, method: str, path: str, fmt: str = EXPORT_FORMATS[0]) -> str | None:
        return self._submit("export", {"method": method, "out": path, "format": fmt})

    def cancel(self) -> None:
        """Cancel whatever job the engine runs (this workbench's or the planner's)."""
        running = self.client.active_job
        if running is not None:
            self._log("cancelling the running job")
            self.client.cancel(running.id)

    def lay_out_grid(self, previous_scan_widths: bool = False) -> None:
        """Lay the heatmap out for the loaded model so rows fill in place as layers arrive.

        The MLP down projection reads the intermediate width: taken from the
        model's description when it has one, and before a new scan from the
        previous scan of the same model, so that the scan does not widen (and
        so redraw) the grid midway.
        """
        info = self.model_info or {}
        layers, hidden = info.get("layers"), info.get("hidden_size")
        if not (isinstance(layers, int) and isinstance(hidden, int)):
            self.stats.clear()
            return
        widths = {kind: hidden for kind in KIND_ORDER[:4]}
        if isinstance(info.get("intermediate_size"), int):
            widths["mlp_down"] = info["intermediate_size"]
        for linear in self.stats.linears if previous_scan_widths else ():
            if linear.kind in widths:
                widths[linear.kind] = max(widths[linear.kind], linear.absmax.size)
        self.stats.configure(layers, widths)

    # --- engine events (GUI thread) ----------------------------------------------------------------

    def on_state(self, state: EngineState) -> None:
        self._log(f"engine {state.value}")
        if state is EngineState.READY and self.client.version_mismatch:
            self._log(self.client.version_mismatch, "warning")
            self._emit("notice", (self.client.version_mismatch, 30000))
        if self.lose(state) is not None:
            self.pending = []  # a stopped engine ends the Run: nothing will answer its job
        if state is EngineState.CRASHED:
            self._forget_model(CRASHED)
        self._changed()
        if state is EngineState.READY and self.load_when_ready is not None and self.model_info is None:
            params, self.load_when_ready = self.load_when_ready, None
            self._submit("load_model", params)

    def on_progress(self, job: str, fraction: float, message: str) -> None:
        if self.ours(job):
            self._emit("progress", (REQUEST_LABELS[self.job.request], fraction, message))

    def on_scan_layer(self, job: str, payload: dict[str, Any]) -> None:
        if self.ours(job) and self.job.request == "scan":
            self.stats.add_layer(payload)
            self.errors.add_layer(payload)

    def on_log(self, level: str, text: str) -> None:
        self._log(text, level)

    def on_finished(self, job: str, request: str, result: dict[str, Any]) -> None:
        finished = self.finish(job)
        if finished is None:
            return  # a job this workbench did not send (the memory planner's)
        request = finished.request
        self._log(f"{request} finished")
        if request == "load_model":
            self._loaded(result)
        elif request == "scan":
            self.stats.load_result(result)
            self.errors.load_result(result)
            self.residual.load_result(result)
            self.threshold_chosen = False
        elif request == "quantize":
            self.results.add_quantized(result)
        elif request == "evaluate":
            self.results.add_evaluation(result)
            self._emit("results")
        elif request == "plan_memory":
            self.results.add_plan(result)
        elif request == "bench_decode":
            self.results.add_decode(result)
        elif request == "export":
            self._exported(result)
        elif request == "task_accuracy":
            self.results.set_tasks(TaskAccuracy(result))
        elif request == "sensitivity":
            self._emit("sensitivity", result)
        elif request == "super_weights":
            self.super_weights = result
            self._emit("super_weights", result)
        self._next_step()
        self._changed()

    def on_failed(self, job: str, kind: str, message: str, traceback_text: str) -> None:
        finished = self.finish(job)
        if job and finished is None:
            return  # the memory planner shows its own errors; failures to start the engine have no job
        request = finished.request if finished else "engine"
        self.pending = []  # a failed step ends the Run
        if request == "load_model":
            self.model_note = NO_MODEL
        if request == "plan_memory":
            self.results.set_plan_unavailable(message)
            self._log(f"plan_memory failed ({kind}): {message}", "warning")
        elif kind == "cancelled":
            self._log(f"{request} cancelled")
            self._emit("notice", (f"{request} cancelled", 5000))
            if request == "scan":
                self.stats.finished = False
        else:
            self._log(f"{request} failed ({kind}): {message}", "error")
            self._emit("error", (f"{request} failed", message, traceback_text))
        self._changed()

    # --- helpers -----------------------------------------------------------------------------------

    def _submit(self, request: str, params: dict[str, Any]) -> str | None:
        try:
            job = self.send(request, params)
        except EngineError as exc:
            self.pending = []
            return self.refuse(as_sentence(str(exc)))
        if request == "load_model":
            self.model_note = f"Loading {params.get('model') or LOADING_DEFAULT}…"
        self._emit("progress", (REQUEST_LABELS[request], 0.0, ""))
        self._log(f"{request} " + ", ".join(f"{k}={v}" for k, v in params.items() if v is not None))
        self._changed()
        return job

    def _next_step(self) -> None:
        if self.pending:
            request, params = self.pending.pop(0)
            self._submit(request, params)

    def _loaded(self, info: dict[str, Any]) -> None:
        self.model_info = info
        self.threshold.float_bytes = FLOAT_BYTES.get(info.get("dtype"), 2)
        self.results.clear()
        self.exported_to = None
        self.errors.begin(())
        self.skip_modules, self.skip_source = [], ""
        self.super_weights, self.keep_super_weights = None, False
        self.lay_out_grid()

    def _exported(self, result: dict[str, Any]) -> None:
        self.exported_to = str(result.get("path"))
        megabytes = result.get("total_bytes", 0) / 1e6
        text = f"exported {result.get('method')} to {self.exported_to} ({megabytes:,.1f} MB)"
        self._log(text)
        self._emit("notice", (text, 15000))

    def _forget_model(self, note: str) -> None:
        self.model_info, self.model_note, self.pending = None, note, []

    def _on_threshold(self, _threshold: float) -> None:
        if self.stats.finished and not self.threshold_chosen:
            self.threshold_chosen = True
            self._changed()

    def refuse(self, message: str) -> None:
        """Say why an action cannot be done now (status bar and log); returns None, as the action does."""
        self._emit("notice", (message, 8000))
        self._log(message, "warning")
        return None

    def _log(self, text: str, level: str = "info") -> None:
        self._emit("log", (text, level))

    def _changed(self) -> None:
        self._emit("changed")
