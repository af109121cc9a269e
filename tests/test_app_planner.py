"""The memory planner dialog: its Qt-free view model on real planner results, the dialog offscreen, one real engine."""

from __future__ import annotations

import json
import math

import pytest

from int8wb.app.view_models.memory_planner import MemoryPlanner
from int8wb.app.view_models.plan import (
    SOURCE_CONFIG,
    SOURCE_MODEL,
    SOURCE_PRESET,
    PlanRequest,
    PlanViewModel,
    format_bytes,
    list_presets,
)
from int8wb.engine.errors import BadInput
from int8wb.engine.link.client import EngineState, Job
from int8wb.engine.vocabulary import METHODS
from tests.support.offline_engine import OfflineEngine

GIB = 1024**3


@pytest.fixture(scope="module")
def plan_70b():
    """A real `plan_memory` result for the Llama 2 70B preset at the defaults (context 4096, batch 1)."""
    from int8wb.engine.planning import plan_memory
    from int8wb.engine.task import Task

    return plan_memory.run({"preset": "llama-2-70b"}, Task())


def qt_shaped(result):
    """The result as it arrives through a Qt dict signal: every mapping's keys sorted (a QVariantMap)."""
    return json.loads(json.dumps(result, sort_keys=True))


# --- the view model -------------------------------------------------------------------------------


def test_presets_are_the_engines_smallest_first():
    from int8wb.engine.planning import presets

    names = [preset.name for preset in list_presets()]
    assert names == [row["name"] for row in presets.list_presets()]
    assert "llama-2-70b" in names and "opt-175b" in names
    sizes = [preset.parameters for preset in list_presets()]
    assert sizes == sorted(sizes)


def test_bad_choices_are_refused_with_a_sentence(tmp_path):
    cases = [
        (PlanRequest(source=SOURCE_MODEL), False, "no model is loaded"),
        (PlanRequest(source=SOURCE_CONFIG, config_path="  "), True, "choose a config.json"),
        (PlanRequest(source=SOURCE_CONFIG, config_path=str(tmp_path / "missing.json")), True, "no config.json at"),
        (PlanRequest(source=SOURCE_CONFIG, config_path=str(tmp_path)), True, "no config.json at"),
        (PlanRequest(source=SOURCE_PRESET, preset=""), True, "pick a preset"),
        (PlanRequest(context=0), True, "context must be a whole number"),
        (PlanRequest(batch=-2), True, "batch must be a whole number"),
        (PlanRequest(usable_fraction=0.0), True, "usable fraction"),
        (PlanRequest(outlier_fraction=1.5), True, "outlier fraction"),
        (PlanRequest(source="somewhere"), True, "unknown source"),
    ]
    for request, has_model, message in cases:
        with pytest.raises(BadInput, match=message):
            request.check(has_model)


