"""The workbench window: controls on the left, heatmap / histogram / profile / results on the right.

It composes the Qt-free view models (the workflow in `Workbench`, the scan
statistics, the threshold, the results), the views that observe them, and one
`QtEngineClient` whose signals feed the workflow. User actions go to the
workflow; what it says (state, log, notices, errors, progress) comes back to
the widgets. Nothing here waits for the engine, so the window stays
responsive while the engine works.
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
from app.view_models.workbench import Workbench
from app.views.controls import ModelPanel, RunPanel, ScanPanel
from app.views.heatmap import HeatmapView
from app.views.histogram import HistogramView
from app.views.planner_dialog import PlannerDialog
from app.views.profile import DimensionProfileView
from app.views.results_view import ResultsView
from app.views.status import WorkbenchStatusBar
from app.views.threshold_panel import ThresholdPanel
from engine.vocabulary import DEFAULT_THRESHOLD


class MainWindow(QMainWindow):
    def __init__(self, settings: QSettings | None = None) -> None:
        super().__init__()
        self.setWindowTitle("Int8 Workbench")
        self.settings = settings or QSettings("int8-workbench", "workbench")
        self.engine = QtEngineClient(self)
        self.client = self.engine.client
        self.stats = ScanStatistics()
        self.threshold = ThresholdModel(self.stats, _float_setting(self.settings.value("threshold"), DEFAULT_THRESHOLD))
        self.results = ResultsModel()
        self.workbench = Workbench(self.client, self.stats, self.threshold, self.results)
        self.error_dialog: QMessageBox | None = None
        self.planner: PlannerDialog | None = None
        self._build()
        self._build_actions()
        self._connect_engine()
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

        self.model_panel.sig_load.connect(self.workbench.load_model)
        self.scan_panel.sig_scan.connect(self.workbench.start_scan)
        self.run_panel.sig_run.connect(self.workbench.run_methods)
        self.run_panel.sig_export.connect(self.export)
        self.heatmap.sig_dimension_clicked.connect(self.profile.show_dimension)
        self.status.cancel_button.clicked.connect(self.workbench.cancel)
        self.status.restart_button.clicked.connect(self.workbench.restart_engine)

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
            file_menu, "Load model", "Ctrl+L", lambda: self.workbench.load_model(self.model_panel.source.currentData())
        )
        self.act_scan = action(file_menu, "Scan", "Ctrl+R", lambda: self.workbench.start_scan(self.scan_panel.params()))
        self.act_run = action(
            file_menu,
            "Quantize && evaluate",
            "Ctrl+Return",
            lambda: self.workbench.run_methods(self.run_panel.methods(), self.run_panel.eval_params()),
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
        self.act_cancel = action(engine_menu, "Cancel job", "Esc", self.workbench.cancel)
        self.act_restart = action(engine_menu, "Restart engine", "Ctrl+Shift+R", self.workbench.restart_engine)
        action(engine_menu, "Connect to remote engine…", "Ctrl+Shift+O", self.connect_remote)
        self.act_remote_code = action(engine_menu, "Let models run their own code", "", self.allow_remote_code)
        self.act_remote_code.setCheckable(True)
        self.act_remote_code.setChecked(self.settings.value("engine/allow_remote_code", False, type=bool))
        self.workbench.allow_remote_code = self.act_remote_code.isChecked()
        help_menu = self.menuBar().addMenu("&Help")
        action(help_menu, "About Int8 Workbench", "F1", self.show_about)

    def _connect_engine(self) -> None:
        """Engine signals go to the workflow; what the workflow says goes to the widgets."""
        self.engine.sig_state_changed.connect(self.workbench.on_state)
        self.engine.sig_progress.connect(self.workbench.on_progress)
        self.engine.sig_scan_layer.connect(self.workbench.on_scan_layer)
        self.engine.sig_job_finished.connect(self.workbench.on_finished)
        self.engine.sig_job_failed.connect(self.workbench.on_failed)
        self.engine.sig_log.connect(self.workbench.on_log)
        self.workbench.subscribe(self._on_workbench)

    def _on_workbench(self, event: str, data: Any) -> None:
        if event == "changed":
            self._update_enabled()
        elif event == "log":
            self.log(*data)
        elif event == "notice":
            self.statusBar().showMessage(*data)
        elif event == "error":
            self.show_error(*data)
        elif event == "progress":
            self.status.set_progress(*data)
        elif event == "results":
            self.bottom_tabs.setCurrentWidget(self.results_view)

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
        self.workbench.start_engine()

    def export(self) -> str | None:
        """Ask which quantized variant and which directory, then export it."""
        quantized = self.workbench.quantized_methods()
        if not quantized:
            return self.workbench.refuse("Quantize the model first: export saves one of the quantized variants.")
        method = quantized[0]
        if len(quantized) > 1:
            method, ok = QInputDialog.getItem(self, "Export", "Quantized variant to export:", quantized, 0, False)
            if not ok:
                return None
        path = QFileDialog.getExistingDirectory(self, "Export into an empty directory")
        if not path:
            return None
        return self.workbench.export_to(method, path)

    def allow_remote_code(self, allowed: bool) -> None:
        """Whether the local engine may run the code a model ships (transformers' trust_remote_code)."""
        self.settings.setValue("engine/allow_remote_code", bool(allowed))
        self.workbench.allow_remote_code = bool(allowed)
        state = "may run" if allowed else "may not run"
        self.log(f"models {state} their own code from the next start of the local engine (Engine > Restart engine)")

    def connect_remote(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Engine connection file", "", "Connection files (*.json)")
        if path:
            self.workbench.connect_file(path)

    def open_planner(self) -> PlannerDialog:
        """The memory planner: GPUs needed for the loaded model or a larger configuration the user picks."""
        has_model = self.workbench.model_info is not None
        if self.planner is None:
            self.planner = PlannerDialog(self.engine, self, has_model=has_model)
        self.planner.set_has_model(has_model)
        self.planner.set_threshold(self.threshold.threshold)
        self.planner.show()
        self.planner.raise_()
        self.planner.activateWindow()
        return self.planner

    def about_text(self) -> str:
        """Versions of this window and of the engine behind it, and whether they differ."""
        engine_version = self.client.engine_info.get("engine")
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

    def log(self, text: str, level: str = "info") -> None:
        prefix = "" if level == "info" else f"[{level}] "
        self.log_view.appendPlainText(prefix + text)

    def _update_enabled(self) -> None:
        """Buttons and actions by what the engine and the workflow allow; the status bar and model panel follow."""
        workbench = self.workbench
        ready, loaded = workbench.ready, workbench.loaded
        state = self.client.state
        address = f" ({self.client.remote_address})" if self.client.remote_address else ""
        self.status.set_state(state, address)
        if workbench.model_info is None:
            self.model_panel.info.setText(workbench.model_note)
        else:
            self.model_panel.show_info(workbench.model_info)
        for widget, enabled in (
            (self.model_panel.load_button, ready),
            (self.act_load, ready),
            (self.scan_panel.scan_button, loaded),
            (self.act_scan, loaded),
            (self.run_panel.run_button, loaded),
            (self.act_run, loaded),
            (self.run_panel.export_button, loaded),
            (self.act_export, loaded),
        ):
            widget.setEnabled(enabled)


def _float_setting(value: Any, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if number > 0 else default
