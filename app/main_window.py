"""The workbench window: the step bar on top, controls on the left, heatmap and error map / histogram / profile /
results right.

It composes the Qt-free view models (the workflow in `Workbench`, the memory
planner's jobs in `MemoryPlanner`, the scan statistics, the threshold, the
results), the views that observe them, and one `QtEngineClient` whose signals
feed the two job senders. User actions go to the
workflow; what it says (state, log, notices, errors, progress) comes back to
the widgets. Nothing here waits for the engine, so the window stays
responsive while the engine works.
"""

from __future__ import annotations

from typing import Any, TypeVar

from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from int8wb.app import window_memory
from int8wb.app.engine_client import QtEngineClient
from int8wb.app.view_models.memory_planner import MemoryPlanner
from int8wb.app.view_models.results import ResultsModel
from int8wb.app.view_models.scan_stats import ScanStatistics
from int8wb.app.view_models.smoothing import SmoothingViewModel
from int8wb.app.view_models.story import explanation_html
from int8wb.app.view_models.threshold import ThresholdModel
from int8wb.app.view_models.workbench import Step, Workbench
from int8wb.app.views.error_map import ErrorMapView
from int8wb.app.views.explain_panel import ExplainPanel
from int8wb.app.views.export_dialog import ExportDialog
from int8wb.app.views.generated_text import GeneratedTextView
from int8wb.app.views.heatmap import HeatmapView
from int8wb.app.views.histogram import HistogramView
from int8wb.app.views.inputs import mark_current
from int8wb.app.views.model_panel import ModelPanel
from int8wb.app.views.planner_dialog import PlannerDialog
from int8wb.app.views.profile import DimensionProfileView
from int8wb.app.views.residual_map import ResidualMapView
from int8wb.app.views.results_view import ResultsView
from int8wb.app.views.run_panel import RunPanel
from int8wb.app.views.saving import add_save_menu
from int8wb.app.views.scan_panel import ScanPanel
from int8wb.app.views.sensitivity_panel import SensitivityPanel
from int8wb.app.views.smoothing_panel import SmoothingPanel
from int8wb.app.views.status import WorkbenchStatusBar
from int8wb.app.views.step_bar import StepBar
from int8wb.app.views.super_weight_panel import SuperWeightPanel
from int8wb.app.views.threshold_panel import ThresholdPanel
from int8wb.app.views.token_view import TokenView
from int8wb.engine.installation import __version__
from int8wb.engine.vocabulary import DEFAULT_THRESHOLD


