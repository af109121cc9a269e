"""The window's own wiring, without an engine: About, the planner dialog and its jobs, jobs it did not send."""

from __future__ import annotations

from int8wb.engine.installation import __version__


def test_about_names_the_version_and_the_missing_engine(make_workbench):
    window = make_workbench(start_engine=False)
    text = window.about_text()
    assert f"Int8 Workbench {__version__}" in text and "Engine: not connected" in text
    window.client.engine_info = {"engine": "0.0.1"}  # what the handshake stores
    assert "Warning: the engine is version 0.0.1" in window.about_text()


def test_planner_dialog_opens_once_and_knows_there_is_no_model(make_workbench):
    window = make_workbench(start_engine=False)
    dialog = window.open_planner()
    assert dialog.isVisible() and window.open_planner() is dialog
    assert window.act_planner.shortcut().toString() == "Ctrl+M"


def test_results_of_jobs_the_window_did_not_send_are_left_alone(make_workbench):
    window = make_workbench(start_engine=False)
    window.engine.sig_job_finished.emit("someone-elses-job", "plan_memory", {"methods": [], "notes": ["70B plan"]})
    window.engine.sig_job_failed.emit("someone-elses-job", "bad_input", "no", "")
    assert window.results.plan_note == "" and window.error_dialog is None


def test_a_plan_job_reaches_the_planner_and_not_the_run(make_workbench):
    from int8wb.engine.link.client import Job

    window = make_workbench(start_engine=False)
    dialog = window.open_planner()
    window.memory_planner.job = Job("plan-1", "plan_memory")  # as if the dialog's Plan had sent it
    window.engine.sig_job_failed.emit("plan-1", "bad_input", "the config of x lacks hidden_size", "")
    assert "lacks hidden_size" in dialog.status.text() and window.error_dialog is None
    window.memory_planner.job = Job("plan-2", "plan_memory")
    window.engine.sig_job_finished.emit("plan-2", "plan_memory", {"methods": [], "notes": ["70B plan"]})
    assert "could not be read" in dialog.status.text() and window.results.plan_note == ""
    assert not window.memory_planner.running and window.workbench.job is None
