"""The Run workflow (`app.view_models.workbench.Workbench`) without a window and without Qt.

The fast tests drive it with `OfflineEngine` (tests/support/offline_engine.py), which answers like `EngineClient`
(one job at a time, refusals as `EngineError`) but sends nothing: each test
plays the engine's events by hand. The slow one runs the whole workflow through
a real engine on the default model, pumping the client's event queue.
"""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest

from int8wb.app.view_models.decode import RUN_DECODE_PARAMS
from int8wb.app.view_models.results import ResultsModel
from int8wb.app.view_models.scan_stats import ScanStatistics
from int8wb.app.view_models.threshold import ThresholdModel
from int8wb.app.view_models.workbench import CRASHED, RESTARTED, Step, Workbench
from int8wb.engine.link.client import EngineClient, EngineState, dispatch
from tests.support.offline_engine import OfflineEngine
from tests.support.scan_payloads import layer_payload


def make_workbench(engine=None) -> tuple[Workbench, list]:
    stats = ScanStatistics()
    workbench = Workbench(engine or OfflineEngine(), stats, ThresholdModel(stats), ResultsModel())
    events: list = []
    workbench.subscribe(lambda event, data: events.append((event, data)))
    return workbench, events


def finish(workbench: Workbench, result: dict) -> None:
    job = workbench.client.end_job()
    workbench.on_finished(job.id, job.request, result)


MODEL = {"name": "tiny", "layers": 2, "hidden_size": 8, "intermediate_size": 16, "dtype": "float32"}


def loaded_and_scanned() -> tuple[Workbench, list]:
    workbench, events = make_workbench()
    workbench.load_model(None)
    finish(workbench, MODEL)
    workbench.start_scan({"tokens": 64})
    job = workbench.client.active_job
    for index in range(2):
        workbench.on_scan_layer(job.id, layer_payload(index, index, "attn_in", np.full(8, 2.0), out_features=8))
    finish(workbench, {"layers": [], "threshold": 6.0})
    return workbench, events


def test_a_run_is_quantize_then_evaluate_then_plan_then_time_decoding_one_job_after_the_other():
    workbench, events = loaded_and_scanned()
    engine = workbench.client
    assert workbench.step() is Step.THRESHOLD
    workbench.threshold.set_threshold(3.0)
    assert workbench.step() is Step.RUN
    assert workbench.run_methods(["absmax-tensor", "llm-int8"], {"tokens": 128, "window": 64}) is not None
    assert engine.sent[-1] == ("quantize", {"methods": ["absmax-tensor", "llm-int8"], "threshold": 3.0, "alpha": 0.5})
    assert workbench.step() is Step.RUN and workbench.running
    finish(workbench, {"models": [{"method": "llm-int8", "int8_bytes": 10, "float_bytes": 5, "outlier_dims": 3}]})
    assert engine.sent[-1] == ("evaluate", {"methods": ["absmax-tensor", "llm-int8"], "tokens": 128, "window": 64})
    rows = [
        {"method": "baseline", "perplexity": 10.0},
        {"method": "llm-int8", "perplexity": 10.5, "relative_change": 0.05},
    ]
    finish(workbench, {"settings": {"tokens": 128}, "rows": rows})
    assert ("results", None) in events
    assert engine.sent[-1] == (
        "plan_memory",
        {"methods": ["baseline", "absmax-tensor", "llm-int8"], "gpus": ["A100-40GB", "A100-80GB"], "threshold": 3.0},
    )
    finish(workbench, {"methods": [{"method": "llm-int8", "gpus": [{"gpu": "A100-40GB", "needed": 1}]}]})
    assert engine.sent[-1] == ("bench_decode", {"methods": ["absmax-tensor", "llm-int8"], **RUN_DECODE_PARAMS})
    decoded = {"method": "llm-int8", "tokens_per_s": 12.5, "bound_tokens_per_s": 40.0, "text": " the", "diverges_at": 3}
    finish(workbench, {"settings": {"new_tokens": 32}, "copy_bandwidth": {}, "rows": [decoded]})
    assert not workbench.running and engine.active_job is None and len(engine.sent) == 6
    assert workbench.results.rows["llm-int8"].gpus == {"A100-40GB": 1}
    assert workbench.results.rows["llm-int8"].tokens_per_s == 12.5
    assert workbench.results.decode.rows[0].differs_text == "from token 4"
    assert workbench.step() is Step.EXPORT and workbench.quantized_methods() == ["llm-int8"]


