"""The sensitivity panel: a real sweep's result, shown, and "Apply to export" carried by the next Run's quantize."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from int8wb.app.view_models import sensitivity
from int8wb.app.views.sensitivity_panel import SensitivityPanel
from tests.test_app_workflow import MODEL, finish
from tests.test_app_workflow import make_workbench as offline_workbench

SWEEP = {
    "method": "absmax-tensor",
    "target": 0.3,
    "group": "linear",
    "tokens": 256,
    "holdout_tokens": 256,
    "window": 64,
}


@pytest.fixture(scope="module")
def sweep_result():
    """The engine's own sensitivity result on the tiny model with a planted outlier (not written by hand)."""
    from int8wb.engine.measure import sensitivity as engine_sensitivity
    from int8wb.engine.task import Task
    from tests.support.tiny_models import tiny_loaded

    result = engine_sensitivity.run(SWEEP, Task(), tiny_loaded(dim=5, factor=60.0))
    assert result["skip_modules"], "the sweep must choose something for the panel to apply"
    return result


@pytest.mark.parametrize(
    "group, shown",
    [
        ("model.layers.18.self_attn.q_proj+k_proj+v_proj", "18: q/k/v_proj"),
        ("model.layers.2.mlp.gate_proj+up_proj", "2: gate/up_proj"),
        ("model.layers.3.mlp.down_proj", "3: down_proj"),
        ("model.layers.18", "layer 18"),
        ("model.layers.3.mlp.experts.5.w1+w3", "3: experts.5.w1+w3"),
        ("transformer.wte_proj", "transformer.wte_proj"),
    ],
)
def test_a_group_shows_its_layer_and_its_linears(group, shown):
    assert sensitivity.short_name(group) == shown


@pytest.mark.slow
def test_the_view_model_reads_the_ranking_curve_and_held_out_check(sweep_result):
    rows = sensitivity.ranking(sweep_result)
    assert [row.group for row in rows] == sweep_result["ranking"]
    entries = {entry["group"]: entry for entry in sweep_result["groups"]}
    assert sorted(row.group for row in rows) == sorted(entries)  # every group, the most damaging per MB first
    damage = [entries[row.group]["kl_divergence"] / entries[row.group]["float_bytes"] for row in rows]
    assert damage == sorted(damage, reverse=True)
    steps = sensitivity.curve(sweep_result)
    assert steps.megabytes[0] == 0 and steps.megabytes[-1] == pytest.approx(
        sweep_result["float_bytes"] / sensitivity.MB
    )
    assert (steps.bound >= steps.expected - 1e-9).all()
    assert steps.expected[-1] <= steps.bound[-1] <= sensitivity.goal(sweep_result) < steps.bound[0]
    assert steps.perplexity[-1] == pytest.approx(sweep_result["curve"][-1]["perplexity"])
    count = len(sweep_result["skip_modules"])
    assert f"Keeping {count} Linear" in sensitivity.verdict(sweep_result)
    assert f"{sweep_result['holdout']['change_pct']:+.2f}%" in sensitivity.held_out(sweep_result)


@pytest.mark.slow
def test_apply_to_export_fills_the_skip_list_the_quantize_request_carries(sweep_result, qtbot):
    workbench, events = offline_workbench()
    workbench.load_model(None)
    finish(workbench, MODEL)
    panel = SensitivityPanel(workbench)
    qtbot.addWidget(panel)
    from int8wb.engine.measure.sensitivity import GROUPS, SweepSettings

    offered = [panel.group.itemData(i) for i in range(panel.group.count())]
    assert offered == list(GROUPS) and panel.group.currentData() == SweepSettings.group  # the engine's default
    panel.method.setCurrentIndex(panel.method.findData("absmax-tensor"))
    panel.target.setValue(0.3)
    panel.group.setCurrentIndex(panel.group.findData("linear"))
    panel.tokens.setValue(256)
    assert not panel.apply_button.isEnabled()
    qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
    request, params = workbench.client.sent[-1]
    assert request == "sensitivity"
    assert params == {**SWEEP, "window": 256, "threshold": workbench.threshold.threshold}
    assert not panel.run_button.isEnabled()  # one job at a time
    finish(workbench, sweep_result)
    assert panel.table.rowCount() == len(sweep_result["ranking"])
    assert panel.table.item(0, 1).toolTip() == sweep_result["ranking"][0]
    assert panel.table.item(0, 1).text() == sensitivity.short_name(sweep_result["ranking"][0])
    first = {entry["group"]: entry for entry in sweep_result["groups"]}[sweep_result["ranking"][0]]
    assert panel.table.item(0, 4).text() == f"{first['kl_divergence']:.5f}"
    assert panel.table.horizontalHeaderItem(4).toolTip().startswith("KL divergence")
    assert panel.chosen.toPlainText().splitlines() == sweep_result["skip_modules"]
    assert panel.curve.getData()[1][-1] == pytest.approx(sweep_result["curve"][-1]["perplexity"])
    assert panel.expected.getData()[1][-1] <= panel.bound.getData()[1][-1] <= sensitivity.goal(sweep_result)
    qtbot.mouseClick(panel.apply_button, Qt.MouseButton.LeftButton)
    assert workbench.skip_modules == sweep_result["skip_modules"]
    assert f"keeps {len(sweep_result['skip_modules'])} Linear" in panel.note.text()
    workbench.run_methods(["absmax-tensor"], {"tokens": 128, "window": 64})
    assert workbench.client.sent[-1] == (
        "quantize",
        {
            "methods": ["absmax-tensor"],
            "threshold": workbench.threshold.threshold,
            "alpha": workbench.alpha,
            "skip_modules": sweep_result["skip_modules"],
        },
    )


def test_the_window_opens_the_panel_and_says_what_the_next_run_keeps_in_float(make_workbench):
    window = make_workbench(start_engine=False)
    assert window.act_sensitivity.shortcut().toString() == "Ctrl+K"
    panel = window.open_sensitivity()
    assert panel.isVisible() and window.open_sensitivity() is panel
    window.workbench.set_skip_list(["model.layers.0.mlp.down_proj"], "a list")
    assert window.run_panel.skip_note.isVisible()
    assert "keeps 1 Linear in floating point (a list)" in window.run_panel.skip_note.text()
    window.run_panel.skip_note.linkActivated.emit("clear")
    assert window.workbench.skip_modules == [] and not window.run_panel.skip_note.isVisible()
