"""The error map: each method's SQNR per Linear on the heatmap's rows (view model without Qt, then the view)."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF

from int8wb.app.view_models.layer_errors import LayerErrors
from int8wb.app.view_models.scan_stats import ScanStatistics
from tests.support.scan_payloads import layer_payload
from tests.test_app_workflow import MODEL, finish
from tests.test_app_workflow import make_workbench as offline_workbench

METHODS = ["absmax-tensor", "vectorwise"]
ATTN_IN = ("q_proj", "k_proj", "v_proj")


def attention_inputs(layer: int, outliers: int) -> dict:
    """The input q, k, v of one layer read: `outliers` dimensions at 40, and the error growing with them."""
    absmax = np.full(8, 1.0)
    absmax[:outliers] = 40.0
    names = [f"model.layers.{layer}.self_attn.{proj}" for proj in ATTN_IN]
    sqnr = {
        name: {"absmax-tensor": 30.0 - 5 * outliers - i, "vectorwise": None if i == 2 else 35.0 - outliers}
        for i, name in enumerate(names)
    }
    return {**layer_payload(layer, layer, "attn_in", absmax, names=names, out_features=8), "sqnr_db": sqnr}


def configured() -> tuple[ScanStatistics, LayerErrors]:
    stats = ScanStatistics()
    stats.configure(2, {"attn_in": 8, "attn_out": 8})
    errors = LayerErrors(stats)
    errors.begin(METHODS)
    return stats, errors


def test_each_linear_and_method_fills_its_cell_on_the_heatmaps_rows():
    stats, errors = configured()
    events = []
    errors.subscribe(lambda event, data: events.append((event, data)))
    payload = attention_inputs(1, outliers=2)
    stats.add_layer(payload)
    errors.add_layer(payload)
    row = stats.row_of(("attn_in", 1))
    assert errors.grid.shape == (4, 2 * 3)  # rows as the heatmap; per method a group of three Linears
    assert errors.slots == 3 and events[-1] == ("reset", None)  # three Linears in a row: the groups widened
    payload = attention_inputs(0, outliers=0)
    stats.add_layer(payload)
    errors.add_layer(payload)
    assert events[-1] == ("row", stats.row_of(("attn_in", 0)))  # the next input fits in place
    assert errors.grid[row].tolist() == [20.0, 19.0, 18.0, 33.0, 33.0, np.inf]  # None: the output was exact
    assert np.isnan(errors.grid[stats.row_of(("attn_out", 0))]).all()
    record, method = errors.cell(row, 4)
    assert (record.name, method) == ("model.layers.1.self_attn.k_proj", "vectorwise")
    assert errors.cell(stats.row_of(("attn_out", 0)), 0) is None


def test_the_hover_text_names_linear_method_decibels_and_outlier_columns_at_the_threshold():
    stats, errors = configured()
    errors.add_layer(attention_inputs(0, outliers=3))
    row = stats.row_of(("attn_in", 0))
    text = errors.describe_cell(row, 0, threshold=6.0)
    assert (
        text == "model.layers.0.self_attn.q_proj · naive INT8 (absmax-tensor) · SQNR 15.0 dB · 3 outlier columns over 6"
    )
    assert errors.describe_cell(row, 0, threshold=50.0).endswith("0 outlier columns over 50")
    assert "exact (no error)" in errors.describe_cell(row, 5, threshold=6.0)
    detail = errors.describe_linear("model.layers.0.self_attn.q_proj", 6.0)
    assert "3 outlier dimensions over 6 (abs-max): 0 (40), 1 (40), 2 (40)" in detail


def test_a_linear_not_laid_out_widens_the_grid_and_a_new_scan_starts_empty():
    stats, errors = configured()
    name = "model.layers.0.mlp.down_proj"
    payload = {**layer_payload(0, 0, "mlp_down", np.ones(16), name=name), "sqnr_db": {name: {"vectorwise": 25.0}}}
    stats.add_layer(payload)  # the statistics add the row (a "reset" the error grid follows)
    errors.add_layer(payload)
    assert errors.grid.shape == (len(stats.row_keys), 2) and errors.grid[stats.row_of(("mlp_down", 0)), 1] == 25
    errors.load_result(
        {"errors": {"vectorwise": {"median_sqnr_db": 25.0, "worst_linear": name, "loss_vs_outliers": 0.5}}}
    )
    assert errors.summary_lines() == ["vector-wise INT8: median 25.0 dB, loss vs outlier columns ρ +0.50"]
    assert errors.worst_lines() == ["vector-wise INT8: worst model.layers.0.mlp.down_proj"]
    assert errors.column_key() == "1 naive INT8 · 2 vector-wise INT8"
    errors.begin(["vectorwise"])
    assert not errors.has_errors and np.isnan(errors.grid).all()


def test_the_workbench_feeds_the_error_map_from_the_scan_it_sent():
    workbench, _ = offline_workbench()
    workbench.load_model(None)
    finish(workbench, MODEL)
    workbench.start_scan({"tokens": 64, "error_methods": METHODS})
    assert workbench.client.sent[-1][1]["error_methods"] == METHODS
    assert workbench.client.sent[-1][1]["alpha"] == workbench.alpha  # smoothquant's error, at the slider's alpha
    job = workbench.client.active_job
    workbench.on_scan_layer(job.id, attention_inputs(0, outliers=1))
    assert len(workbench.errors.linears) == 3 and workbench.errors.methods == METHODS
    finish(workbench, {"layers": [], "threshold": 6.0, "errors": {}})
    assert workbench.errors.finished
    workbench.start_scan({"tokens": 64})
    assert not workbench.errors.has_errors


def test_error_view_hover_and_click(make_workbench, qtbot):
    window = make_workbench(start_engine=False)
    window.run_panel.set_methods(METHODS)
    window.scan_panel.measure_errors.setChecked(True)
    assert window.scan_panel.params()["error_methods"] == METHODS
    window.workbench.model_info = {"layers": 2, "hidden_size": 8}
    window.workbench.lay_out_grid()
    window.workbench.errors.begin(METHODS)
    for layer in range(2):
        payload = attention_inputs(layer, outliers=layer + 1)
        window.stats.add_layer(payload)
        window.workbench.errors.add_layer(payload)
    qtbot.waitExposed(window)
    view = window.error_map
    assert not view.empty.is_empty and view.image.image.shape == (8, 6)
    scene_pos = view.plot.getViewBox().mapViewToScene(QPointF(3.5, 1.5))  # vectorwise, q_proj of layer 1
    assert view.cell_at(scene_pos) == (1, 3)
    view._on_mouse_moved(scene_pos)
    assert view.readout.text() == (
        "model.layers.1.self_attn.q_proj · vector-wise INT8 (vectorwise) · SQNR 33.0 dB · 2 outlier columns over 6"
    )
    with qtbot.waitSignal(view.sig_dimension_clicked) as clicked:
        view.select_cell(1, 3)
    assert clicked.args == [0] and "2 outlier dimensions over 6" in view.detail.text()
    window.threshold.set_threshold(50.0)
    assert "no input dimension over 50" in view.detail.text()
