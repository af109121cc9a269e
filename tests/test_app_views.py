"""The window's views offscreen, fed with synthetic scan statistics (no engine process)."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPointF

from int8wb.app import window_memory
from tests.support.scan_payloads import layer_payload


def feed(window, layers=6, width=32, down_width=64):
    window.workbench.model_info = {"layers": layers, "hidden_size": width}
    window.workbench.lay_out_grid()
    rng = np.random.default_rng(1)
    index = 0
    for layer in range(layers):
        for kind, w in (("attn_in", width), ("attn_out", width), ("mlp_in", width), ("mlp_down", down_width)):
            values = rng.uniform(0.1, 3.0, w)
            values[5] = 40.0  # an outlier dimension in every layer
            window.stats.add_layer(layer_payload(index, layer, kind, values, out_features=width))
            index += 1


def test_heatmap_fills_row_by_row_and_threshold_lights_outliers(make_workbench, qtbot):
    window = make_workbench(start_engine=False)
    feed(window, layers=1)
    first = window.heatmap.image.image.copy()
    assert first.shape == (4, 64)
    feed(window, layers=6)
    image = window.heatmap.image.image
    assert image.shape == (24, 64) and (image[:, 5] > image[:, 6]).all()  # dimension 5 is brighter
    assert (image[:6, 32:] == 0).all()  # cells past the attention input's 32 dims show "missing"
    window.threshold.set_threshold(6.0)
    assert window.heatmap.overlay.image.sum() == 24  # dimension 5 in every row
    window.threshold.set_threshold(2.0)
    assert window.heatmap.overlay.image.sum() > 24
    assert "24" in window.threshold_panel.overall.text() or window.threshold.summary().outlier_columns > 24


def test_threshold_controls_stay_in_step(make_workbench):
    window = make_workbench(start_engine=False)
    feed(window)
    window.threshold_panel.spin.setValue(10.0)
    assert window.threshold.threshold == 10.0
    assert window.threshold_panel.fraction_spin.value() == pytest.approx(
        100 * window.threshold.fraction_for_threshold(10.0), abs=1e-3
    )
    window.threshold_panel.fraction_spin.setValue(10.0)  # top 10 %
    assert window.threshold.fraction_for_threshold(window.threshold.threshold) == pytest.approx(0.10, abs=0.01)
    window.histogram.line.setValue(np.log10(20.0))  # dragging the histogram line
    assert window.threshold.threshold == pytest.approx(20.0)
    assert window.threshold_panel.spin.value() == pytest.approx(20.0)


def test_hover_readout_and_click_profile(make_workbench, qtbot):
    window = make_workbench(start_engine=False)
    feed(window)
    qtbot.waitExposed(window)
    view_box = window.heatmap.plot.getViewBox()
    scene_pos = view_box.mapViewToScene(QPointF(5.5, 6.5))  # dimension 5, row 6: attention output, layer 0
    assert window.heatmap.cell_at(scene_pos) == (6, 5)
    window.heatmap._on_mouse_moved(scene_pos)
    text = window.heatmap.readout.text()
    assert "layer 0" in text and "attention output" in text and "dim 5" in text and "abs-max 40" in text
    window.profile.show_dimension(5)
    assert window.profile.title.text().startswith("Dimension 5: over the threshold in 6 of 6 layers")
    assert set(window.profile.curves) == {"attn_in", "attn_out", "mlp_in", "mlp_down"}
    key = window.profile.key.text()  # the key names this dense model's kinds, not the experts'
    assert "attention input" in key and "MLP down input" in key and "experts" not in key


def test_share_mode_and_settings_round_trip(make_workbench):
    window = make_workbench(start_engine=False)
    feed(window)
    window.heatmap.mode_box.setCurrentIndex(1)
    assert window.heatmap.mode == "share" and window.heatmap.color_bar.levels() == (0.0, 100.0)
    window.threshold.set_threshold(7.5)
    window.model_panel.add_source("/models/llama")
    window_memory.save(window, window.settings)
    assert float(window.settings.value("threshold")) == 7.5
    assert window_memory.as_list(window.settings.value("recent_models")) == ["/models/llama"]
    assert window.settings.value("heatmap/mode") == "share"


def test_actions_refuse_without_engine_and_model(make_workbench):
    window = make_workbench(start_engine=False)
    assert window.workbench.start_scan({"tokens": 64}) is None
    assert "Load a model" in window.statusBar().currentMessage()
    assert not window.scan_panel.scan_button.isEnabled()
    window.workbench.model_info = {"layers": 1, "hidden_size": 4}
    assert window.workbench.run_methods(["llm-int8"], {}) is None
    assert "scan first" in window.statusBar().currentMessage()


def test_the_load_panel_says_layer_by_layer():
    from int8wb.app.views.model_panel import offload_line

    disk = {"mode": "disk", "layers": 32, "peak_bytes": 2.4e9, "reason": "offload auto: layer by layer from disk: x"}
    assert offload_line(disk) == "layer by layer from disk: 32 layers, peak about 2.4 GB"
    assert offload_line({"mode": "none", "reason": "asked for"}) is None


def test_grid_cell_at_maps_a_point_to_its_cell_and_nothing_outside(qtbot):
    """The one mapping every grid map's hover reads: a unit cell per (row, column), None past the grid's edge."""
    import pyqtgraph as pg

    from int8wb.app.views.colors import grid_cell_at

    plot = pg.PlotWidget()
    qtbot.addWidget(plot)
    plot.resize(200, 200)
    plot.getViewBox().setRange(xRange=(0, 4), yRange=(0, 3), padding=0)
    plot.show()
    qtbot.waitExposed(plot)
    view = plot.getViewBox()
    assert grid_cell_at(plot.plotItem, view.mapViewToScene(QPointF(2.5, 1.5)), (3, 4)) == (1, 2)
    assert grid_cell_at(plot.plotItem, view.mapViewToScene(QPointF(3.5, 2.5)), (3, 2)) is None  # column 3 of 2


def test_coalescer_follows_a_scan_row_by_interval_and_anything_else_at_once(qtbot):
    """A streamed row waits for the interval; the scan's end (any other event) refreshes at once."""
    from int8wb.app.views.throttle import Coalescer

    calls = []
    coalescer = Coalescer(lambda: calls.append(1), 10_000)
    coalescer.follow_scan("row", None)
    assert calls == []
    coalescer.follow_scan("done", None)
    assert calls == [1]
