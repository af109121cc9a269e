"""The first five minutes: what a newcomer sees and keeps, offscreen, with engine events played by hand.

The start-up load of the default model through a real engine is in
tests/test_app_workbench.py (slow); here the engine is started only to show
that, with the setting off, nothing loads.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication

from int8wb.app.view_models.results import saved_columns, shown_columns
from int8wb.app.view_models.workbench import Step
from int8wb.app.views.saving import save_plot
from int8wb.engine.link.client import EngineState, Job
from tests.support.scan_payloads import layer_payload

MODEL = {  # as the engine describes the embedded default model, with fewer layers
    "name": "SmolLM2-135M-Instruct (embedded)",
    "architecture": "LlamaForCausalLM",
    "parameters": 134_515_008,
    "layers": 6,
    "hidden_size": 32,
    "intermediate_size": 64,
    "dtype": "float32",
    "device": "cpu",
    "notes": ["weights are dequantized from a 4-bit GGUF file (Q4_1): the baseline is that dequantized model"],
}


def engine_answers(window, request: str, result: dict) -> None:
    """The workbench sent `request` and the engine answered it (no engine runs)."""
    window.workbench.job = Job(f"job-{request}", request)
    window.workbench.on_finished(f"job-{request}", request, result)


def scan(window) -> None:
    """A finished scan of MODEL: dimension 5 is an outlier (40) in every layer and input."""
    rng = np.random.default_rng(1)
    index = 0
    for layer in range(MODEL["layers"]):
        for kind, width in (("attn_in", 32), ("attn_out", 32), ("mlp_in", 32), ("mlp_down", 64)):
            values = rng.uniform(0.1, 3.0, width)
            values[5] = 40.0
            window.stats.add_layer(layer_payload(index, layer, kind, values, out_features=32))
            index += 1
    engine_answers(window, "scan", {"layers": [], "threshold": 6.0})


QUANTIZED = {
    "models": [
        {"method": m, "int8_bytes": 100_000, "float_bytes": f, "total_bytes": 100_000 + f, "outlier_dims": d}
        for m, f, d in (("absmax-tensor", 9_000, 0), ("vectorwise", 9_500, 0), ("llm-int8", 12_000, 24))
    ]
}
EVALUATED = {
    "settings": {"tokens": 8192},
    "rows": [
        {"method": "baseline", "perplexity": 17.114, "relative_change": 0.0, "seconds": 3.0},
        {"method": "absmax-tensor", "perplexity": 39.444, "relative_change": 1.3048, "seconds": 4.5},
        {"method": "vectorwise", "perplexity": 17.656, "relative_change": 0.0317, "seconds": 4.4},
        {"method": "llm-int8", "perplexity": 17.377, "relative_change": 0.01537, "seconds": 4.9},
    ],
}


def run(window) -> None:
    engine_answers(window, "quantize", QUANTIZED)
    engine_answers(window, "evaluate", EVALUATED)


def table_cells(window) -> dict[str, list[str]]:
    table = window.results_view.table
    return {
        table.item(r, 0).text(): [table.item(r, c).text() for c in range(table.columnCount())]
        for r in range(table.rowCount())
    }


# --- start-up ---------------------------------------------------------------------------------------


def test_with_the_setting_off_nothing_loads_at_start(make_workbench, qtbot):
    window = make_workbench(load_at_start=False)
    assert not window.model_panel.load_at_start.isChecked()
    qtbot.waitUntil(lambda: window.client.state is EngineState.READY, timeout=60_000)
    qtbot.wait(200)
    assert window.workbench.job is None and window.client.active_job is None
    assert window.step_bar.current is Step.LOAD and window.model_panel.load_button.property("current")


def test_the_setting_and_the_last_model_are_what_loads_at_start(make_workbench):
    window = make_workbench(start_engine=False)
    assert window.model_panel.load_at_start.isChecked()  # on unless turned off
    window.model_panel.add_source("/models/last")
    window.start_engine()
    assert window.workbench.load_when_ready == {"model": "/models/last"}
    window.client.close()


# --- the step bar and the buttons -------------------------------------------------------------------


def test_the_step_bar_follows_the_workflow(make_workbench):
    window = make_workbench(start_engine=False)
    bar, steps = window.step_bar, []

    def seen() -> None:
        steps.append(bar.current)
        states = [bar.buttons[step].property("state") for step in Step]
        assert states.count("current") == 1 and states.index("current") == list(Step).index(bar.current)
        assert all(state == "done" for state in states[: states.index("current")])

    seen()
    engine_answers(window, "load_model", MODEL)
    seen()
    assert window.scan_panel.scan_button.property("current") and not window.model_panel.load_button.property("current")
    scan(window)
    seen()
    window.threshold.set_threshold(8.0)
    seen()
    assert window.run_panel.run_button.property("current")
    run(window)
    seen()
    assert window.run_panel.export_button.property("current") and not window.run_panel.run_button.property("current")
    assert steps == [Step.LOAD, Step.SCAN, Step.THRESHOLD, Step.RUN, Step.EXPORT]
    assert "✓" in bar.buttons[Step.LOAD].text() and bar.buttons[Step.RUN].toolTip()


# --- empty states ------------------------------------------------------------------------------------


def test_each_plot_says_what_fills_it_until_its_data_arrive(make_workbench):
    window = make_workbench(start_engine=False)
    views = {
        "heatmap": window.heatmap,
        "histogram": window.histogram,
        "profile": window.profile,
        "results": window.results_view,
    }
    for name, view in views.items():
        assert view.empty.is_empty and view.empty.message.isVisibleTo(window), name
        assert "What am I looking at?" in view.empty.message.text()
    assert "Scan to see the largest activation" in window.heatmap.empty.message.text()
    engine_answers(window, "load_model", MODEL)
    scan(window)
    window.histogram.refresh()
    assert not window.heatmap.empty.is_empty and not window.histogram.empty.is_empty
    assert window.profile.empty.is_empty and window.profile.empty.text.startswith("Click a dimension")
    window.profile.show_dimension(5)
    assert not window.profile.empty.is_empty
    assert window.results_view.empty.is_empty
    run(window)
    assert not window.results_view.empty.is_empty and window.results_view.chart.isVisibleTo(window)
    low, high = window.results_view.chart.getViewBox().viewRange()[1]
    assert low == 0 and high > 39.444  # no negative perplexity axis
    window.heatmap.empty.message.linkActivated.emit("explain")
    assert window.explain.isVisible()


# --- the result in words, the explanation --------------------------------------------------------------


def test_the_result_sentence_says_the_tables_numbers(make_workbench):
    window = make_workbench(start_engine=False)
    engine_answers(window, "load_model", MODEL)
    scan(window)
    run(window)
    sentence = window.results_view.sentence.text()
    cells = table_cells(window)
    change = [c.header for c in shown_columns()].index("change")
    outliers = [c.header for c in shown_columns()].index("outlier cols")
    for method in ("absmax-tensor", "vectorwise", "llm-int8"):
        assert cells[method][change].lstrip("+") in sentence
    assert sentence.startswith(f"Naive INT8 raised perplexity by {cells['absmax-tensor'][change].lstrip('+')};")
    total = window.threshold.summary().total_columns
    assert f"keeping {cells['llm-int8'][outliers]} of {total:,} input columns" in sentence
    assert f"({24 / total:.2%}) in floating point" in sentence


def test_the_explanation_tells_this_models_numbers_as_they_arrive(make_workbench):
    window = make_workbench(start_engine=False)
    panel = window.show_explanation()
    assert "Load a model (step 1)" in panel.browser.toPlainText()
    engine_answers(window, "load_model", MODEL)
    text = panel.browser.toPlainText()
    assert "SmolLM2-135M-Instruct (embedded): 134.5 M parameters, 6 decoder layers" in text
    assert "Weights are dequantized from a 4-bit GGUF file" in text
    scan(window)
    summary = window.threshold.summary()
    text = panel.browser.toPlainText()
    assert f"{summary.outlier_columns:,} of {summary.total_columns:,} Linear input columns" in text
    assert "dimension 5 is over it in 6 of 6 layers" in text
    run(window)
    assert "Naive INT8 raised perplexity by 130.48%" in panel.browser.toPlainText()
    assert "baseline's perplexity is 17.114" in panel.browser.toPlainText()
    assert window.act_explain.shortcut().toString() == "F1"


# --- things to keep ------------------------------------------------------------------------------------


def test_results_csv_round_trips(make_workbench, tmp_path):
    window = make_workbench(start_engine=False)
    engine_answers(window, "load_model", MODEL)
    run(window)
    path = window.results_view.save_csv(tmp_path / "results.csv")
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert list(rows[0]) == [column.header for column in saved_columns()]
    assert [row["method"] for row in rows] == list(window.results.rows)
    for row in rows:
        kept = window.results.rows[row["method"]]
        assert float(row["perplexity"]) == kept.perplexity
        assert (float(row["change"]) if row["change"] else None) == kept.relative_change
        assert (float(row["float MB"]) * 1e6 if row["float MB"] else None) == kept.float_bytes
    shown = table_cells(window)
    for method, cells in shown.items():
        assert cells == window.results.rows[method].cells()


def test_results_copy_as_markdown(make_workbench):
    window = make_workbench(start_engine=False)
    engine_answers(window, "load_model", MODEL)
    run(window)
    window.act_copy_markdown.trigger()
    lines = QApplication.clipboard().text().splitlines()
    assert lines[0] == "| " + " | ".join(column.header for column in saved_columns()) + " |"
    assert lines[3].startswith("| absmax-tensor | 39.444 | +130.48% |") and len(lines) == 2 + 4


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plots_save_as_png_and_svg(make_workbench, tmp_path, suffix):
    window = make_workbench(start_engine=False)
    engine_answers(window, "load_model", MODEL)
    scan(window)
    run(window)
    for name, item in (
        ("heatmap", window.heatmap.graphics.scene()),
        ("histogram", window.histogram.plot.getPlotItem()),
        ("chart", window.results_view.chart.getPlotItem()),
    ):
        path = save_plot(item, tmp_path / f"{name}{suffix}")
        assert path.stat().st_size > 1000, name
        if suffix == ".png":
            assert not QImage(str(path)).isNull()
        else:
            assert "<svg" in path.read_text()
    assert window.heatmap.graphics.contextMenuPolicy().name == "CustomContextMenu"


# --- fit, keys, memory, tooltips -------------------------------------------------------------------------


def test_at_1366_by_768_the_run_button_and_evaluation_settings_show_without_scrolling(make_workbench, qtbot):
    window = make_workbench(start_engine=False, size=(1366, 768))
    qtbot.waitExposed(window)
    engine_answers(window, "load_model", MODEL)
    scan(window)  # the threshold panel at its tallest: its table of input kinds
    qtbot.wait(50)
    viewport = window.sidebar.viewport()
    assert window.size().toTuple() == (1366, 768)
    assert window.sidebar.verticalScrollBar().value() == 0
    for widget in (window.run_panel.run_button, window.run_panel.eval_tokens, window.run_panel.window):
        top_left = widget.mapTo(viewport, widget.rect().topLeft())
        bottom_right = widget.mapTo(viewport, widget.rect().bottomRight())
        assert viewport.rect().contains(top_left) and viewport.rect().contains(bottom_right), widget
    table = window.results_view.table
    engine_answers(window, "quantize", {"models": [*QUANTIZED["models"], {"method": "weight-only"}]})
    engine_answers(window, "evaluate", {**EVALUATED, "rows": [*EVALUATED["rows"], {"method": "weight-only"}]})
    qtbot.wait(50)
    assert table.rowCount() == 5 and window.results_view.sentence.isVisible()
    assert table.horizontalScrollBar().maximum() == 0, "the results table needs a horizontal scroll bar"
    assert table.verticalScrollBar().maximum() == 0, "not every row of the results table shows"
    folded = window.results_view.folded  # the detail columns that did not fit: in each row's tooltip instead
    assert folded and all(f"\n{header}: " in "\n" + table.item(1, 0).toolTip() for header in folded)


def test_shortcuts_are_in_the_menus(make_workbench):
    window = make_workbench(start_engine=False)
    keys = {
        window.act_load: "Ctrl+L",
        window.act_scan: "Ctrl+R",
        window.act_run: "Ctrl+Return",
        window.act_export: "Ctrl+E",
        window.act_cancel: "Esc",
        window.act_quit: "Ctrl+Q",
    }
    for action, key in keys.items():
        assert action.shortcut().toString() == key and action in action.associatedObjects()[0].actions()


def test_sizes_splitters_and_choices_are_remembered(make_workbench, qtbot):
    from int8wb.app.main_window import MainWindow

    window = make_workbench(start_engine=False, size=(780, 580))  # inside the offscreen screen (800 x 600)
    qtbot.waitExposed(window)
    window.right.setSizes([500, 100, 100])
    window.run_panel.set_methods(["llm-int8-dynamic"])
    window.run_panel.eval_tokens.setValue(2048)
    window.scan_panel.seq_len.setValue(256)
    window.model_panel.load_at_start.setChecked(False)
    window.heatmap.mode_box.setCurrentIndex(1)
    sizes = window.right.sizes()
    window.close()
    again = MainWindow(settings=window.settings)
    qtbot.addWidget(again)
    again.show()
    qtbot.waitExposed(again)
    assert again.size().toTuple() == (780, 580) and again.right.sizes() == sizes
    assert again.run_panel.methods() == ["llm-int8-dynamic"] and again.run_panel.eval_tokens.value() == 2048
    assert again.scan_panel.seq_len.value() == 256 and not again.model_panel.load_at_start.isChecked()
    assert again.heatmap.mode == "share"
    again.close()


def test_methods_threshold_columns_and_steps_explain_themselves(make_workbench):
    window = make_workbench(start_engine=False)
    for name, box in window.run_panel.method_boxes.items():
        assert name in box.toolTip() and len(box.toolTip()) > 60
    for widget in (window.threshold_panel.spin, window.threshold_panel.fraction_spin, window.threshold_panel.slider):
        assert len(widget.toolTip()) > 40
    header = window.results_view.table.horizontalHeaderItem
    assert all(len(header(c).toolTip()) > 20 for c in range(window.results_view.table.columnCount()))
    assert all(button.toolTip() for button in window.step_bar.buttons.values())
