"""The memory planner dialog: how many GPUs a model needs, for the loaded model or a larger one.

The user picks what to plan (the loaded model, a built-in preset or a config.json), the batch x
context and how full a card may get, and presses Plan; the dialog sends `plan_memory` through the
window's engine client and shows GPUs needed per method and card. Selecting a cell shows the terms
behind that number (weights by tensor kind, KV cache, the card's budget after overhead and
workspace), so the answer can be checked by hand. A preset plan needs no loaded model: the engine
builds the architecture on the meta device. Errors stay in the dialog.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Slot
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from int8wb.app.engine_client import QtEngineClient
from int8wb.app.view_models.plan import (
    DEFAULT_PRESET,
    MAX_BATCH,
    MAX_CONTEXT,
    SOURCE_CONFIG,
    SOURCE_MODEL,
    SOURCE_PRESET,
    PlanRequest,
    PlanViewModel,
    format_bytes,
    list_presets,
)
from int8wb.app.view_models.workbench import as_sentence
from int8wb.app.views.inputs import spin_box
from int8wb.app.views.term_tree import show_terms, term_tree
from int8wb.app.views.throughput_section import ThroughputSection
from int8wb.engine.client import EngineError, EngineState
from int8wb.engine.errors import WorkbenchError

ERROR_COLOR = "#ff6b6b"
NOT_FIT_COLOR = QColor("#e56b6f")
FIXED_COLUMNS = ("method", "total memory")
# The window's dark theme leaves radio indicators nearly invisible; the dialog draws its own.
DIALOG_STYLE = """
QRadioButton::indicator { width: 12px; height: 12px; border-radius: 7px; border: 1px solid #8a8c99; background: #2a2b31; }
QRadioButton::indicator:checked { border-color: #00e5ff; background: qradialgradient(cx:0.5, cy:0.5, radius:0.5,
    fx:0.5, fy:0.5, stop:0 #00e5ff, stop:0.5 #00e5ff, stop:0.6 #2a2b31, stop:1 #2a2b31); }
QRadioButton::indicator:disabled { border-color: #4a4c57; }
QRadioButton:disabled { color: #6b6d78; }
"""


class PlannerDialog(QDialog):
    """Pick a source and settings, press Plan, read GPUs needed and the terms behind them."""

    def __init__(
        self,
        engine: QtEngineClient,
        parent: QWidget | None = None,
        has_model: bool = False,
        threshold: float | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Memory planner")
        self.setStyleSheet(DIALOG_STYLE)
        self.engine, self.client = engine, engine.client
        self.request = PlanRequest(threshold=threshold)
        self.view: PlanViewModel | None = None
        self.job: str | None = None
        self.selected: tuple[str, str] | None = None  # (method, card) of the breakdown
        self._has_model = has_model
        self._build()
        self.set_has_model(has_model)
        engine.sig_job_finished.connect(self._on_finished)
        engine.sig_job_failed.connect(self._on_failed)
        engine.sig_state_changed.connect(self._on_state)
        self.resize(1020, 820)

    # --- building ----------------------------------------------------------------------------------

    def _build(self) -> None:
        source_box = QGroupBox("Model to plan")
        self.radio_model = QRadioButton("Loaded model")
        self.radio_preset = QRadioButton("Preset")
        self.radio_config = QRadioButton("config.json")
        self.sources = QButtonGroup(self)
        for radio in (self.radio_model, self.radio_preset, self.radio_config):
            self.sources.addButton(radio)
        self.preset_combo = QComboBox()
        for preset in list_presets():
            self.preset_combo.addItem(preset.title, preset.name)
        index = self.preset_combo.findData(DEFAULT_PRESET)
        self.preset_combo.setCurrentIndex(max(index, 0))
        self.config_edit = QLineEdit()
        self.config_edit.setPlaceholderText("a config.json, or a model directory holding one")
        self.browse = QPushButton("Browse…")
        self.browse.clicked.connect(self.choose_config)
        grid = QGridLayout(source_box)
        grid.addWidget(self.radio_model, 0, 0)
        grid.addWidget(self.radio_preset, 1, 0)
        grid.addWidget(self.preset_combo, 1, 1, 1, 2)
        grid.addWidget(self.radio_config, 2, 0)
        grid.addWidget(self.config_edit, 2, 1)
        grid.addWidget(self.browse, 2, 2)
        grid.setColumnStretch(1, 1)
        self.radio_preset.setChecked(True)
        self.preset_combo.activated.connect(lambda _: self.radio_preset.setChecked(True))
        self.config_edit.textEdited.connect(lambda _: self.radio_config.setChecked(True))

        settings_box = QGroupBox("Settings")
        self.context_spin = spin_box(1, MAX_CONTEXT, self.request.context, " tokens")
        self.batch_spin = spin_box(1, MAX_BATCH, self.request.batch)
        self.usable_spin = _double_spin(1, 100, self.request.usable_fraction * 100, 0, 5, " %")
        self.usable_spin.setToolTip(
            "How much of each card's memory the plan may use; the rest is margin "
            "for allocator fragmentation and what the estimate misses."
        )
        self.outlier_spin = _double_spin(0, 100, self.request.outlier_fraction * 100, 2, 0.1, " %")
        self.outlier_spin.setToolTip(
            "Feature dimensions kept in floating point by LLM.int8(); for the loaded "
            "model after a scan, the scan's real outlier columns are used instead."
        )
        form = QGridLayout(settings_box)
        for column, (label, widget) in enumerate(
            (
                ("Context", self.context_spin),
                ("Batch", self.batch_spin),
                ("Usable per card", self.usable_spin),
                ("Outlier features", self.outlier_spin),
            )
        ):
            form.addWidget(QLabel(label), column // 2, (column % 2) * 2)
            form.addWidget(widget, column // 2, (column % 2) * 2 + 1)
        form.setColumnStretch(1, 1)
        form.setColumnStretch(3, 1)

        self.plan_button = QPushButton("Plan")
        self.plan_button.setObjectName("primary")
        self.plan_button.setDefault(True)
        self.plan_button.clicked.connect(self.plan)
        self.status = QLabel("Pick a model and press Plan.")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        action_row = QHBoxLayout()
        action_row.addWidget(self.plan_button)
        action_row.addWidget(self.status, 1)

        self.title = QLabel("")
        self.title.setObjectName("sectionTitle")
        self.title.setWordWrap(True)
        self.settings_line = QLabel("")
        self.settings_line.setObjectName("info")
        self.settings_line.setWordWrap(True)
        self.table = QTableWidget(0, 0)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectItems)
        self.table.currentCellChanged.connect(self._on_cell)
        self.notes = QLabel("")
        self.notes.setWordWrap(True)
        self.notes.setStyleSheet("color: #f4a259;")

        self.breakdown_caption = QLabel("")
        self.breakdown_caption.setObjectName("sectionTitle")
        self.tree = term_tree(("term", "bytes", "what it is"))

        top = _column(self.title, self.settings_line, self.table, self.notes)
        bottom = _column(self.breakdown_caption, self.tree)
        self.throughput = ThroughputSection()
        self.lower_tabs = QTabWidget()
        self.lower_tabs.addTab(bottom, "Memory terms")
        self.lower_tabs.addTab(self.throughput, "Throughput")
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(top)
        splitter.addWidget(self.lower_tabs)
        splitter.setStretchFactor(0, 2)
        splitter.setStretchFactor(1, 3)
        splitter.setChildrenCollapsible(False)

        close = QPushButton("Close")
        close.clicked.connect(self.reject)
        close_row = QHBoxLayout()
        close_row.addStretch(1)
        close_row.addWidget(close)
        settings_row = QHBoxLayout()
        settings_row.addWidget(source_box, 3)
        settings_row.addWidget(settings_box, 2)
        layout = QVBoxLayout(self)
        layout.addLayout(settings_row)
        layout.addLayout(action_row)
        layout.addWidget(splitter, 1)
        layout.addLayout(close_row)

    # --- state -------------------------------------------------------------------------------------

    def set_has_model(self, has_model: bool) -> None:
        """Offer the loaded model as a source only while one is loaded."""
        self._has_model = has_model
        self.radio_model.setEnabled(has_model)
        self.radio_model.setToolTip("" if has_model else "No model is loaded in the window.")
        if not has_model and self.radio_model.isChecked():
            self.radio_preset.setChecked(True)

    def set_threshold(self, threshold: float | None) -> None:
        """The window's outlier threshold: the loaded model's plan counts the scan's outliers at it."""
        self.request.threshold = threshold

    def read_request(self) -> PlanRequest:
        """The widgets' values in the view model."""
        request = self.request
        request.source = (
            SOURCE_MODEL
            if self.radio_model.isChecked()
            else SOURCE_CONFIG
            if self.radio_config.isChecked()
            else SOURCE_PRESET
        )
        request.preset = self.preset_combo.currentData() or ""
        request.config_path = self.config_edit.text()
        request.context, request.batch = self.context_spin.value(), self.batch_spin.value()
        request.usable_fraction = round(self.usable_spin.value() / 100, 6)
        request.outlier_fraction = round(self.outlier_spin.value() / 100, 8)
        return request

    @Slot()
    def choose_config(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a config.json", self.config_edit.text(), "Model config (*.json);;All files (*)"
        )
        if path:
            self.config_edit.setText(path)
            self.radio_config.setChecked(True)

    # --- the job -----------------------------------------------------------------------------------

    @Slot()
    def plan(self) -> str | None:
        """Send `plan_memory` for the current choice; returns the job id, or None with the reason shown."""
        request = self.read_request()
        try:
            request.check(self._has_model)
        except WorkbenchError as exc:
            return self._error(str(exc))
        try:
            self.job = self.client.submit("plan_memory", request.params())
        except EngineError as exc:
            return self._error(f"{as_sentence(str(exc))} Then press Plan again.")
        except OSError as exc:
            return self._error(f"Could not send the plan: {exc}")
        self.plan_button.setEnabled(False)
        self._say("Planning… (a preset or config is built on the meta device; no weights are read)")
        return self.job

    @Slot(str, str, dict)
    def _on_finished(self, job: str, request: str, result: dict) -> None:
        if job != self.job:
            return
        self.job = None
        self.plan_button.setEnabled(True)
        try:
            self.show_result(result)
        except (WorkbenchError, KeyError, TypeError, ValueError) as exc:
            self._error(f"The engine's plan could not be read: {exc}")

    @Slot(str, str, str, str)
    def _on_failed(self, job: str, kind: str, message: str, traceback_text: str) -> None:
        if job != self.job:
            return
        self.job = None
        self.plan_button.setEnabled(True)
        self._error(f"Plan failed ({kind}): {message}", traceback_text)

    @Slot(object)
    def _on_state(self, state: EngineState) -> None:
        if self.job is not None and state in (EngineState.CRASHED, EngineState.STOPPED):
            self.job = None
            self.plan_button.setEnabled(True)
            self._error(
                f"The engine {state.value} before the plan came back; "
                "restart it from the Engine menu and press Plan again."
            )

    # --- showing -----------------------------------------------------------------------------------

    def show_result(self, result: dict) -> None:
        """Fill the table and breakdown from a `plan_memory` result (also usable without an engine)."""
        view = PlanViewModel(result)
        self.view = view
        self.throughput.show_plan(result)
        self.title.setText(view.title())
        self.title.setToolTip(view.source_name())
        self.settings_line.setText(view.settings_line())
        notes = view.notes()
        self.notes.setText("\n".join(notes))
        self.notes.setVisible(bool(notes))
        headers = [*FIXED_COLUMNS, *[f"{gpu}\nGPUs needed" for gpu in view.gpus]]
        self.table.clear()
        self.table.setColumnCount(len(headers))
        self.table.setHorizontalHeaderLabels(headers)
        self.table.setRowCount(len(view.rows))
        for r, row in enumerate(view.rows):
            self._set(r, 0, row.label, row.method, centered=False)
            self._set(r, 1, format_bytes(row.total_bytes), "").setToolTip("weights + KV cache + activation workspace")
            for c, gpu in enumerate(view.gpus, start=len(FIXED_COLUMNS)):
                item = self._set(r, c, row.cell(gpu), "")
                if row.needed.get(gpu) is None:
                    item.setForeground(NOT_FIT_COLOR)
                card = view.card(row.method, gpu)
                item.setToolTip(card.get("why_not") or f"budget per card {format_bytes(card['budget_per_gpu_bytes'])}")
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        for column in range(1, len(headers)):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Stretch)
        self.table.resizeRowsToContents()
        height = self.table.horizontalHeader().height() + sum(self.table.rowHeight(r) for r in range(len(view.rows)))
        self.table.setMinimumHeight(height + 2 * self.table.frameWidth())
        method, gpu = (
            self.selected
            if self.selected and self.selected[0] in view.methods and self.selected[1] in view.gpus
            else (view.methods[0], view.gpus[0] if view.gpus else "")
        )
        self.select(method, gpu)
        self._say(
            f"Planned: {view.rows[0].label} needs {view.rows[0].cell(view.gpus[0])} × {view.gpus[0]}; "
            "select a cell to see why."
            if view.gpus
            else "Planned."
        )

    def select(self, method: str, gpu: str) -> None:
        """Select a method x card cell and show its terms."""
        if self.view is None:
            return
        row = self.view.methods.index(method)
        column = len(FIXED_COLUMNS) + self.view.gpus.index(gpu)
        self.table.setCurrentCell(row, column)
        self._show_breakdown(method, gpu)

    @Slot(int, int, int, int)
    def _on_cell(self, row: int, column: int, _previous_row: int, _previous_column: int) -> None:
        if self.view is None or row < 0 or row >= len(self.view.rows):
            return
        method = self.view.methods[row]
        if column >= len(FIXED_COLUMNS):
            gpu = self.view.gpus[column - len(FIXED_COLUMNS)]
        else:
            gpu = self.selected[1] if self.selected else self.view.gpus[0]
        self._show_breakdown(method, gpu)

    def _show_breakdown(self, method: str, gpu: str) -> None:
        self.selected = (method, gpu)
        row = self.view.rows[self.view.methods.index(method)]
        self.breakdown_caption.setText(f"Why {row.cell(gpu)} × {gpu} for {row.label}")
        show_terms(self.tree, self.view.breakdown(method, gpu))
        self.throughput.select(method, gpu)

    def _set(self, row: int, column: int, text: str, data: str, centered: bool = True) -> QTableWidgetItem:
        item = QTableWidgetItem(text)
        item.setData(Qt.ItemDataRole.UserRole, data)
        if centered:
            item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
        self.table.setItem(row, column, item)
        return item

    def _say(self, text: str) -> None:
        self.status.setStyleSheet("")
        self.status.setToolTip("")
        self.status.setText(text)

    def _error(self, text: str, details: str = "") -> None:
        self.status.setStyleSheet(f"color: {ERROR_COLOR};")
        self.status.setToolTip(details)
        self.status.setText(text)
        return None


def _double_spin(low: float, high: float, value: float, decimals: int, step: float, suffix: str) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(low, high)
    spin.setDecimals(decimals)
    spin.setSingleStep(step)
    spin.setValue(value)
    spin.setSuffix(suffix)
    return spin


def _column(*widgets: QWidget) -> QWidget:
    holder = QWidget()
    layout = QVBoxLayout(holder)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget)
    return holder
