"""The real window driving a real engine process on the embedded default model (slow).

One session, in the order a user works: the window is up before the engine,
loads the default model without a click, cancel a scan, scan (rows arrive before the scan ends), move
the threshold, quantize, evaluate and time the decoding of two methods, read the engine's numbers in
the table, kill the engine and recover. Token budgets are small (512
calibration, 512 evaluation) to keep it near a minute and a half on two cores.
"""

from __future__ import annotations

import os
import signal

import pytest

from int8wb.app.view_models.results import shown_columns
from int8wb.app.view_models.workbench import Step
from int8wb.engine.link.client import EngineState

pytestmark = pytest.mark.slow


def wait_ready(qtbot, window, timeout_s=60):
    qtbot.waitUntil(lambda: window.client.state is EngineState.READY, timeout=timeout_s * 1000)


def test_workbench_session_end_to_end(make_workbench, qtbot):
    window = make_workbench()
    workbench = window.workbench
    assert window.isVisible() and window.client.state is EngineState.STARTING  # the window first

    finished: dict[str, dict] = {}
    window.engine.sig_job_finished.connect(lambda job, request, result: finished.__setitem__(request, result))

    # the default model loads without a click
    assert window.step_bar.current is Step.LOAD
    qtbot.waitUntil(lambda: workbench.job is not None, timeout=60_000)
    assert workbench.job.request == "load_model" and window.client.active_job.request == "load_model"
    qtbot.waitUntil(lambda: workbench.model_info is not None, timeout=180_000)
    assert workbench.model_info["layers"] == 30 and "30 layers" in window.model_panel.info.text()
    assert window.scan_panel.scan_button.isEnabled() and window.step_bar.current is Step.SCAN
    assert window.scan_panel.scan_button.property("current") and not window.model_panel.load_button.property("current")

    # cancel a running job: a long scan, cancelled after its first row
    assert workbench.start_scan({"tokens": 8192, "seq_len": 256}) is not None
    qtbot.waitUntil(lambda: window.stats.rows_filled >= 1, timeout=60_000)
    window.act_cancel.trigger()
    wait_ready(qtbot, window)
    qtbot.waitUntil(lambda: "scan cancelled" in window.log_view.toPlainText(), timeout=10_000)
    assert not window.stats.finished and window.stats.rows_filled < 120 and "scan" not in finished

    # scan: heatmap rows appear while the scan is still running
    seen_live = []
    window.stats.subscribe(
        lambda event, data: seen_live.append(
            (event, window.stats.finished, int((window.heatmap.image.image > 0).any(axis=1).sum()))
        )
    )
    assert workbench.start_scan({"tokens": 512, "seq_len": 256}) is not None
    qtbot.waitUntil(lambda: window.stats.finished, timeout=600_000)
    live_rows = [drawn for event, done, drawn in seen_live if event == "row" and not done]
    assert live_rows and live_rows[0] >= 1 and max(live_rows) > live_rows[0], "rows did not arrive one by one"
    assert window.stats.rows_filled == 120  # 30 layers x 4 inputs
    assert len(finished["scan"]["layers"]) == 120  # each distinct input once, with the names of its Linears
    assert len(window.stats.linears) == sum(len(layer["names"]) for layer in finished["scan"]["layers"]) == 210

    # move the threshold: more outliers below 6, fewer above, no engine round trip
    window.threshold_panel.spin.setValue(6.0)
    at_6 = window.threshold.summary().outlier_columns
    # (Linear, dimension) pairs: an input read by q, k and v counts for each of them
    expected = sum(len(layer["names"]) * int((layer["absmax"] > 6.0).sum()) for layer in finished["scan"]["layers"])
    assert at_6 == expected > 0
    window.threshold_panel.spin.setValue(3.0)
    assert window.threshold.summary().outlier_columns > at_6
    assert window.heatmap.overlay.image.sum() > 0
    window.threshold_panel.spin.setValue(20.0)
    assert window.threshold.summary().outlier_columns < at_6
    assert window.client.state is EngineState.READY
    window.threshold_panel.spin.setValue(6.0)

    # run two methods; the table shows the engine's numbers
    assert workbench.run_methods(["weight-only", "llm-int8"], {"tokens": 512, "window": 256}) is not None
    qtbot.waitUntil(lambda: "bench_decode" in finished and not workbench.running, timeout=600_000)
    assert window.step_bar.current is Step.EXPORT
    rows = {row["method"]: row for row in finished["evaluate"]["rows"]}
    assert set(rows) == {"baseline", "weight-only", "llm-int8"}
    table = window.results_view.table
    shown = {
        table.item(r, 0).text(): [table.item(r, c).text() for c in range(table.columnCount())]
        for r in range(table.rowCount())
    }
    column = {c.header: i for i, c in enumerate(shown_columns())}
    for method, row in rows.items():
        assert shown[method][column["perplexity"]] == f"{row['perplexity']:.3f}"
        assert shown[method][column["change"]] == f"{row['relative_change']:+.2%}"
        assert shown[method][column["model MB"]] == f"{row['total_bytes'] / 1e6:,.1f}"
    assert shown["llm-int8"][column["outlier cols"]] == f"{rows['llm-int8']['outlier_dims']:,}" != "0"
    assert f"{abs(rows['llm-int8']['relative_change']):.2%}" in window.results_view.sentence.text()
    for decoded in finished["bench_decode"]["rows"]:  # measured decoding: tokens/s and bound, and the text tab
        measured = [f"{decoded[key]:,.1f}" for key in ("tokens_per_s", "bound_tokens_per_s")]
        assert [shown[decoded["method"]][column[name]] for name in ("tokens/s", "bound")] == measured
    assert window.generated_view.table.rowCount() == 3
    assert window.results.chart_data()[0] == list(rows)

    # kill the engine: the window stays, keeps its state, and recovers
    os.kill(window.client.pid, signal.SIGKILL)
    qtbot.waitUntil(lambda: window.client.state is EngineState.CRASHED, timeout=20_000)
    assert window.isVisible() and window.status.restart_button.isVisibleTo(window)
    assert "crashed" in window.status.state_label.text()
    assert window.stats.rows_filled == 120 and len(window.results.rows) == 3
    assert not window.scan_panel.scan_button.isEnabled()
    window.status.restart_button.click()
    wait_ready(qtbot, window)
    assert window.model_panel.load_button.isEnabled() and not window.scan_panel.scan_button.isEnabled()
