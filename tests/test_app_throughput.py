"""Throughput in the GUI: the planner's decode section, the results table's tokens/s and bound, the text tab.

Fed with real engine results (a 70B preset plan; a tiny model's measured decoding), no engine process.
"""

from __future__ import annotations

import json

import pytest

from int8wb.app.view_models.results import ResultsModel, shown_columns
from int8wb.app.view_models.throughput import ThroughputViewModel, format_gb


@pytest.fixture(scope="module")
def plan_70b():
    from int8wb.engine.planning import plan_memory
    from int8wb.engine.task import Task

    result = plan_memory.run({"preset": "llama-2-70b"}, Task())
    return json.loads(json.dumps(result, sort_keys=True))  # as a Qt dict signal delivers it: keys sorted


@pytest.fixture(scope="module")
def measured():
    """A real `bench_decode` result of the tiny planted-outlier Llama: baseline and naive INT8."""
    from int8wb.engine.measure import decode
    from int8wb.engine.quant import quantize
    from int8wb.engine.task import Task
    from tests.support.tiny_models import tiny_loaded

    loaded = tiny_loaded()
    variants = {"absmax-tensor": quantize.run({"method": "absmax-tensor"}, Task(), loaded)}
    return decode.run({"new_tokens": 5, "prompt_tokens": 8, "repeats": 1, "copy_mib": 8}, Task(), loaded, variants)


def test_throughput_view_reads_the_70b_plan(plan_70b):
    view = ThroughputViewModel(plan_70b)
    assert view.gpus == ["A100-40GB", "A100-80GB", "H100-80GB", "H200-141GB"]
    assert view.methods[0] == "baseline"
    assert view.bytes_per_token("baseline").endswith(" GB") and view.bytes_per_token("baseline").startswith("138.")
    assert view.bytes_per_token("vectorwise").startswith("70.")
    assert view.cell("baseline", "H100-80GB") == "24.1"
    terms = {term.label: term for term in view.terms("vectorwise", "H100-80GB")}
    read = terms["Read per step"]
    assert [child.label for child in read.children][:2] == ["int8 weight", "scales"]  # planner order, not sorted
    assert "KV cache read" in [child.label for child in read.children]
    assert terms["÷ H100-80GB bandwidth"].value_text == "3,350 GB/s"
    assert terms["tokens/s"].value_text.endswith("per sequence")
    compute = next(term for label, term in terms.items() if label.startswith("Compute per step"))
    assert compute.label.endswith("bandwidth-bound") and "at any batch" in compute.note
    against = terms["Against FP16 (baseline)"]
    assert against.value_text.startswith("1.9") and against.value_text.endswith("×")
    assert [child.label for child in against.children][0] == "+ Linear weights"
    assert against.children[0].value_text == "2.00×"


def test_a_batch_shows_the_rate_of_the_whole_batch():
    from int8wb.engine.planning import plan_memory
    from int8wb.engine.task import Task

    result = plan_memory.run(
        {"preset": "llama-2-70b", "batch": 8, "methods": ["baseline"], "gpus": ["H200-141GB"]}, Task()
    )
    view = ThroughputViewModel(result)
    per_sequence = result["methods"][0]["decode"]["gpus"][0]["tokens_per_s_per_sequence"]
    assert view.cell("baseline", "H200-141GB") == f"{per_sequence:,.1f} (× 8 = {8 * per_sequence:,.0f})"


def test_decimal_units():
    assert format_gb(138.77e9) == "138.77 GB"
    assert format_gb(26.87e6) == "26.87 MB"
    assert format_gb(512) == "512 B"


def test_results_table_gains_tokens_per_s_and_bound(measured):
    column = {c.header: i for i, c in enumerate(shown_columns())}  # both are in the table, not only the tooltip
    results = ResultsModel()
    results.add_decode(measured)
    rows = {row["method"]: row for row in measured["rows"]}
    for method, row in rows.items():
        cells = results.rows[method].cells()
        assert cells[column["tokens/s"]] == f"{row['tokens_per_s']:,.1f}"
        assert cells[column["bound"]] == f"{row['bound_tokens_per_s']:,.1f}"
    assert list(results.rows) == ["baseline", "absmax-tensor"]
    results.add_quantized({"models": [{"method": "absmax-tensor", "int8_bytes": 1}]})
    cells = results.rows["absmax-tensor"].cells()
    assert cells[column["tokens/s"]] == cells[column["bound"]] == "—"  # stale after quantizing again
    results.clear()
    assert results.decode is None


# --- the widgets, offscreen -----------------------------------------------------------------------


def test_generated_text_tab_shows_each_methods_tokens(qtbot, measured):
    from int8wb.app.views.generated_text import GeneratedTextView

    results = ResultsModel()
    view = GeneratedTextView(results)
    qtbot.addWidget(view)
    results.add_decode(measured)
    assert view.table.rowCount() == 2
    assert view.table.item(0, 0).text() == "baseline" and view.table.item(0, 3).text() == "same as the first row"
    assert view.table.item(1, 4).text() == measured["rows"][1]["text"].replace("\n", "⏎")
    assert "copy moved" in view.caption.text() and view.prompt.text().startswith("Prompt: ")


def test_planner_dialog_has_a_throughput_section_that_follows_the_selection(planner_dialog, plan_70b):
    dialog = planner_dialog
    dialog.show_result(plan_70b)
    section = dialog.throughput
    assert section.table.rowCount() == len(dialog.planner.plan_view.methods) and section.table.columnCount() == 2 + 4
    assert section.table.horizontalHeaderItem(4).text() == "H100-80GB\ntokens/s"
    assert section.table.item(0, 4).text() == "24.1"
    assert section.terms_caption.text() == "Why 11.2 tokens/s on A100-40GB for FP16 (baseline)"
    vectorwise = dialog.planner.plan_view.methods.index("vectorwise")
    dialog.table.setCurrentCell(vectorwise, 5)  # the memory table: vector-wise on H200
    assert section.selected == ("vectorwise", "H200-141GB")
    labels = [section.tree.topLevelItem(i).text(0) for i in range(section.tree.topLevelItemCount())]
    assert labels[:4] == ["Read per step", "÷ H200-141GB bandwidth", "= step time", "tokens/s"]
    assert labels[-1] == "Against FP16 (baseline)"
    section.table.setCurrentCell(0, 2)  # its own table: the baseline on A100-40GB
    assert section.selected == ("baseline", "A100-40GB")
    assert section.tree.topLevelItem(section.tree.topLevelItemCount() - 1).text(0).startswith("Compute per step")
