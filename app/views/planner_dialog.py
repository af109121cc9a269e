"""The memory planner dialog: how many GPUs a model needs, for the loaded model or a larger one.

The user picks what to plan (the loaded model, a built-in preset or a config.json), the batch x
context and how full a card may get, and presses Plan; the dialog hands the choice to the window's `MemoryPlanner`
(app/view_models/memory_planner.py), which sends `plan_memory` like every other job, and draws
what it reads: GPUs needed per method and card. Selecting a cell shows the terms
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
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from int8wb.app.view_models.memory_planner import MemoryPlanner
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
from int8wb.app.views.inputs import cell_table, double_spin_box, spin_box
from int8wb.app.views.term_tree import show_terms, term_tree
from int8wb.app.views.throughput_section import ThroughputSection

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

    def __init__(self, planner: MemoryPlanner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Memory planner")
        self.setStyleSheet(DIALOG_STYLE)
        self.planner = planner
        self.selected: tuple[str, str] | None = None  # (method, card) of the breakdown
        self._build()
        self.set_has_model(planner.has_model)
        planner.subscribe(self._on_planner)
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
        self.context_spin = spin_box(1, MAX_CONTEXT, self.planner.request.context, " tokens")
        self.batch_spin = spin_box(1, MAX_BATCH, self.planner.request.batch)
        self.usable_spin = double_spin_box(1, 100, self.planner.request.usable_fraction * 100, 0, 5, " %")
        self.usable_spin.setToolTip(
            "How much of each card's memory the plan may use; the rest is margin "
            "for allocator fragmentation and what the estimate misses."
        )
        self.outlier_spin = double_spin_box(0, 100, self.planner.request.outlier_fraction * 100, 2, 0.1, " %")
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
        self.table = cell_table(self._on_cell)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectItems)
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
        self.planner.has_model = has_model
        self.radio_model.setEnabled(has_model)
        self.radio_model.setToolTip("" if has_model else "No model is loaded in the window.")
        if not has_model and self.radio_model.isChecked():
            self.radio_preset.setChecked(True)

    def set_threshold(self, threshold: float | None) -> None:
        """The window's outlier threshold: the loaded model's plan counts the scan's outliers at it."""
        self.planner.request.threshold = threshold

    def read_request(self) -> PlanRequest:
        """The widgets' values in the view model."""
        request = self.planner.request
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

    # --- the job (sent and tracked by the planner view model) ---------------------------------------

    @Slot()
    def plan(self) -> str | None:
        """Send `plan_memory` for the widgets' choice; returns the job id, or None with the reason shown."""
        self.read_request()
        return self.planner.plan()

    def _on_planner(self, event: str, data: object) -> None:
        self.plan_button.setEnabled(not self.planner.running)
        if event == "planning":
            self._say(data)
        elif event == "planned":
            self._draw(data)
        elif event == "error":
            self._error(*data)

    # --- showing -----------------------------------------------------------------------------------

    def show_result(self, result: dict) -> None:
        """Fill the table and breakdown from a `plan_memory` result (also usable without an engine)."""
        self.planner.read(result)

    def _draw(self, view: PlanViewModel) -> None:
        self.throughput.show_plan(view.result)
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
        view = self.planner.plan_view
        if view is None:
            return
        self.table.setCurrentCell(view.methods.index(method), len(FIXED_COLUMNS) + view.gpus.index(gpu))
        self._show_breakdown(method, gpu)

    @Slot(int, int, int, int)
    def _on_cell(self, row: int, column: int, _previous_row: int, _previous_column: int) -> None:
        view = self.planner.plan_view
        if view is None or row < 0 or row >= len(view.rows):
            return
        if column >= len(FIXED_COLUMNS):
            gpu = view.gpus[column - len(FIXED_COLUMNS)]
        else:
            gpu = self.selected[1] if self.selected else view.gpus[0]
        self._show_breakdown(view.methods[row], gpu)

    def _show_breakdown(self, method: str, gpu: str) -> None:
        view = self.planner.plan_view
        self.selected = (method, gpu)
        row = view.rows[view.methods.index(method)]
        self.breakdown_caption.setText(f"Why {row.cell(gpu)} × {gpu} for {row.label}")
        show_terms(self.tree, view.breakdown(method, gpu))
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


def _column(*widgets: QWidget) -> QWidget:
    holder = QWidget()
    layout = QVBoxLayout(holder)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget)
    return holder
