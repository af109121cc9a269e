"""The divergence columns of the results table and the token view, fed by a real evaluation of a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPoint
from PySide6.QtGui import QHelpEvent
from PySide6.QtWidgets import QApplication, QToolTip

from int8wb.app.view_models.results import COLUMNS, ResultsModel, row_tooltip, shown_columns
from int8wb.app.view_models.scan_stats import ScanStatistics
from int8wb.app.view_models.threshold import ThresholdModel
from int8wb.app.views.results_view import ResultsView
from int8wb.app.views.token_view import TokenView

METHOD = "absmax-tensor"


@pytest.fixture(scope="module")
def evaluation():
    from int8wb.engine.measure import evaluate
    from int8wb.engine.quant import quantize
    from int8wb.engine.task import Task
    from tests.support.tiny_models import TinyLoaded, WordTokenizer, tiny_llama

    model = tiny_llama(seed=0)
    loaded = TinyLoaded(model, WordTokenizer(model.config.vocab_size))
    variant = quantize.run({"method": METHOD}, Task(), loaded, None)
    return evaluate.run({"tokens": 256, "window": 64}, Task(), loaded, {METHOD: variant})


def _results(evaluation) -> ResultsModel:
    model = ResultsModel()
    model.add_evaluation(evaluation)
    return model


def test_the_results_table_shows_the_divergence_with_a_tooltip_on_each_header(qtbot, evaluation):
    stats = ScanStatistics()
    view = ResultsView(_results(evaluation), stats, ThresholdModel(stats))
    qtbot.addWidget(view)
    view.refresh()
    headers = [view.table.horizontalHeaderItem(i) for i in range(view.table.columnCount())]
    by_name = {item.text().replace("\n", " "): (i, item) for i, item in enumerate(headers)}
    row = next(r for r in evaluation["rows"] if r["method"] == METHOD)
    methods = [view.table.item(r, 0).text() for r in range(view.table.rowCount())]
    table_row = methods.index(METHOD)
    for header, value in (("mean KL", f"{row['kl_mean']:.4f}"), ("same top", f"{row['same_top']:.2%}")):
        column, item = by_name[header]
        assert "floating-point" in item.toolTip()
        assert view.table.item(table_row, column).text() == value
    column, _ = by_name["change 95%"]
    assert view.table.item(table_row, column).text() == f"{row['change_low']:+.2%}…{row['change_high']:+.2%}"
    for header in ("KL 99.9%", "RMS Δp"):
        assert header in by_name
    assert f"KL max: {row['kl_max']:.4f}" in row_tooltip(view.model.rows[METHOD])
    assert all(column.tooltip for column in COLUMNS)
    assert "mean KL" in view.model.to_csv().splitlines()[0]


def test_a_new_quantization_clears_the_stale_divergence(evaluation):
    model = _results(evaluation)
    model.add_quantized({"models": [{"method": METHOD, "int8_bytes": 1}]})
    assert model.rows[METHOD].kl_mean is None
    assert [c.text(model.rows[METHOD]) for c in shown_columns() if c.header == "mean KL"] == ["—"]


def test_the_token_view_shades_the_text_and_hover_shows_both_top_fives(qtbot, evaluation):
    view = TokenView(_results(evaluation))
    qtbot.addWidget(view)
    view.resize(900, 500)
    view.show()
    qtbot.waitExposed(view)
    assert [view.method.itemText(i) for i in range(view.method.count())] == [METHOD, "baseline"]
    tokens = evaluation["token_detail"]["token_ids"]
    assert len(view.starts) == tokens.size
    worst = view.data.worst(METHOD)
    kl = evaluation["token_detail"]["methods"][METHOD]["kl"]
    assert view.worst.count() == len(worst) and worst[0].kl == pytest.approx(float(kl.max()))

    index = worst[0].index
    view.text.ensureCursorVisible()
    view._go_to(view.worst.item(0))
    point = view.point_of(index)
    assert view.token_at(point) == index
    event = QHelpEvent(QEvent.Type.ToolTip, point, view.text.viewport().mapToGlobal(point))
    QApplication.sendEvent(view.text.viewport(), event)
    shown = QToolTip.text()  # what the hover event put on screen
    assert shown == view.tooltip_at(point)
    lines = shown.splitlines()
    assert lines[0].startswith(f"KL divergence {float(kl.max()):.4f}")
    float_line = next(line for line in lines if line.startswith("floating-point model: "))
    method_line = next(line for line in lines if line.startswith(f"{METHOD}: "))
    for line in (float_line, method_line):
        assert line.count("%") == 5
    top = evaluation["token_detail"]["reference_top_probs"][worst[0].position]
    assert f"{float(top[0]):.1%}" in float_line

    view.method.setCurrentText("baseline")
    assert view.tooltip_at(view.point_of(0)).startswith("The first token of an evaluation window")
    assert np.isclose(view.data.kl("baseline"), 0, atol=1e-5).all()


def test_the_token_view_is_empty_until_an_evaluation_and_after_a_clear(qtbot, evaluation):
    model = ResultsModel()
    view = TokenView(model)
    qtbot.addWidget(view)
    assert view.empty.currentWidget() is view.empty.message
    model.add_evaluation(evaluation)
    assert view.empty.currentWidget() is view.empty.content and view.starts
    model.clear()
    assert view.empty.currentWidget() is view.empty.message and not view.starts
    assert view.tooltip_at(QPoint(5, 5)) == ""
