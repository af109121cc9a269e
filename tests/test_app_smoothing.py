"""The smoothed heatmap: SmoothQuant's factors computed in the window, the alpha slider, the weight view."""

from __future__ import annotations

import numpy as np
import pytest

from int8wb.app.view_models.scan_stats import ScanStatistics
from int8wb.app.view_models.smoothing import VIEW_WEIGHTS, SmoothingViewModel
from tests.support.scan_payloads import layer_payload

ACTIVATIONS = np.array([0.5, 40.0, 1.0, 0.0], dtype=np.float32)  # dimension 1 is the outlier
WEIGHTS = np.array([0.2, 0.05, 0.4, 0.1], dtype=np.float32)


def _stats() -> ScanStatistics:
    stats = ScanStatistics()
    smoothed = layer_payload(0, 0, "attn_in", ACTIVATIONS, name="model.layers.0.self_attn.q_proj")
    plain = layer_payload(1, 0, "attn_out", ACTIVATIONS, name="model.layers.0.self_attn.o_proj")
    for payload, smoothable in ((smoothed, True), (plain, False)):
        stats.add_layer({**payload, "weight_absmax": WEIGHTS, "smoothable": smoothable})
    return stats


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_activations_as_the_quantizer_sees_them_after_smoothing(alpha):
    view = SmoothingViewModel(_stats())
    view.set_alpha(alpha)
    view.set_smoothed(True)
    factors = np.where(ACTIVATIONS > 0, ACTIVATIONS**alpha / WEIGHTS ** (1 - alpha), 1.0)
    np.testing.assert_allclose(view.grid()[0], ACTIVATIONS / factors, rtol=1e-6)
    np.testing.assert_array_equal(view.grid()[1], ACTIVATIONS)  # o_proj: SmoothQuant leaves it alone
    if alpha == 1.0:  # all the difficulty moved into the weights: every seen channel is 1
        np.testing.assert_allclose(view.grid()[0][ACTIVATIONS > 0], 1.0, rtol=1e-6)
    view.set_view(VIEW_WEIGHTS)
    np.testing.assert_allclose(view.grid()[0], WEIGHTS * factors, rtol=1e-6)
    if alpha >= 0.5:  # the outlier dimension reappears in the weights
        assert int(np.argmax(view.grid()[0])) == 1


def test_off_the_view_is_the_scan_and_bad_alpha_is_refused():
    view = SmoothingViewModel(_stats())
    assert not view.active
    view.set_view(VIEW_WEIGHTS)
    assert view.active
    np.testing.assert_array_equal(view.grid()[0], WEIGHTS)
    with pytest.raises(Exception, match="alpha"):
        view.set_alpha(1.5)


def test_panel_drives_the_heatmap_and_the_alpha_of_the_next_run(qtbot):
    from int8wb.app.view_models.threshold import ThresholdModel
    from int8wb.app.views.heatmap import HeatmapView
    from int8wb.app.views.smoothing_panel import SmoothingPanel

    stats = _stats()
    heatmap = HeatmapView(stats, ThresholdModel(stats, 6.0))
    qtbot.addWidget(heatmap)
    view = SmoothingViewModel(stats)
    panel = SmoothingPanel(view, heatmap)
    qtbot.addWidget(panel)
    assert heatmap.values() is stats.absmax_grid
    with qtbot.waitSignal(panel.sig_alpha) as emitted:
        panel.slider.setValue(16)
    assert emitted.args == [0.8] and panel.alpha_label.text() == "0.80"
    panel.smoothed_box.setChecked(True)
    np.testing.assert_array_equal(heatmap.values(), view.grid())
    assert heatmap.values()[0, 1] < 6.0 < stats.absmax_grid[0, 1]  # the outlier no longer lights up
    assert not heatmap._mask[0].any()
    panel.smoothed_box.setChecked(False)
    assert heatmap.values() is stats.absmax_grid


def test_the_alpha_slider_shows_while_a_method_that_smooths_is_ticked(make_workbench):
    from int8wb.engine.vocabulary import METHODS, method_of

    window = make_workbench(start_engine=False)
    smoothing = [name for name in METHODS if method_of(name).smoothed]
    assert smoothing, "a method that smooths the model is declared"
    window.run_panel.set_methods([])
    assert window.smoothing_panel.isHidden()
    window.run_panel.method_boxes[smoothing[0]].setChecked(True)
    assert not window.smoothing_panel.isHidden()
    window.run_panel.set_methods([name for name in METHODS if not method_of(name).smoothed])
    assert window.smoothing_panel.isHidden()
