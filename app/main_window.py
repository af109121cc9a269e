"""The workbench window: controls on the left, heatmap / histogram / profile / results on the right.

It owns the Qt-free view models, the views that observe them, and one
`QtEngineClient`. User actions become engine requests; engine events update
the view models. Nothing here waits for the engine: every request answers
through signals, so the window stays responsive while the engine works.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QInputDialog,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

import engine
from app.engine_client import QtEngineClient
from app.view_models.results import ResultsModel
from app.view_models.scan_stats import ScanStatistics
from app.view_models.threshold import ThresholdModel
from app.views.controls import ModelPanel, RunPanel, ScanPanel
from app.views.heatmap import HeatmapView
from app.views.histogram import HistogramView
from app.views.planner_dialog import PlannerDialog
from app.views.profile import DimensionProfileView
from app.views.results_view import ResultsView
from app.views.status import WorkbenchStatusBar
from app.views.threshold_panel import ThresholdPanel
from engine.vocabulary import DEFAULT_THRESHOLD, FLOAT_BYTES, KIND_ORDER, RESULT_GPUS


class MainWindow(QMainWindow):
    def __init__(self, client: QtEngineClient | None = None, settings: QSettings | None = None) -> None:
        super().__init__()
        self.setWindowTitle("Int8 Workbench")
        self.settings = settings or QSettings("int8-workbench", "workbench")
        self.client = client or QtEngineClient(self)
        self.stats = ScanStatistics()
        self.threshold = ThresholdModel(self.stats, _float_setting(self.settings.value("threshold"), DEFAULT_THRESHOLD))
        self.results = ResultsModel()
        self.model_info: dict[str, Any] | None = None
        self.jobs: dict[str, str] = {}  # job id -> request type, for the jobs this window started
        self.pending_steps: list[tuple[str, dict]] = []  # the rest of a Run: evaluate, plan_memory
        self.error_dialog: QMessageBox | None = None
        self.planner: PlannerDialog | None = None
        self._build()
        self._build_actions()
        self._connect_client()
        self._restore_settings()
        self._update_enabled()

    # --- layout ----------------------------------------------------------------------------------

    def _build(self) -> None:
        self.model_panel = ModelPanel()
        self.scan_panel = ScanPanel()
        self.threshold_panel = ThresholdPanel(self.threshold)
        self.run_panel = RunPanel()
        left = QWidget()
        left.setObjectName("sidebar")
        left_layout = QVBoxLayout(left)
        for panel in (self.model_panel, self.scan_panel, self.threshold_panel, self.run_panel):
            left_layout.addWidget(panel)
        left_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(left)
        scroll.setWidgetResizable(True)
        scroll.setMinimumWidth(400)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

        self.heatmap = HeatmapView(self.stats, self.threshold)
        self.histogram = HistogramView(self.stats, self.threshold)
        self.profile = DimensionProfileView(self.stats, self.threshold)
        self.results_view = ResultsView(self.results)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)
        self.middle = QSplitter(Qt.Orientation.Horizontal)
        self.middle.addWidget(self.histogram)
        self.middle.addWidget(self.profile)
        self.bottom_tabs = QTabWidget()
        self.bottom_tabs.addTab(self.results_view, "Results")
        self.bottom_tabs.addTab(self.log_view, "Log")
        self.right = QSplitter(Qt.Orientation.Vertical)
        self.right.addWidget(self.heatmap)
        self.right.addWidget(self.middle)
        self.right.addWidget(self.bottom_tabs)
        self.right.setStretchFactor(0, 5)
        self.right.setStretchFactor(1, 3)
        self.right.setStretchFactor(2, 3)
        self.main_splitter = QSplitter(Qt.Orientation.Horizontal)
        self.main_splitter.addWidget(scroll)
        self.main_splitter.addWidget(self.right)
        self.main_splitter.setStretchFactor(1, 1)
        self.setCentralWidget(self.main_splitter)
        self.status = WorkbenchStatusBar()
        self.setStatusBar(self.status)

        self.model_panel.sig_load.connect(self.load_model)
        self.scan_panel.sig_scan.connect(self.start_scan)
        self.run_panel.sig_run.connect(self.run_methods)
        self.run_panel.sig_export.connect(self.export)
        self.heatmap.sig_dimension_clicked.connect(self.profile.show_dimension)
        self.status.cancel_button.clicked.connect(self.cancel_job)
        self.status.restart_button.clicked.connect(self.restart_engine)

    def _build_actions(self) -> None:
        def action(menu, text: str, shortcut, slot) -> QAction:
            act = QAction(text, self)
            act.setShortcut(QKeySequence(shortcut))
            act.triggered.connect(slot)
            menu.addAction(act)
            return act

        engine_menu = self.menuBar().addMenu("&Engine")
        file_menu = self.menuBar().addMenu("&Workbench")
        self.act_load = action(
            file_menu, "Load model", "Ctrl+L", lambda: self.load_model(self.model_panel.source.currentData())
        )
        self.act_scan = action(file_menu, "Scan", "Ctrl+R", lambda: self.start_scan(self.scan_panel.params()))
        self.act_run = action(
            file_menu,
            "Quantize && evaluate",
            "Ctrl+Return",
            lambda: self.run_methods(self.run_panel.methods(), self.run_panel.eval_params()),
        )
        self.act_export = action(file_menu, "Export…", "Ctrl+E", self.export)
        self.act_planner = action(file_menu, "Memory planner…", "Ctrl+M", self.open_planner)
        action(
            file_menu,
            "Raise threshold",
            "Ctrl+Up",
            lambda: self.threshold.set_threshold(self.threshold.threshold * 1.25),
        )
        action(
            file_menu,
            "Lower threshold",
            "Ctrl+Down",
            lambda: self.threshold.set_threshold(self.threshold.threshold / 1.25),
        )
        file_menu.addSeparator()
        action(file_menu, "Quit", QKeySequence.StandardKey.Quit, self.close)
        self.act_cancel = action(engine_menu, "Cancel job", "Esc", self.cancel_job)
        self.act_restart = action(engine_menu, "Restart engine", "Ctrl+Shift+R", self.restart_engine)
        action(engine_menu, "Connect to remote engine…", "Ctrl+Shift+O", self.connect_remote)
        self.act_remote_code = action(engine_menu, "Let models run their own code", "", self.allow_remote_code)
        self.act_remote_code.setCheckable(True)
        self.act_remote_code.setChecked(self.settings.value("engine/allow_remote_code", False, type=bool))
        help_menu = self.menuBar().addMenu("&Help")
        action(help_menu, "About Int8 Workbench", "F1", self.show_about)

    def _connect_client(self) -> None:
        self.client.sig_state_changed.connect(self._on_state)
        self.client.sig_progress.connect(self._on_progress)
        self.client.sig_scan_layer.connect(self._on_scan_layer)
        self.client.sig_job_finished.connect(self._on_job_finished)
        self.client.sig_job_failed.connect(self._on_job_failed)
        self.client.sig_log.connect(lambda level, text: self.log(text, level))

    # --- settings --------------------------------------------------------------------------------

    def _restore_settings(self) -> None:
        geometry = self.settings.value("geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1500, 950)
        for key, splitter in (("splitter/main", self.main_splitter), ("splitter/right", self.right)):
            state = self.settings.value(key)
            if state is not None:
                splitter.restoreState(state)
        self.model_panel.set_recent([p for p in (self.settings.value("recent_models") or []) if p])
        last = self.settings.value("last_model")
        if last:
            self.model_panel.add_source(str(last))
        tokens = self.settings.value("scan_tokens")
        if tokens is not None:
            self.scan_panel.tokens.setValue(int(tokens))

    def save_settings(self) -> None:
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("splitter/main", self.main_splitter.saveState())
        self.settings.setValue("splitter/right", self.right.saveState())
        self.settings.setValue("threshold", self.threshold.threshold)
        self.settings.setValue("recent_models", self.model_panel.recent())
        self.settings.setValue("last_model", self.model_panel.source.currentData() or "")
        self.settings.setValue("scan_tokens", self.scan_panel.tokens.value())
        self.settings.sync()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.save_settings()
        if self.error_dialog is not None:
            self.error_dialog.close()
        self.client.close()
        super().closeEvent(event)

    # --- actions ---------------------------------------------------------------------------------

    def start_engine(self) -> None:
        """Start the local engine in the background; the window is usable (and says so) meanwhile."""
        self.log("starting the engine")
        self.client.start_local(allow_remote_code=self.act_remote_code.isChecked())

    def load_model(self, path: str | None) -> str | None:
        params = {"model": path} if path else {}
        return self._submit("load_model", params, "Loading the model")

    def start_scan(self, params: dict) -> str | None:
        if self.model_info is None:
            return self._refuse("Load a model before scanning it.")
        job = self._submit("scan", {**params, "threshold": self.threshold.threshold}, "Scanning")
        if job is not None:
            self._prepare_grid(previous_scan_widths=True)
        return job

    def run_methods(self, methods: list[str], eval_params: dict) -> str | None:
        """Quantize with `methods`, then evaluate them, then plan their memory (one job after the other)."""
        if self.model_info is None:
            return self._refuse("Load a model before quantizing it.")
        if not methods:
            return self._refuse("Tick at least one method.")
        if "llm-int8" in methods and not self.stats.finished:
            return self._refuse(
                "Static LLM.int8() takes its outlier dimensions from a scan: scan first, or tick the dynamic variant."
            )
        job = self._submit("quantize", {"methods": methods, "threshold": self.threshold.threshold}, "Quantizing")
        if job is not None:
            self.pending_steps = [
                ("evaluate", {"methods": methods, **eval_params}),
                (
                    "plan_memory",
                    {
                        "methods": ["baseline", *methods],
                        "gpus": list(RESULT_GPUS),
                        "threshold": self.threshold.threshold,
                    },
                ),
            ]
        return job

    def export(self) -> str | None:
        quantized = [m for m, row in self.results.rows.items() if m != "baseline" and row.int8_bytes]
        if not quantized:
            return self._refuse("Quantize the model first: export saves one of the quantized variants.")
        method = quantized[0]
        if len(quantized) > 1:
            method, ok = QInputDialog.getItem(self, "Export", "Quantized variant to export:", quantized, 0, False)
            if not ok:
                return None
        path = QFileDialog.getExistingDirectory(self, "Export into an empty directory")
        if not path:
            return None
        return self.export_to(method, path)

    def export_to(self, method: str, path: str) -> str | None:
        return self._submit("export", {"method": method, "out": path}, "Exporting")

    def cancel_job(self) -> None:
        if self.client.active_job is not None:
            self.log("cancelling the running job")
            self.client.cancel()

    def restart_engine(self) -> None:
        self.log("restarting the engine")
        self.model_info = None
        self.pending_steps = []
        self.model_panel.info.setText("No model loaded (the engine was restarted): load it again.")
        if self.client.remote_address is None:  # a local engine starts with the current settings
            self.client.close()
            self.start_engine()
        else:
            self.client.restart()

    def allow_remote_code(self, allowed: bool) -> None:
        """Whether the local engine may run the code a model ships (transformers' trust_remote_code)."""
        self.settings.setValue("engine/allow_remote_code", bool(allowed))
        state = "may run" if allowed else "may not run"
        self.log(f"models {state} their own code from the next start of the local engine (Engine > Restart engine)")

    def connect_remote(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Engine connection file", "", "Connection files (*.json)")
        if path:
            self.log(f"connecting to the engine of {path}")
            self.model_info = None
            self.client.connect_file(path)

    # --- engine events ---------------------------------------------------------------------------

    def _submit(self, request: str, params: dict, what: str) -> str | None:
        if self.client.state.value != "ready":
            return self._refuse(f"The engine is {self.client.state.value}: wait until it is ready.")
        job = self.client.submit(request, params)
        self.jobs[job] = request
        self.status.set_progress(what, 0.0, "")
        self.log(f"{request} {_brief(params)}")
        return job

    def _on_state(self, state: str) -> None:
        address = f" ({self.client.remote_address})" if self.client.remote_address else ""
        self.status.set_state(state, address)
        self.log(f"engine {state}")
        if state == "ready" and self.client.version_mismatch:
            self.log(self.client.version_mismatch, "warning")
            self.statusBar().showMessage(self.client.version_mismatch, 30000)
        if state == "crashed":
            self.model_info = None
            self.pending_steps = []
            self.model_panel.info.setText(
                "The engine stopped: restart it and load the model again. The scan and results shown stay as they were."
            )
        self._update_enabled()

    def _on_progress(self, job: str, fraction: float, message: str) -> None:
        if job in self.jobs:
            self.status.set_progress(self.jobs[job], fraction, message)

    def _on_scan_layer(self, job: str, payload: dict) -> None:
        if self.jobs.get(job) == "scan":
            self.stats.add_layer(payload)

    def _on_job_finished(self, job: str, request: str, result: dict) -> None:
        if job not in self.jobs:
            return  # a job the window did not send (the planner dialog's)
        request = self.jobs.pop(job)
        self.log(f"{request} finished")
        if request == "load_model":
            self.model_info = result
            self.model_panel.show_info(result)
            self.threshold.float_bytes = FLOAT_BYTES.get(result.get("dtype"), 2)
            self.results.clear()
            self._prepare_grid()
        elif request == "scan":
            self.stats.load_result(result)
        elif request == "quantize":
            self.results.add_quantized(result)
        elif request == "evaluate":
            self.results.add_evaluation(result)
            self.bottom_tabs.setCurrentWidget(self.results_view)
        elif request == "plan_memory":
            self.results.add_plan(result)
        elif request == "export":
            text = f"exported {result.get('method')} to {result.get('path')} ({result.get('total_bytes', 0) / 1e6:,.1f} MB)"
            self.log(text)
            self.statusBar().showMessage(text, 15000)
        self._next_step()

    def _on_job_failed(self, job: str, kind: str, message: str, traceback_text: str) -> None:
        if job and job not in self.jobs:
            return  # the planner dialog shows its own errors; failures to start the engine have no job
        request = self.jobs.pop(job, "engine")
        self.pending_steps = []  # a failed step ends the Run
        if request == "plan_memory":
            self.results.set_plan_unavailable(message)
            self.log(f"plan_memory failed ({kind}): {message}", "warning")
        elif kind == "cancelled":
            self.log(f"{request} cancelled")
            self.statusBar().showMessage(f"{request} cancelled", 5000)
            if request == "scan":
                self.stats.finished = False
        else:
            self.log(f"{request} failed ({kind}): {message}", "error")
            self.show_error(f"{request} failed", message, traceback_text)
        self._update_enabled()

    def _next_step(self) -> None:
        if self.pending_steps and self.client.state.value == "ready":
            request, params = self.pending_steps.pop(0)
            self._submit(request, params, request.replace("_", " ").capitalize())
        self._update_enabled()

    # --- helpers ---------------------------------------------------------------------------------

    def _prepare_grid(self, previous_scan_widths: bool = False) -> None:
        """Lay the heatmap out for the loaded model so rows fill in place as layers arrive.

        The MLP down projection reads the intermediate width: taken from the
        model's description when it has one, and before a new scan from the
        previous scan of the same model, so that the scan does not widen (and
        so redraw) the grid midway.
        """
        info = self.model_info or {}
        layers, hidden = info.get("layers"), info.get("hidden_size")
        if isinstance(layers, int) and isinstance(hidden, int):
            widths = {kind: hidden for kind in KIND_ORDER[:4]}
            if isinstance(info.get("intermediate_size"), int):
                widths["mlp_down"] = info["intermediate_size"]
            for linear in self.stats.linears if previous_scan_widths else ():
                if linear.kind in widths:
                    widths[linear.kind] = max(widths[linear.kind], linear.absmax.size)
            self.stats.configure(layers, widths)
        else:
            self.stats.clear()

    def open_planner(self) -> PlannerDialog:
        """The memory planner: GPUs needed for the loaded model or a larger configuration the user picks."""
        if self.planner is None:
            self.planner = PlannerDialog(self.client, self, has_model=self.model_info is not None)
        self.planner.set_has_model(self.model_info is not None)
        self.planner.set_threshold(self.threshold.threshold)
        self.planner.show()
        self.planner.raise_()
        self.planner.activateWindow()
        return self.planner

    def about_text(self) -> str:
        """Versions of this window and of the engine behind it, and whether they differ."""
        engine_version = self.client.engine_info.get("engine") if self.client.engine_info else None
        lines = [
            f"<b>Int8 Workbench {engine.__version__}</b>",
            "See the activation outliers of a language model, pick the threshold, quantize to INT8 "
            "the LLM.int8() way and measure what it costs.",
            f"Engine: {engine_version or 'not connected'}",
        ]
        if self.client.version_mismatch:
            lines.append(f"<span style='color:#e0a030'>Warning: {self.client.version_mismatch}</span>")
        return "<br><br>".join(lines)

    def show_about(self) -> None:
        QMessageBox.about(self, "About Int8 Workbench", self.about_text())

    def show_error(self, title: str, message: str, details: str = "") -> None:
        """A non-modal error dialog with the engine's traceback under "Show Details"."""
        if self.error_dialog is not None:
            self.error_dialog.close()
        dialog = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Close, self)
        if details:
            dialog.setDetailedText(details)
        dialog.setWindowModality(Qt.WindowModality.NonModal)
        dialog.open()
        self.error_dialog = dialog

    def _refuse(self, message: str) -> None:
        self.statusBar().showMessage(message, 8000)
        self.log(message, "warning")
        return None

    def log(self, text: str, level: str = "info") -> None:
        prefix = "" if level == "info" else f"[{level}] "
        self.log_view.appendPlainText(prefix + text)

    def _update_enabled(self) -> None:
        ready = self.client.state.value == "ready"
        loaded = ready and self.model_info is not None
        self.model_panel.load_button.setEnabled(ready)
        self.scan_panel.scan_button.setEnabled(loaded)
        self.run_panel.run_button.setEnabled(loaded)
        self.run_panel.export_button.setEnabled(loaded)
        for act, enabled in (
            (self.act_load, ready),
            (self.act_scan, loaded),
            (self.act_run, loaded),
            (self.act_export, loaded),
        ):
            act.setEnabled(enabled)


def _float_setting(value: Any, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if number > 0 else default


def _brief(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items() if v is not None)