def test_a_failed_step_ends_the_run_and_a_failed_plan_only_says_so():
    workbench, events = loaded_and_scanned()
    workbench.run_methods(["vectorwise"], {"tokens": 64})
    job = workbench.client.end_job()
    workbench.on_failed(job.id, "internal", "out of memory", "Traceback ...")
    assert not workbench.running and len(workbench.client.sent) == 3
    assert ("error", ("quantize failed", "out of memory", "Traceback ...")) in events
    workbench.run_methods(["vectorwise"], {"tokens": 64})
    finish(workbench, {"models": []})
    finish(workbench, {"rows": []})
    job = workbench.client.end_job()
    workbench.on_failed(job.id, "bad_input", "no cards", "")
    assert workbench.results.plan_note == "GPUs needed: not available (no cards)"
    assert not any(event == "error" and data[0] == "plan_memory failed" for event, data in events)


def test_refusals_say_why_and_send_nothing():
    workbench, events = make_workbench()
    assert workbench.start_scan({"tokens": 64}) is None
    assert events[-1] == ("log", ("Load a model before scanning it.", "warning"))
    workbench.model_info = MODEL
    assert workbench.run_methods([], {}) is None and "Tick at least one method" in events[-1][1][0]
    assert workbench.run_methods(["llm-int8"], {}) is None and "scan first" in events[-1][1][0]
    workbench.client.state = EngineState.STOPPED
    assert workbench.load_model(None) is None
    assert ("notice", ("The engine is stopped: start or restart it first.", 8000)) in events
    assert workbench.client.sent == []


def test_a_second_job_while_one_runs_is_refused_by_the_client():
    workbench, events = make_workbench()
    workbench.load_model(None)
    assert workbench.load_model("/models/other") is None
    assert events[-1] == ("log", ("The engine is busy with load_model: cancel it or wait.", "warning"))
    assert workbench.job.request == "load_model" and len(workbench.client.sent) == 1


def test_events_of_jobs_it_did_not_send_are_left_alone():
    workbench, events = loaded_and_scanned()
    workbench.start_scan({"tokens": 64})
    own = workbench.client.active_job
    workbench.on_scan_layer("planner-job", layer_payload(0, 0, "attn_in", np.full(8, 50.0)))
    workbench.on_finished("planner-job", "plan_memory", {"methods": [], "notes": ["70B"]})
    workbench.on_failed("planner-job", "bad_input", "no", "")
    assert workbench.stats.rows_filled == 0 and workbench.results.plan_note == ""
    assert workbench.job == own and not any(event == "error" for event, _ in events)


def test_a_cancelled_scan_is_not_finished_and_cancel_names_the_running_job():
    workbench, events = loaded_and_scanned()
    workbench.start_scan({"tokens": 64})
    workbench.cancel()
    assert workbench.client.cancelled == [workbench.job.id]
    job = workbench.client.end_job()
    workbench.on_failed(job.id, "cancelled", "cancelled", "")
    assert not workbench.stats.finished and ("notice", ("scan cancelled", 5000)) in events
    assert workbench.step() is Step.SCAN
    workbench.cancel()  # nothing runs: nothing to cancel
    assert len(workbench.client.cancelled) == 1