class MainWindow(QMainWindow):
    def __init__(self, settings: QSettings | None = None) -> None:
        super().__init__()
        self.setWindowTitle("Int8 Workbench")
        self.settings = settings or QSettings("int8-workbench", "workbench")
        self.engine = QtEngineClient(self)
        self.client = self.engine.client
        self.stats = ScanStatistics()
        threshold = window_memory.as_positive_float(self.settings.value("threshold"), DEFAULT_THRESHOLD)
        self.threshold = ThresholdModel(self.stats, threshold)
        self.results = ResultsModel()
        self.workbench = Workbench(self.client, self.stats, self.threshold, self.results)
        self.memory_planner = MemoryPlanner(self.client)  # the planner dialog's jobs
        self.error_dialog: QMessageBox | None = None
        self.planner: PlannerDialog | None = None
        self.sensitivity: SensitivityPanel | None = None
        self.super_weight_panel: SuperWeightPanel | None = None
        self.needs_proportions = False  # no splitter positions remembered: set them when first shown
        self.explain = ExplainPanel(
            lambda: explanation_html(
                self.workbench.model_info, self.stats, self.threshold, self.results, self.workbench.super_weights
            ),
            self,
        )
        self._build()
        self._build_actions()
        self._connect()
        window_memory.restore(self, self.settings)
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
        left_layout.setContentsMargins(6, 0, 6, 6)
        left_layout.setSpacing(2)
        for panel in (self.model_panel, self.scan_panel, self.threshold_panel, self.run_panel):
            left_layout.addWidget(panel)
        left_layout.addStretch(1)
        self.sidebar = QScrollArea()
        self.sidebar.setWidget(left)
        self.sidebar.setWidgetResizable(True)
        self.sidebar.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

        self.heatmap = HeatmapView(self.stats, self.threshold)
        self.smoothing_panel = SmoothingPanel(SmoothingViewModel(self.stats), self.heatmap)
        left_layout.insertWidget(3, self.smoothing_panel)  # under the threshold, above Run
        self.smoothing_panel.sig_alpha.connect(lambda alpha: setattr(self.workbench, "alpha", alpha))
        # the alpha slider shows while a method that smooths (SmoothQuant) is ticked
        self.smoothing_panel.setVisible(self.run_panel.smoothing_ticked())
        self.run_panel.sig_smoothing_ticked.connect(self.smoothing_panel.setVisible)
        self.error_map = ErrorMapView(self.workbench.errors, self.threshold)
        # Both maps may shrink below what their captions ask for, so the window still fits an 800 x 600 screen;
        # narrow windows give their width to the sidebar, whose panels never clip.
        self.heatmap.setMinimumSize(160, 120)
        self.error_map.setMinimumSize(100, 120)
        self.maps = QSplitter(Qt.Orientation.Horizontal)  # the outliers and the error, row for row
        self.maps.addWidget(self.heatmap)
        self.maps.addWidget(self.error_map)
        self.maps.setStretchFactor(0, 3)
        self.maps.setStretchFactor(1, 1)
        self.histogram = HistogramView(self.stats, self.threshold)
        self.profile = DimensionProfileView(self.stats, self.threshold)
        self.results_view = ResultsView(self.results, self.stats, self.threshold, self.settings)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)
        self.middle = QSplitter(Qt.Orientation.Horizontal)
        self.middle.addWidget(self.histogram)
        self.middle.addWidget(self.profile)
        self.bottom_tabs = QTabWidget()
        self.bottom_tabs.addTab(self.results_view, "Results")
        self.generated_view = GeneratedTextView(self.results)
        self.bottom_tabs.addTab(self.generated_view, "Generated text")
        self.token_view = TokenView(self.results)
        self.bottom_tabs.addTab(self.token_view, "Where it hurts")
        self.residual_map = ResidualMapView(self.workbench.residual)
        self.bottom_tabs.addTab(self.residual_map, "Residual stream")
        self.bottom_tabs.addTab(self.log_view, "Log")
        self.right = QSplitter(Qt.Orientation.Vertical)
        for widget, stretch in ((self.maps, 5), (self.middle, 3), (self.bottom_tabs, 3)):
            self.right.addWidget(widget)
            self.right.setStretchFactor(self.right.count() - 1, stretch)
        self.main_splitter = QSplitter(Qt.Orientation.Horizontal)
        self.main_splitter.addWidget(self.sidebar)
        self.main_splitter.addWidget(self.right)
        self.main_splitter.setStretchFactor(1, 1)
        self.step_bar = StepBar()
        central = QWidget()
        central_layout = QVBoxLayout(central)
        central_layout.setContentsMargins(0, 0, 0, 0)
        central_layout.setSpacing(0)
        central_layout.addWidget(self.step_bar)
        central_layout.addWidget(self.main_splitter, 1)
        self.setCentralWidget(central)
        self.status = WorkbenchStatusBar()
        self.setStatusBar(self.status)
        for widget, item, name in (
            (self.heatmap.graphics, self.heatmap.graphics.scene(), "heatmap"),
            (self.error_map.graphics, self.error_map.graphics.scene(), "error map"),
            (self.histogram.plot, self.histogram.plot.getPlotItem(), "histogram"),
            (self.profile.plot, self.profile.plot.getPlotItem(), "dimension profile"),
            (self.results_view.chart, self.results_view.chart.getPlotItem(), "perplexity chart"),
        ):
            add_save_menu(widget, item, name, self.settings)

    def _build_actions(self) -> None:
        def action(menu, text: str, shortcut, slot) -> QAction:
            act = QAction(text, self)
            act.setShortcut(QKeySequence(shortcut))
            act.triggered.connect(slot)
            menu.addAction(act)
            return act

        workbench, run = self.workbench, self.run_panel
        menu = self.menuBar().addMenu("&Workbench")
        self.act_load = action(menu, "Load model", "Ctrl+L", lambda: self._load(self._chosen_model()))
        self.act_scan = action(menu, "Scan", "Ctrl+R", lambda: workbench.start_scan(self.scan_panel.params()))
        self.act_run = action(
            menu, "Quantize && evaluate", "Ctrl+Return", lambda: workbench.run_methods(run.methods(), run.eval_params())
        )
        self.act_export = action(menu, "Export…", "Ctrl+E", self.export)
        menu.addSeparator()
        self.act_save_csv = action(menu, "Save results as CSV…", "Ctrl+Shift+S", self.results_view.ask_save_csv)
        self.act_copy_markdown = action(
            menu, "Copy results as Markdown", "Ctrl+Shift+C", self.results_view.copy_markdown
        )
        self.act_planner = action(menu, "Memory planner…", "Ctrl+M", self.open_planner)
        self.act_sensitivity = action(menu, "Which Linears to keep in float…", "Ctrl+K", self.open_sensitivity)
        self.act_super_weights = action(menu, "The super weight…", "Ctrl+Shift+W", self.open_super_weights)
        menu.addSeparator()
        raise_by = 1.25
        action(
            menu,
            "Raise threshold",
            "Ctrl+Up",
            lambda: self.threshold.set_threshold(self.threshold.threshold * raise_by),
        )
        action(
            menu,
            "Lower threshold",
            "Ctrl+Down",
            lambda: self.threshold.set_threshold(self.threshold.threshold / raise_by),
        )
        menu.addSeparator()
        self.act_quit = action(menu, "Quit", "Ctrl+Q", self.close)
        menu = self.menuBar().addMenu("&Engine")
        self.act_cancel = action(menu, "Cancel job", "Esc", workbench.cancel)
        self.act_restart = action(menu, "Restart engine", "Ctrl+Shift+R", workbench.restart_engine)
        action(menu, "Connect to remote engine…", "Ctrl+Shift+O", self.connect_remote)
        self.act_remote_code = action(menu, "Let models run their own code", "", self.allow_remote_code)
        self.act_remote_code.setCheckable(True)
        self.act_remote_code.setChecked(self.settings.value("engine/allow_remote_code", False, type=bool))
        workbench.allow_remote_code = self.act_remote_code.isChecked()
        menu = self.menuBar().addMenu("&Help")
        self.act_explain = action(menu, "What am I looking at?", "F1", self.show_explanation)
        action(menu, "About Int8 Workbench", "", self.show_about)

    def _connect(self) -> None:
        """Widgets to the workflow, engine signals to the workflow, what the workflow says to the widgets."""
        self.model_panel.sig_load.connect(self._load)
        self.scan_panel.sig_scan.connect(self.workbench.start_scan)
        self.run_panel.sig_run.connect(self.workbench.run_methods)
        self.run_panel.sig_export.connect(self.export)
        self.heatmap.sig_dimension_clicked.connect(self.profile.show_dimension)
        self.error_map.sig_dimension_clicked.connect(self.profile.show_dimension)
        self.scan_panel.ticked_methods = self.run_panel.methods
        self.run_panel.skip_note.linkActivated.connect(lambda _: self.workbench.set_skip_list([]))
        self.status.cancel_button.clicked.connect(self.workbench.cancel)
        self.status.restart_button.clicked.connect(self.workbench.restart_engine)
        self.step_bar.sig_step_clicked.connect(self.show_step)
        for view in (self.heatmap, self.error_map, self.histogram, self.profile, self.results_view):
            view.empty.sig_explain.connect(self.show_explanation)
        self.engine.connect_listener(self.workbench)
        self.engine.connect_listener(self.memory_planner)
        self.workbench.subscribe(self._on_workbench)
        self.stats.subscribe(lambda event, _: self.explain.refresh() if event == "finished" else None)
        self.threshold.subscribe(lambda _: self.explain.refresh())
        self.results.subscribe(self.explain.refresh)

    def _on_workbench(self, event: str, data: Any) -> None:
        if event == "changed":
            self._update_enabled()
            self.explain.refresh()
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
            self.make_room_for_results()

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        # As wide as the panels need (fonts decide, known once shown): the sidebar never clips them.
        scroll_bar = self.sidebar.verticalScrollBar().sizeHint().width()
        self.sidebar.setMinimumWidth(self.sidebar.widget().minimumSizeHint().width() + scroll_bar + 4)
        if self.needs_proportions:  # first start: nothing remembered, so lay the splitters out for this size
            self.needs_proportions = False
            window_memory.default_proportions(self)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        window_memory.save(self, self.settings)
        if self.error_dialog is not None:
            self.error_dialog.close()
        self.client.close()
        super().closeEvent(event)

    # --- actions ---------------------------------------------------------------------------------

    def start_engine(self) -> None:
        """Start the local engine in the background, and load the chosen model once it is up (unless off)."""
        if self.model_panel.load_at_start.isChecked():
            model = self._chosen_model()
            self.workbench.load_when_ready = {"model": model} if model else {}
        self.workbench.start_engine()

    def _load(self, path: str | None) -> str | None:
        return self.workbench.load_model(path, self.model_panel.offload.currentData())

    def _chosen_model(self) -> str | None:
        return self.model_panel.source.currentData()

    def export(self) -> str | None:
        """Ask which format, variant and empty directory (starting where the last export went), then export."""
        quantized = self.workbench.quantized_methods()
        if not quantized:
            return self.workbench.refuse("Quantize the model first: export saves one of the quantized variants.")
        dialog = ExportDialog(quantized, self, str(self.settings.value(window_memory.EXPORT_FOLDER_KEY, "")))
        if dialog.exec() != ExportDialog.DialogCode.Accepted:
            return None
        method, fmt, path = dialog.choice()
        self.settings.setValue(window_memory.EXPORT_FOLDER_KEY, path)
        return self.workbench.export_to(method, path, fmt)

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

    def make_room_for_results(self, share: float = 0.5) -> None:
        """After a Run its rows must show: the results pane gets `share` of the height if it has less."""
        heatmap, plots, results = self.right.sizes()
        total = heatmap + plots + results
        if results < share * total:
            results = int(share * total)
            plots = min(plots, (total - results) * 2 // 5)
            self.right.setSizes([total - results - plots, plots, results])

    def show_step(self, step: Step) -> None:
        """Bring a step's controls forward: scroll the sidebar to its panel and focus its button."""
        panel, button = {
            Step.LOAD: (self.model_panel, self.model_panel.load_button),
            Step.SCAN: (self.scan_panel, self.scan_panel.scan_button),
            Step.THRESHOLD: (self.threshold_panel, self.threshold_panel.spin),
            Step.RUN: (self.run_panel, self.run_panel.run_button),
            Step.EXPORT: (self.run_panel, self.run_panel.export_button),
        }[step]
        self.sidebar.ensureWidgetVisible(panel)
        button.setFocus()

    def show_explanation(self) -> ExplainPanel:
        self.explain.show()
        self.explain.raise_()
        return self.explain

    def open_planner(self) -> PlannerDialog:
        """The memory planner: GPUs needed for the loaded model or a larger configuration the user picks."""
        has_model = self.workbench.model_info is not None
        if self.planner is None:
            self.planner = PlannerDialog(self.memory_planner, self)
        self.planner.set_has_model(has_model)
        self.planner.set_threshold(self.threshold.threshold)
        return _bring_forward(self.planner)

    def open_sensitivity(self) -> SensitivityPanel:
        """The sensitivity sweep: rank what keeping each group in floating point buys; the smallest skip list."""
        if self.sensitivity is None:
            self.sensitivity = SensitivityPanel(self.workbench, self)
        return _bring_forward(self.sensitivity)

    def open_super_weights(self) -> SuperWeightPanel:
        """The super weight experiment: its button, candidates and verdict, and keeping what it found."""
        if self.super_weight_panel is None:
            self.super_weight_panel = SuperWeightPanel(self.workbench, self)
        return _bring_forward(self.super_weight_panel)

    def about_text(self) -> str:
        """Versions of this window and of the engine behind it, and whether they differ."""
        engine_version = self.client.engine_info.get("engine")
        lines = [
            f"<b>Int8 Workbench {__version__}</b>",
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
        """Buttons and actions by what the engine and the workflow allow; status, model panel, step bar follow."""
        workbench = self.workbench
        ready, loaded = workbench.ready, workbench.loaded
        address = f" ({self.client.remote_address})" if self.client.remote_address else ""
        self.status.set_state(self.client.state, address)
        if workbench.model_info is None:
            self.model_panel.show_note(workbench.model_note)
        else:
            self.model_panel.show_info(workbench.model_info)
        has_rows = bool(self.results.rows)
        for widget, enabled in (
            (self.model_panel.load_button, ready),
            (self.act_load, ready),
            (self.scan_panel.scan_button, loaded),
            (self.act_scan, loaded),
            (self.run_panel.run_button, loaded),
            (self.act_run, loaded),
            (self.run_panel.export_button, loaded),
            (self.act_export, loaded),
            (self.act_save_csv, has_rows),
            (self.act_copy_markdown, has_rows),
        ):
            widget.setEnabled(enabled)
        self.run_panel.show_skip_note(workbench.skip_note())
        step = workbench.step()
        self.step_bar.set_step(step)
        for button, steps in (
            (self.model_panel.load_button, (Step.LOAD,)),
            (self.scan_panel.scan_button, (Step.SCAN,)),
            (self.run_panel.run_button, (Step.THRESHOLD, Step.RUN)),
            (self.run_panel.export_button, (Step.EXPORT,)),
        ):
            mark_current(button, step in steps)


W = TypeVar("W", bound=QWidget)


def _bring_forward(window: W) -> W:
    """Show a tool window opened before, or just built, on top and focused, as a menu item that opens it must."""
    window.show()
    window.raise_()
    window.activateWindow()
    return window
