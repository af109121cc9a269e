"""Task accuracy in the window: the Run panel's optional tasks field, the Run's last job, the results' table.

The result shown is the engine's own (engine.measure.tasks on a tiny model and the smoke task of
tests/support/smoke_task.py), not one written by hand.
"""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from int8wb.app.view_models.scan_stats import ScanStatistics
from int8wb.app.view_models.task_accuracy import TaskAccuracy, accuracy_text, recovery_text
from int8wb.app.view_models.threshold import ThresholdModel
from int8wb.app.views.results_view import ResultsView
from int8wb.app.views.run_panel import RunPanel
from tests.test_app_workflow import MODEL, finish
from tests.test_app_workflow import make_workbench as offline_workbench

pytest.importorskip("lm_eval")

METHODS = ["absmax-tensor", "llm-int8-dynamic"]


@pytest.fixture(scope="module")
def task_result(tmp_path_factory) -> dict:
    from int8wb.engine.process.session import Session
    from int8wb.engine.task import Task
    from tests.support import smoke_task
    from tests.support.tiny_models import save_tiny_llama

    session = Session()
    model_dir = save_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", intermediate=128)
    session.load_model({"model": str(model_dir), "device": "cpu"}, Task())
    session.quantize({"methods": METHODS}, Task())
    task_file = smoke_task.write(tmp_path_factory.mktemp("smoke"), count=12)
    return session.task_accuracy({"tasks": str(task_file)}, Task())


def test_the_tasks_field_goes_with_the_run_and_scores_the_methods_last(qtbot):
    workbench, events = offline_workbench()
    workbench.load_model(None)
    finish(workbench, MODEL)
    panel = RunPanel()
    qtbot.addWidget(panel)
    panel.sig_run.connect(workbench.run_methods)
    panel.set_methods(METHODS)
    assert "winogrande,hellaswag,piqa,lambada_openai" in panel.tasks.placeholderText()
    qtbot.keyClicks(panel.tasks, " piqa,/data/smoke.yaml ")
    qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
    for reply in ({"models": []}, {"rows": []}, {"methods": []}, {"rows": []}):
        finish(workbench, reply)
    requests = [request for request, _ in workbench.client.sent]
    assert requests[-5:] == ["quantize", "evaluate", "plan_memory", "bench_decode", "task_accuracy"]
    sent = dict(workbench.client.sent[-4:])
    assert "tasks" not in sent["evaluate"]
    assert sent["task_accuracy"] == {"methods": METHODS, "tasks": "piqa,/data/smoke.yaml"}
    finish(workbench, {"tasks": [], "limit": None, "rows": []})
    assert isinstance(workbench.results.tasks, TaskAccuracy) and not workbench.running


def test_an_empty_tasks_field_scores_no_tasks(qtbot):
    workbench, _ = offline_workbench()
    workbench.load_model(None)
    finish(workbench, MODEL)
    panel = RunPanel()
    qtbot.addWidget(panel)
    panel.sig_run.connect(workbench.run_methods)
    qtbot.keyClicks(panel.tasks, "   ")
    panel.set_methods(["absmax-tensor"])
    qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
    for reply in ({"models": []}, {"rows": []}, {"methods": []}, {"rows": []}):
        finish(workbench, reply)
    assert "task_accuracy" not in [request for request, _ in workbench.client.sent]
    assert not workbench.running


@pytest.mark.slow
def test_the_results_show_accuracy_and_recovery_side_by_side(qtbot, task_result):
    workbench, _ = offline_workbench()
    stats = ScanStatistics()
    view = ResultsView(workbench.results, stats, ThresholdModel(stats))
    qtbot.addWidget(view)
    view.show()
    workbench.results.add_quantized({"models": [{"method": method} for method in METHODS]})
    assert not view.task_table.isVisible()
    workbench.results.set_tasks(TaskAccuracy(task_result))
    table = view.task_table
    assert table.isVisible() and table.rowCount() == 3
    (task,) = task_result["tasks"]
    header = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]
    assert header == ["method", f"smoke_mc acc ({task['examples']:,})", "recovery"]
    for r, row in enumerate(task_result["rows"]):
        assert table.item(r, 0).text() == row["method"]
        assert table.item(r, 1).text() == accuracy_text(row) == f"{row['accuracy']:.1%} ± {row['stderr']:.1%}"
        assert table.item(r, 2).text() == recovery_text(row) == f"{row['recovery']:.1%}"
    assert "recovery is the accuracy over the baseline's" in table.toolTip()
    workbench.results.add_quantized({"models": []})  # a new Run's models: the old scores no longer apply
    assert not table.isVisible()
