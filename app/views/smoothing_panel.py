"""The SmoothQuant controls: alpha (for the heatmap and for the next Run) and the smoothed heatmap views.

Ticking "smoothed" shows the heatmap as the INT8 quantizer sees it after smoothing
(app.view_models.smoothing); the view switch shows the weights' per-input-column
abs-max instead, where the outlier dimensions reappear as alpha moves them over.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QSlider, QWidget

from int8wb.app.view_models.smoothing import VIEW_LABELS, SmoothingViewModel

SLIDER_STEPS = 20  # alpha in steps of 0.05


class SmoothingPanel(QGroupBox):
    """alpha slider, "smoothed" toggle and view choice, driving a `SmoothingViewModel` and the heatmap."""

    sig_alpha = Signal(float)

    def __init__(self, view: SmoothingViewModel, heatmap, parent: QWidget | None = None) -> None:
        super().__init__("SmoothQuant", parent)
        self.view, self.heatmap = view, heatmap
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)
        self.slider.setValue(round(view.alpha * SLIDER_STEPS))
        self.slider.setToolTip("s_j = max|X_j|^alpha / max|W_j|^(1 - alpha): 0 leaves the outliers in the activations")
        self.alpha_label = QLabel()
        self.smoothed_box = QCheckBox("Smoothed heatmap")
        self.smoothed_box.setToolTip("Show the abs-max the INT8 quantizer meets after smoothing at this alpha")
        self.view_box = QComboBox()
        for key, label in VIEW_LABELS.items():
            self.view_box.addItem(label, key)
        row = QHBoxLayout()
        row.addWidget(self.slider, 1)
        row.addWidget(self.alpha_label)
        form = QFormLayout(self)
        form.addRow("alpha", row)
        form.addRow(self.smoothed_box)
        form.addRow("show", self.view_box)
        self.slider.valueChanged.connect(lambda value: self.view.set_alpha(value / SLIDER_STEPS))
        self.smoothed_box.toggled.connect(self.view.set_smoothed)
        self.view_box.currentIndexChanged.connect(lambda _: self.view.set_view(self.view_box.currentData()))
        view.subscribe(self._on_view_changed)
        self._on_view_changed()

    def _on_view_changed(self) -> None:
        self.alpha_label.setText(f"{self.view.alpha:.2f}")
        self.heatmap.grid_source = self.view.grid if self.view.active else None
        label = "log10 abs-max" if self.view.view != "weights" else "log10 weight abs-max per input column"
        if self.view.smoothed:
            label += f", smoothed at alpha {self.view.alpha:.2f}"
        self.heatmap.color_bar.axis.setLabel(label)
        self.heatmap.redraw()
        self.sig_alpha.emit(self.view.alpha)