def test_params_name_exactly_one_source(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    preset = PlanRequest(preset="opt-66b", context=2048, batch=4, usable_fraction=0.85, outlier_fraction=0.01)
    preset.check(has_model=False)
    assert preset.params() == {
        "preset": "opt-66b",
        "context": 2048,
        "batch": 4,
        "usable_fraction": 0.85,
        "outlier_fraction": 0.01,
    }
    config = PlanRequest(source=SOURCE_CONFIG, config_path=str(tmp_path))
    config.check(has_model=False)  # a directory holding config.json is accepted
    assert config.params()["config"] == str(tmp_path) and "preset" not in config.params()
    loaded = PlanRequest(source=SOURCE_MODEL, threshold=4.0)
    loaded.check(has_model=True)
    params = loaded.params()
    assert "preset" not in params and "config" not in params and params["threshold"] == 4.0


def test_rows_give_the_seeds_answer_for_70b(plan_70b):
    view = PlanViewModel(qt_shaped(plan_70b))
    assert view.gpus == ["A100-40GB", "A100-80GB", "H100-80GB", "H200-141GB"]
    assert view.methods[0] == "baseline" and "llm-int8" in view.methods
    cells = {row.method: [row.cell(gpu) for gpu in view.gpus] for row in view.rows}
    assert cells["baseline"][:2] == ["4", "2"]  # FP16: 4 x A100-40GB, 2 x A100-80GB
    assert cells["vectorwise"][:2] == ["2", "1"]  # INT8: 2 x A100-40GB
    assert cells["llm-int8"][0] == "2"
    assert "llama-2-70b (preset)" in view.title() and "68.98 B parameters" in view.title()
    assert "context 4,096 × batch 1" in view.settings_line() and "90% of each card usable" in view.settings_line()


def test_breakdown_terms_add_up_to_the_count(plan_70b):
    view = PlanViewModel(qt_shaped(plan_70b))
    terms = {term.label: term for term in view.breakdown("baseline", "A100-40GB")}
    weights, kv, state = terms["Weights"], terms["KV cache"], terms["State to place"]
    assert sum(child.bytes for child in weights.children) == weights.bytes
    assert [child.label for child in weights.children] == ["float weight", "float (not quantized)"]  # planner order
    assert state.bytes == weights.bytes + kv.bytes
    assert kv.bytes == 2 * 80 * 1 * 4096 * 8 * 128 * 2
    budget = terms["Budget per A100-40GB"]
    parts = {child.label: child for child in budget.children}
    assert parts["capacity"].bytes == 40 * GIB
    assert parts["usable"].bytes == int(40 * GIB * 0.9)
    assert parts["usable"].bytes + parts["runtime overhead"].bytes + parts["activation workspace"].bytes == budget.bytes
    workspace = parts["activation workspace"]
    assert [c.label for c in workspace.children] == ["residual", "block"]
    assert sum(c.bytes for c in workspace.children) == workspace.bytes < 0
    count = terms["4 × A100-40GB"]
    assert math.ceil(state.bytes / budget.bytes) == 4
    notes = {child.label: child.note for child in count.children}
    assert notes["state ÷ budget"].endswith("= 3.79 → 4 if layers could be cut anywhere")
    assert "still fit on 4 × A100-40GB" in notes["longest context"]
    int8 = {term.label for term in view.breakdown("llm-int8", "A100-40GB")}
    assert "2 × A100-40GB" in int8
    llm = {c.label: c.bytes for c in view.breakdown("llm-int8", "A100-40GB")[0].children}
    assert llm["outlier weight"] > 0 and llm["outlier indices"] > 0 and llm["scales"] > 0


def test_a_card_that_cannot_hold_one_layer_says_why():
    from int8wb.engine.planning import plan_memory
    from int8wb.engine.task import Task

    result = plan_memory.run(
        {"preset": "llama-2-70b", "context": 1 << 20, "batch": 8, "methods": ["baseline"], "gpus": ["A100-40GB"]},
        Task(),
    )
    view = PlanViewModel(qt_shaped(result))
    assert view.rows[0].cell("A100-40GB") == "does not fit"
    last = view.breakdown("baseline", "A100-40GB")[-1]
    assert last.label == "A100-40GB: does not fit" and "exceed" in last.note
    assert any("longer than the 4096 positions" in note for note in view.notes())


def test_a_result_without_methods_is_refused():
    with pytest.raises(BadInput, match="no methods"):
        PlanViewModel({"methods": []})
    with pytest.raises(BadInput, match="no method 'int4'"):
        PlanViewModel({"methods": [{"method": "baseline", "total_bytes": 1, "gpus": []}]}).breakdown(
            "int4", "A100-40GB"
        )


def test_bytes_are_shown_in_binary_units():
    assert format_bytes(4 * GIB) == "4.00 GiB"
    assert format_bytes(-800 * 1024**2) == "−800.00 MiB"
    assert format_bytes(2240) == "2.19 KiB"
    assert format_bytes(12) == "12 B"
    assert format_bytes(None) == "—"


# --- the dialog, offscreen ------------------------------------------------------------------------


@pytest.fixture
def dialog(planner_dialog):
    """The planner dialog offscreen, with an engine client that is not started (tests/conftest.py)."""
    return planner_dialog


def test_dialog_shows_the_table_and_the_terms_of_the_selected_cell(dialog, plan_70b):
    dialog.show_result(qt_shaped(plan_70b))
    table = dialog.table
    assert table.rowCount() == 1 + len(METHODS) and table.columnCount() == 2 + 4  # the baseline and each method
    assert table.horizontalHeaderItem(2).text() == "A100-40GB\nGPUs needed"
    assert table.item(0, 0).text() == "FP16 (baseline)" and table.item(0, 2).text() == "4"
    assert dialog.breakdown_caption.text() == "Why 4 × A100-40GB for FP16 (baseline)"
    labels = [dialog.tree.topLevelItem(i).text(0) for i in range(dialog.tree.topLevelItemCount())]
    assert labels == ["Weights", "KV cache", "State to place", "Budget per A100-40GB", "4 × A100-40GB"]
    tips = [dialog.tree.topLevelItem(i).toolTip(0) for i in range(dialog.tree.topLevelItemCount())]
    assert all(len(tip) > 30 for tip in tips), tips  # each planner term says what it is
    assert dialog.tree.topLevelItem(1).text(1) == "1.25 GiB"
    vectorwise = PlanViewModel(plan_70b).methods.index("vectorwise")
    table.setCurrentCell(vectorwise, 3)  # the user clicks INT8 vector-wise on A100-80GB
    assert dialog.selected == ("vectorwise", "A100-80GB")
    assert dialog.breakdown_caption.text() == "Why 1 × A100-80GB for vector-wise W8A8"
    table.setCurrentCell(0, 1)  # the total column keeps the card
    assert dialog.selected == ("baseline", "A100-80GB")
    dialog.show_result(qt_shaped(plan_70b))  # a new plan keeps the selection
    assert dialog.selected == ("baseline", "A100-80GB")


def test_dialog_refuses_what_it_cannot_plan_without_crashing(dialog, tmp_path):
    assert not dialog.radio_model.isEnabled()
    assert dialog.plan() is None  # the engine was never started
    assert "The engine is stopped" in dialog.status.text() and dialog.planner.job is None
    dialog.radio_config.setChecked(True)
    dialog.config_edit.setText(str(tmp_path / "nothing.json"))
    assert dialog.plan() is None and "no config.json at" in dialog.status.text()
    dialog.set_has_model(True)
    dialog.radio_model.setChecked(True)
    dialog.set_has_model(False)  # the model went away: back to a preset
    assert dialog.radio_preset.isChecked()
    dialog.context_spin.setValue(8192)
    dialog.outlier_spin.setValue(1.0)
    request = dialog.read_request()
    assert (request.source, request.context, request.outlier_fraction) == (SOURCE_PRESET, 8192, 0.01)


def test_dialog_draws_what_its_view_model_says(dialog, plan_70b):
    planner = dialog.planner
    planner.job = Job("job-1", "plan_memory")  # as if Plan had been pressed
    planner.on_finished("other-job", "scan", qt_shaped(plan_70b))
    assert planner.plan_view is None and planner.running
    planner.on_failed("job-1", "bad_input", "the config of x lacks hidden_size", "Traceback ...")
    assert "lacks hidden_size" in dialog.status.text() and dialog.status.toolTip() == "Traceback ..."
    assert dialog.plan_button.isEnabled()
    planner.job = Job("job-2", "plan_memory")
    planner.on_finished("job-2", "plan_memory", qt_shaped(plan_70b))
    assert dialog.table.item(0, 2).text() == "4" and dialog.plan_button.isEnabled()
    planner.job = Job("job-3", "plan_memory")
    planner.on_state(EngineState.CRASHED)
    assert "crashed" in dialog.status.text() and dialog.table.item(0, 2).text() == "4"  # the last plan stays


# --- the planner's jobs, without Qt ---------------------------------------------------------------


def offline_planner() -> tuple[MemoryPlanner, list]:
    planner = MemoryPlanner(OfflineEngine())
    events: list = []
    planner.subscribe(lambda event, data: events.append((event, data)))
    return planner, events


def test_the_planner_sends_plan_memory_and_reads_only_its_own_answer(plan_70b):
    planner, events = offline_planner()
    planner.request.preset = "llama-2-70b"
    job = planner.plan()
    assert planner.client.sent == [("plan_memory", planner.request.params())] and planner.running
    assert events[-1][0] == "planning"
    planner.on_finished("a-workbench-job", "quantize", {"methods": []})
    planner.on_failed("a-workbench-job", "bad_input", "no", "")
    assert planner.running and planner.plan_view is None and [event for event, _ in events] == ["planning"]
    planner.client.end_job()
    planner.on_finished(job, "plan_memory", qt_shaped(plan_70b))
    assert not planner.running and events[-1] == ("planned", planner.plan_view)
    assert planner.plan_view.rows[0].cell("A100-40GB") == "4"


def test_the_planner_refuses_a_bad_choice_or_a_busy_engine_and_sends_nothing():
    planner, events = offline_planner()
    planner.request.source = SOURCE_MODEL  # while the window has no model
    assert planner.plan() is None and events[-1][0] == "error" and "no model is loaded" in events[-1][1][0]
    planner.request.source = SOURCE_PRESET
    planner.client.active_job = Job("scan-1", "scan")  # the workbench's scan runs
    assert planner.plan() is None and "busy with scan" in events[-1][1][0] and "press Plan again" in events[-1][1][0]
    assert planner.client.sent == [] and not planner.running


def test_a_crash_or_a_stop_while_a_plan_runs_ends_it_with_a_sentence():
    planner, events = offline_planner()
    job = planner.plan()
    planner.client.end_job()  # the client's order on a crash: the job's failure, then the state
    planner.on_failed(job, "crashed", "the engine was killed by signal 9", "last lines of its log")
    planner.on_state(EngineState.CRASHED)
    errors = [data for event, data in events if event == "error"]
    assert errors == [("Plan failed (crashed): the engine was killed by signal 9", "last lines of its log")]
    assert not planner.running
    job = planner.plan()  # a stop (close, another engine) sends no failure: the state ends the job
    planner.client.end_job()
    planner.on_state(EngineState.STOPPED)
    assert not planner.running and events[-1][0] == "error"
    assert events[-1][1][0].startswith("The engine stopped before the plan came back")
    planner.on_finished(job, "plan_memory", {"methods": []})  # a late answer to a job given up: ignored
    assert events[-1][1][0].startswith("The engine stopped")


def test_an_unreadable_plan_is_said_not_raised():
    planner, events = offline_planner()
    job = planner.plan()
    planner.client.end_job()
    planner.on_finished(job, "plan_memory", {"methods": []})
    assert not planner.running and planner.plan_view is None
    assert events[-1][0] == "error" and events[-1][1][0].startswith("The engine's plan could not be read")


# --- through a real engine ------------------------------------------------------------------------


@pytest.mark.slow
def test_dialog_plans_a_preset_and_reports_a_bad_config_through_a_real_engine(dialog, qtbot, tmp_path):
    client = dialog.planner.client
    client.start_local()
    qtbot.waitUntil(lambda: client.state is EngineState.READY, timeout=60_000)
    dialog.preset_combo.setCurrentIndex(dialog.preset_combo.findData("llama-2-70b"))
    assert dialog.plan() is not None
    qtbot.waitUntil(lambda: dialog.planner.job is None, timeout=60_000)
    assert dialog.planner.plan_view is not None, dialog.status.text()
    assert dialog.table.item(0, 2).text() == "4" and dialog.table.item(2, 2).text() == "2"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4096}))
    dialog.config_edit.setText(str(tmp_path / "config.json"))
    dialog.radio_config.setChecked(True)
    assert dialog.plan() is not None
    qtbot.waitUntil(lambda: dialog.planner.job is None, timeout=60_000)
    assert "lacks" in dialog.status.text() and "num_layers" in dialog.status.text()
    assert dialog.table.item(0, 2).text() == "4"  # the last good plan stays on screen


def test_paths_are_shortened_in_the_title():
    from int8wb.app.view_models.plan import short_name

    assert short_name("llama-2-70b") == "llama-2-70b"
    assert short_name("/models/big/config.json") == "big/config.json"
    assert short_name("/root/.cache/models/SmolLM2-135M") == "SmolLM2-135M"


def test_the_baseline_is_named_by_its_float_dtype():
    from int8wb.app.view_models.plan import method_label

    assert method_label("baseline", "float32") == "FP32 (baseline)"
    assert method_label("baseline", "bfloat16") == "BF16 (baseline)"
    assert method_label("baseline") == "floating point (baseline)"
    assert method_label("llm-int8", "float32") == "LLM.int8() static (outliers from the scan)"