def test_a_crash_forgets_the_model_but_keeps_scan_and_results():
    workbench, _ = loaded_and_scanned()
    workbench.run_methods(["vectorwise"], {"tokens": 64})
    job = workbench.client.end_job()
    workbench.client.state = EngineState.CRASHED
    workbench.on_failed(job.id, "crashed", "the engine was killed by signal 9", "")
    workbench.on_state(EngineState.CRASHED)
    assert workbench.model_info is None and workbench.model_note == CRASHED and not workbench.running
    assert workbench.stats.finished and workbench.step() is Step.LOAD
    workbench.restart_engine()
    assert workbench.model_note == RESTARTED and len(workbench.client.started) == 1


def test_an_engine_stopped_under_a_run_ends_it():
    """A stopped engine (closed, or left for another) sends no failure for its job: the stop itself ends the Run."""
    workbench, _ = loaded_and_scanned()
    workbench.run_methods(["vectorwise"], {"tokens": 64})
    workbench.client.end_job()
    workbench.client.state = EngineState.STOPPED
    workbench.on_state(EngineState.STOPPED)
    assert workbench.job is None and not workbench.running
    assert workbench.model_info is not None  # a stop is not a crash: the window still shows the model


def test_the_first_ready_loads_the_chosen_model_once():
    workbench, _ = make_workbench()
    workbench.load_when_ready = {"model": "/models/last"}
    workbench.on_state(EngineState.READY)
    assert workbench.client.sent == [("load_model", {"model": "/models/last"})]
    assert workbench.model_note.startswith("Loading /models/last…")
    finish(workbench, MODEL)
    workbench.on_state(EngineState.BUSY)
    workbench.on_state(EngineState.READY)
    assert len(workbench.client.sent) == 1 and workbench.step() is Step.SCAN


def test_a_new_scan_keeps_the_widths_of_the_last_one():
    workbench, _ = make_workbench()
    workbench.model_info = {"layers": 2, "hidden_size": 8}
    workbench.lay_out_grid()
    workbench.stats.add_layer(layer_payload(0, 0, "mlp_down", np.ones(20)))
    assert workbench.stats.absmax_grid.shape == (8, 20)
    workbench.lay_out_grid(previous_scan_widths=True)
    assert workbench.stats.absmax_grid.shape == (8, 20)
    workbench.lay_out_grid()
    assert workbench.stats.absmax_grid.shape == (8, 8)


# --- through a real engine ----------------------------------------------------------------------------


def pump(client: EngineClient, workbench: Workbench, done, timeout_s: float) -> None:
    """Hand the client's queued events to the workflow, in this thread, until `done()`."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"not done within {timeout_s} s; job {workbench.job}"
        try:
            message = client.events.get(timeout=0.1)
        except queue.Empty:
            continue
        dispatch(message, workbench)


@pytest.mark.slow
@pytest.mark.heavy
def test_the_workflow_runs_through_a_real_engine_without_a_window():
    client = EngineClient()
    workbench, events = make_workbench(client)
    workbench.load_when_ready = {}
    client.start_local(timeout_s=120)
    try:
        workbench.on_state(client.state)
        assert workbench.job.request == "load_model"
        pump(client, workbench, lambda: workbench.model_info is not None, 300)
        assert workbench.model_info["layers"] == 30 and workbench.step() is Step.SCAN
        workbench.start_scan({"tokens": 128, "seq_len": 128})
        pump(client, workbench, lambda: workbench.stats.finished, 300)
        assert workbench.stats.rows_filled == 120 and workbench.step() is Step.THRESHOLD
        workbench.run_methods(["absmax-tensor", "llm-int8"], {"tokens": 128, "window": 128})
        pump(client, workbench, lambda: not workbench.running, 600)
        rows = workbench.results.rows
        assert list(rows) == ["baseline", "absmax-tensor", "llm-int8"], events
        assert all(row.perplexity is not None and row.gpus for row in rows.values())
        assert rows["llm-int8"].outlier_dims > 0 and workbench.step() is Step.EXPORT
        assert client.state is EngineState.READY and client.active_job is None
    finally:
        client.close()
