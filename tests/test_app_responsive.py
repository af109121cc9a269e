"""What keeps the window responsive during a scan: incremental statistics, in-place rows, coalesced refreshes.

The view-model half runs without Qt; the view half offscreen with synthetic
scan statistics (no engine process).
"""

from __future__ import annotations

import numpy as np
import pytest

from int8wb.app.view_models.scan_stats import ScanStatistics
from int8wb.app.view_models.threshold import ThresholdModel
from int8wb.engine.vocabulary import HIST_LOG10_MAX, HIST_LOG10_MIN
from tests.support.scan_payloads import layer_payload


def awkward_stats(seed=0) -> ScanStatistics:
    """Linears of several widths, with zeros, NaN and inf among the abs-max values, and an empty one."""
    stats = ScanStatistics()
    rng = np.random.default_rng(seed)
    for index, width in enumerate((16, 48, 0, 16, 33, 48)):
        values = rng.lognormal(0.0, 2.0, width)
        if width:
            values[0] = 0.0
        if width > 16:
            values[[1, 2, 3]] = (np.nan, np.inf, 1e7)
        stats.add_layer(layer_payload(index, index, "attn_in", values, out_features=8 + index))
    return stats


def test_abs_max_histogram_kept_as_layers_arrive_equals_a_recount():
    stats = awkward_stats()
    values = np.concatenate([linear.absmax for linear in stats.linears])
    values = values[np.isfinite(values) & (values > 0)]
    log_edges = np.linspace(HIST_LOG10_MIN, HIST_LOG10_MAX, 91)
    expected, _ = np.histogram(np.clip(np.log10(values), log_edges[0], log_edges[-1]), bins=log_edges)
    assert stats.absmax_hist.tolist() == expected.tolist()
    assert stats.absmax_max == pytest.approx(1e7)
    stats.set_scan_info(6.0, np.logspace(-2, 3, 11))  # the scan names other edges: counted again on them
    expected, _ = np.histogram(np.clip(np.log10(values), -2, 3), bins=np.linspace(-2, 3, 11))
    assert stats.absmax_hist.tolist() == expected.tolist() and stats.absmax_hist_edges.size == 11


def test_outlier_counts_equal_a_loop_over_linears():
    stats = awkward_stats()
    for threshold in (0.5, 6.0, 1e6):
        per_linear = [int((linear.absmax > threshold).sum()) for linear in stats.linears]
        assert stats.over_per_linear(threshold).tolist() == per_linear
        finite = np.concatenate([linear.absmax for linear in stats.linears])
        finite = finite[np.isfinite(finite)]
        assert stats.count_finite_over(threshold) == (int((finite > threshold).sum()), finite.size)
    assert stats.all_absmax().size == sum(linear.absmax.size for linear in stats.linears)
    assert not stats.all_absmax().flags.writeable


def test_threshold_for_fraction_picks_the_same_value_as_a_full_sort():
    stats = awkward_stats(seed=3)
    model = ThresholdModel(stats)
    values = stats.all_absmax()
    descending = np.sort(values[np.isfinite(values)])[::-1]
    for fraction in (0.0, 0.01, 0.1, 0.5, 0.99):
        k = int(round(fraction * descending.size))
        assert model.threshold_for_fraction(fraction) == pytest.approx(max(float(descending[k]), 1e-38))
    assert model.threshold_for_fraction(1.0) == pytest.approx(descending[-1] * 0.5)
    summary = model.summary()
    assert summary.float_bytes == sum(
        int((linear.absmax > model.threshold).sum()) * ((8 + i) * 2 + 8) for i, linear in enumerate(stats.linears)
    )


def test_layout_changes_announce_one_reset_each():
    stats = ScanStatistics()
    events = []
    stats.subscribe(lambda event, data: events.append(event))
    stats.configure(3, {"attn_in": 8, "mlp_down": 8})
    assert events == ["reset"]
    events.clear()
    stats.add_layer(layer_payload(0, 0, "attn_in", np.ones(8)))
    assert events == ["row"]
    events.clear()
    stats.add_layer(layer_payload(1, 0, "mlp_down", np.ones(20)))  # wider than laid out
    assert events == ["reset", "row"] and stats.absmax_grid.shape == (6, 20)
    events.clear()
    stats.add_layer(layer_payload(2, 0, "attn_out", np.ones(8)))  # a kind not laid out: a row inserted
    assert events == ["reset", "row"] and stats.row_keys[3] == ("attn_out", 0)


# --- views ------------------------------------------------------------------------------------------


def configure(window, layers=4, width=64):
    window.workbench.model_info = {"layers": layers, "hidden_size": width}
    window.workbench.lay_out_grid()


