"""Entry point of the frozen bundle: one executable for the window, the engine and the command line.

Without arguments it opens the window (what the desktop entry runs). With
arguments it is `int8wb`: `int8-workbench engine --key-stdin ...` is how the
window starts its engine child from the same bundle (a frozen app has no
`python -m int8wb.engine`, so `engine` runs engine/__main__.py; see engine.link.client),
and `int8-workbench --version`,
`int8-workbench install-desktop-entry` and the other subcommands work as they
do in a Python installation.

`int8-workbench --self-test REPORT.json` opens the window as usual, lets it
start its engine, loads the default model and scans it through the window,
closes the window and writes what happened, with wall-clock timestamps, to
REPORT.json (tests/test_packaging.py and the start-up figures of
packaging/README.md use it). It checks the bundle where it is installed.
"""

import json
import sys
import time

SELF_TEST_TIMEOUT_S = 900
SELF_TEST_SCAN = {"tokens": 256, "seq_len": 128}


def self_test(report_path: str) -> int:
    """Drive the real window through start, engine, load, scan and close; exit status 0 when all worked."""
    report = {"started": time.time(), "steps": {}, "errors": []}

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from int8wb.app import main as app_main
    from int8wb.app.main_window import MainWindow
    from int8wb.engine.link.client import EngineState

    app = app_main.create_app([sys.argv[0]])

    def step(name: str) -> None:
        report["steps"][name] = time.time()

    def finish(error: str | None = None) -> None:
        if error:
            report["errors"].append(error)
        if "closing" not in report["steps"]:
            step("closing")
            window = find_window()
            if window is not None:
                report["engine_pid"] = window.client.pid
                window.close()
            app.quit()

    def find_window():
        return next((w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow)), None)

    def attach() -> None:
        window = find_window()
        if window is None or not window.isVisible():
            return finish("no workbench window is visible after start-up")
        step("window_visible")

        def on_state(state: EngineState) -> None:
            if state is EngineState.READY and "engine_ready" not in report["steps"]:
                step("engine_ready")
                report["engine_info"] = dict(window.client.engine_info)
                if window.workbench.job is None and window.workbench.load_model(None) is None:
                    finish("the window refused to load the default model")  # unless it loads one at start
            elif state is EngineState.CRASHED:
                finish(f"the engine crashed; its log: {window.client.log_path}")

        def on_finished(job: str, request: str, result: dict) -> None:
            if request == "load_model":
                step("model_loaded")
                report["model"] = {key: result.get(key) for key in ("name", "kind", "layers", "parameters")}
                QTimer.singleShot(0, start_scan)  # as a click would: after the window has handled the result
            elif request == "scan":
                step("scanned")
                report["heatmap_rows_filled"] = int(window.stats.rows_filled)
                report["scan_finished"] = bool(window.stats.finished)
                report["scan_result_keys"] = sorted(result)
                finish()

        def start_scan() -> None:
            if window.workbench.start_scan(dict(SELF_TEST_SCAN)) is None:
                finish("the window refused to scan")

        def on_failed(job: str, kind: str, message: str, traceback_text: str) -> None:
            finish(f"{kind}: {message}\n{traceback_text}")

        window.engine.sig_state_changed.connect(on_state)
        window.engine.sig_job_finished.connect(on_finished)
        window.engine.sig_job_failed.connect(on_failed)
        if window.client.state is EngineState.READY:  # the engine was quicker than this hook
            on_state(EngineState.READY)

    QTimer.singleShot(0, attach)
    QTimer.singleShot(SELF_TEST_TIMEOUT_S * 1000, lambda: finish(f"not done within {SELF_TEST_TIMEOUT_S} s"))
    status = app_main.main([sys.argv[0]])
    step("exited")
    report["exit_status"] = status
    with open(report_path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2, default=str)
    return 0 if status == 0 and not report["errors"] else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--self-test":
        sys.exit(self_test(sys.argv[2]))
    if len(sys.argv) > 1 and sys.argv[1] == "engine":
        # The window's engine child: exactly what `python -m int8wb.engine` runs in a Python installation.
        from int8wb.engine.__main__ import run

        sys.argv = [sys.argv[0], *sys.argv[2:]]
        sys.exit(run())
    from int8wb.engine.cli import main

    sys.exit(main(sys.argv[1:] or ["gui"]))
