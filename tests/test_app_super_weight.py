"""The super weight panel: its button sends the experiment, the engine's own result shows, the explanation panel
tells it with the model's numbers, and the keep option rides on the next Run's quantize."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from int8wb.app.view_models.story import explanation_html
from int8wb.app.views.super_weight_panel import SuperWeightPanel
from tests.test_app_workflow import MODEL, finish, make_workbench

SETTINGS = {"find_tokens": 64, "candidates": 2, "tokens": 128, "window": 64}


def experiment(plant: bool) -> dict:
    """The engine's super weight experiment on the tiny planted model (or the same model without the plant)."""
    from int8wb.engine.measure import super_weight
    from int8wb.engine.task import Task
    from tests.test_super_weight import planted_model

    return super_weight.run(SETTINGS, Task(), planted_model(plant))


@pytest.fixture(scope="module")
def found():
    result = experiment(plant=True)
    assert result["super_weights"], "the planted model must have its super weight found for the panel to show"
    return result


def loaded_panel(qtbot):
    workbench, events = make_workbench()
    panel = SuperWeightPanel(workbench)
    qtbot.addWidget(panel)
    assert not panel.run_button.isEnabled()  # no model yet
    workbench.load_model(None)
    finish(workbench, MODEL)
    return workbench, events, panel


def test_the_button_runs_the_experiment_and_the_panel_shows_its_result(qtbot, found):
    workbench, events, panel = loaded_panel(qtbot)
    assert panel.run_button.isEnabled() and not panel.keep.isEnabled()
    qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
    assert workbench.client.sent[-1] == ("super_weights", {})
    assert not panel.run_button.isEnabled()  # while it runs
    finish(workbench, found)
    assert ("super_weights", found) in events
    assert panel.table.rowCount() == len(found["candidates"])
    first = found["candidates"][0]
    assert panel.table.item(0, 0).text() == first["module"]
    assert panel.table.item(0, 1).text() == f"[{first['row']}, {first['col']}]"
    assert panel.table.item(0, 6).text() == f"{first['zeroed']:.3f}"
    assert panel.table.item(0, 8).text() == "super weight"
    assert found["verdict"] in panel.verdict.text() and found["criterion"] in panel.verdict.text()
    assert panel.run_button.isEnabled() and panel.keep.isEnabled()


def test_keeping_the_found_super_weight_rides_on_the_next_run(qtbot, found):
    workbench, _, panel = loaded_panel(qtbot)
    workbench.run_super_weights()
    finish(workbench, found)
    panel.keep.setChecked(True)
    workbench.run_methods(["absmax-tensor", "vectorwise"], {"tokens": 128})
    request, params = workbench.client.sent[-1]
    assert request == "quantize" and params["keep_super_weights"] is True
    assert panel.keep.isChecked()


def test_without_a_super_weight_there_is_nothing_to_keep(qtbot):
    workbench, events, panel = loaded_panel(qtbot)
    workbench.run_super_weights()
    result = experiment(plant=False)
    finish(workbench, result)
    assert "no super weight found" in panel.verdict.text()
    assert not panel.keep.isEnabled()
    workbench.set_keep_super_weights(True)
    assert not workbench.keep_super_weights
    assert any(event == "notice" and "No super weight found" in data[0] for event, data in events)


def test_the_explanation_tells_the_super_weight_with_the_models_numbers(found):
    workbench, _ = make_workbench()
    before = explanation_html(MODEL, workbench.stats, workbench.threshold, workbench.results)
    assert "Run the super weight experiment" in before
    after = explanation_html(MODEL, workbench.stats, workbench.threshold, workbench.results, found)
    kept = found["candidates"][0]
    for number in (
        f"weight[{kept['row']}, {kept['col']}] = {kept['weight']:.4g}",
        f"from {found['baseline']:.2f} to {kept['zeroed']:.2f}",
        f"gave {kept['control']:.2f}",
        f"dimension {kept['row']} of the residual stream",
    ):
        assert number in after
    assert "Static LLM.int8() keeps that input column" in after