def test_new_rows_are_written_into_the_shown_image(make_workbench):
    from int8wb.app.views.heatmap import index_rows

    window = make_workbench(start_engine=False)
    configure(window)
    heatmap = window.heatmap
    shown, overlay = heatmap.image.image, heatmap.overlay.image
    rng = np.random.default_rng(0)
    for index in range(3):
        window.stats.add_layer(layer_payload(index, index, "attn_in", rng.uniform(0.5, 5.0, 64)))
    # no new arrays per row: the items show views of the arrays the rows were written into
    assert np.shares_memory(heatmap.image.image, shown) and np.shares_memory(heatmap.overlay.image, overlay)
    assert (shown[:3] > 0).all() and (shown[3:] == 0).all()
    big = rng.uniform(0.5, 5.0, 64)
    big[7] = 5e4  # past the colour range: every filled row is recoloured on the wider range
    window.stats.add_layer(layer_payload(3, 3, "attn_in", big))
    low, high = heatmap._levels
    assert high == 5.0 and heatmap.color_bar.levels() == (low, high)
    expected = index_rows(window.stats.absmax_grid[:4], low, high, log10=True)
    assert (heatmap.image.image[:4] == expected).all()
    assert heatmap.overlay.image[3, 7] == 1 and heatmap.overlay.image.sum() == 1


def test_hidden_overlay_is_brought_up_to_date_when_shown(make_workbench):
    window = make_workbench(start_engine=False)
    configure(window)
    values = np.full(64, 2.0)
    values[9] = 9.0
    window.stats.add_layer(layer_payload(0, 0, "attn_in", values))
    window.heatmap.overlay_box.setChecked(False)
    window.threshold.set_threshold(1.0)
    assert window.heatmap.overlay.image.sum() == 1  # left as it was while nobody sees it
    window.heatmap.overlay_box.setChecked(True)
    assert window.heatmap.overlay.image.sum() == 64 and window.heatmap.overlay.isVisible()


def test_a_burst_of_rows_refreshes_histogram_and_summary_once(make_workbench, qtbot, monkeypatch):
    window = make_workbench(start_engine=False)
    configure(window, layers=40)
    refreshes = {"histogram": 0, "summary": 0}
    set_curve, summary = window.histogram.absmax_curve.setData, window.threshold.summary

    def counted_set_curve(*args, **kwargs):
        refreshes["histogram"] += 1
        set_curve(*args, **kwargs)

    def counted_summary():
        refreshes["summary"] += 1
        return summary()

    monkeypatch.setattr(window.histogram.absmax_curve, "setData", counted_set_curve)
    monkeypatch.setattr(window.threshold, "summary", counted_summary)
    rng = np.random.default_rng(0)
    for index in range(40):
        values = rng.uniform(0.5, 5.0, 64)
        values[index] = 10.0
        window.stats.add_layer(layer_payload(index, index, "attn_in", values, out_features=64))
    assert refreshes == {"histogram": 0, "summary": 0}  # nothing yet: the burst is one event-loop turn
    qtbot.waitUntil(lambda: refreshes["histogram"] == 1 and refreshes["summary"] == 1, timeout=2000)
    qtbot.wait(300)
    assert refreshes == {"histogram": 1, "summary": 1}
    assert "<b>40</b> of 2,560" in window.threshold_panel.overall.text()
    _, counts = window.histogram.absmax_curve.getData()
    assert np.allclose(counts, np.log10(np.maximum(window.stats.absmax_hist, 1)))
    window.threshold.set_threshold(7.0)  # a threshold change shows at once
    assert refreshes["summary"] == 2


def test_a_new_scan_is_laid_out_as_wide_as_the_last_one(make_workbench):
    window = make_workbench(start_engine=False)
    configure(window, layers=2, width=8)
    window.stats.add_layer(layer_payload(0, 0, "mlp_down", np.ones(20)))  # the intermediate width
    assert window.stats.absmax_grid.shape == (8, 20)
    window.workbench.lay_out_grid(previous_scan_widths=True)  # what a new scan of this model does
    events = []
    window.stats.subscribe(lambda event, data: events.append(event))
    window.stats.add_layer(layer_payload(0, 0, "mlp_down", np.ones(20)))
    assert events == ["row"] and window.stats.absmax_grid.shape == (8, 20)  # no mid-scan widening
    window.workbench.lay_out_grid()  # a model was loaded: nothing learned from another model's scan
    assert window.stats.absmax_grid.shape == (8, 8)


def test_engine_states_arrive_in_the_gui_thread_and_a_stale_one_is_dropped(qtbot):
    import threading

    from int8wb.app.engine_client import QtEngineClient
    from int8wb.engine.link.client import EngineState

    engine = QtEngineClient()
    seen = []
    engine.sig_state_changed.connect(lambda state: seen.append((state, threading.current_thread().name)))
    # the I/O thread reports READY, but the client has left it by the time the GUI thread hears of it
    worker = threading.Thread(target=lambda: engine._sig_state.emit(EngineState.READY))
    worker.start()
    worker.join()
    qtbot.wait(50)
    assert seen == [] and engine.client.state is EngineState.STOPPED
    engine.client.start_in_background(engine.client.start_local)
    assert seen == [(EngineState.STARTING, "MainThread")]  # at once: the GUI thread asked for it
    qtbot.waitUntil(lambda: len(seen) == 2, timeout=60_000)  # READY, set on the starter thread
    assert seen[1] == (EngineState.READY, "MainThread") and engine.client.state is EngineState.READY
    engine.client.close()
    assert seen[2:] == [(EngineState.STOPPED, "MainThread")]
