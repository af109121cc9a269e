"""The drill-down of a mixture-of-experts heatmap row: one row per expert, and the tokens each one saw.

The heatmap shows the experts of a layer as one aggregated row (the largest
abs-max of any expert). Clicking that row opens this panel under the heatmap:
the same colours, one row per expert, the threshold highlight, and a title that
names the experts whose statistics rest on too few calibration tokens (each
expert sees only the tokens routed to it, so a rarely chosen expert's abs-max
is a guess, and so are the outlier columns static LLM.int8() takes from it).
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from int8wb.app.view_models.scan_stats import ExpertRows, ScanStatistics
from int8wb.app.view_models.threshold import ThresholdModel
from int8wb.app.views import colors
from int8wb.engine.vocabulary import FEW_EXPERT_TOKENS, KIND_LABELS


class ExpertsPanel(QWidget):
    """Each expert of one layer and input kind: abs-max per dimension, tokens routed to it."""

    def __init__(self, stats: ScanStatistics, threshold: ThresholdModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.stats, self.threshold = stats, threshold
        self.rows: ExpertRows | None = None
        self.levels = (-1.0, 2.0)
        self.title = QLabel("")
        self.title.setWordWrap(True)
        self.readout = QLabel("")
        self.readout.setObjectName("readout")
        self.readout.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setMinimumHeight(120)
        self.plot = self.graphics.addPlot()
        self.plot.invertY(True)
        self.plot.setMenuEnabled(False)
        self.plot.setLabel("left", "expert")
        self.image, self.overlay = colors.heatmap_images(self.plot)
        self.plot.scene().sigMouseMoved.connect(self._on_mouse_moved)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.readout)
        threshold.subscribe(lambda _: self._draw_overlay())
        self.setVisible(False)

    def show_row(self, row: int, levels: tuple[float, float]) -> bool:
        """Open the drill-down of heatmap row `row` in the colour range `levels`; False (and hidden) if it has none."""
        self.rows = self.stats.experts_at(row)
        self.setVisible(self.rows is not None)
        if self.rows is None:
            return False
        self.levels = levels
        self.title.setText(self.summary())
        self.image.setImage(colors.index_rows(self.rows.absmax, *levels, log10=True), autoLevels=False, levels=(0, 255))
        self._draw_overlay()
        experts = self.rows.experts
        step = max(1, len(experts) // 16)
        ticks = [(i + 0.5, f"{e}{' !' if few else ''}") for i, (e, few) in enumerate(zip(experts, self.rows.few))]
        self.plot.getAxis("left").setTicks([ticks[::step]])
        rows, width = self.rows.absmax.shape
        self.plot.getViewBox().setRange(xRange=(0, width), yRange=(0, rows), padding=0)
        return True

    def summary(self) -> str:
        """The panel's title: which layer, how the tokens spread, which experts are unreliable."""
        rows = self.rows
        text = (
            f"Layer {rows.layer} · {KIND_LABELS[rows.kind]}: {len(rows.experts)} experts, "
            f"{int(rows.tokens.min()):,} to {int(rows.tokens.max()):,} calibration tokens each"
        )
        few = rows.experts[rows.few]
        if few.size:
            listed = ", ".join(str(e) for e in few[:12]) + (" ..." if few.size > 12 else "")
            text += (
                f". Experts {listed} (marked !) saw fewer than {FEW_EXPERT_TOKENS} tokens: their statistics, "
                "and the outlier columns taken from them, are unreliable; scan more tokens"
            )
        return text

    def _draw_overlay(self) -> None:
        if self.rows is None:
            return
        with np.errstate(invalid="ignore"):
            mask = (self.rows.absmax > self.threshold.threshold).astype(np.uint8)
        self.overlay.setImage(mask, autoLevels=False, levels=(0, 1))

    def describe_cell(self, index: int, dim: int) -> str:
        rows = self.rows
        absmax = float(rows.absmax[index, dim])
        if not math.isfinite(absmax):
            return f"expert {rows.experts[index]} · this input has fewer than {dim + 1} dimensions"
        flag = "  ▲ outlier" if absmax > self.threshold.threshold else ""
        few = f" (fewer than {FEW_EXPERT_TOKENS}: unreliable)" if rows.few[index] else ""
        return (
            f"expert {rows.experts[index]} · {int(rows.tokens[index]):,} tokens{few} · dim {dim:,} · "
            f"abs-max {absmax:,.3g} · {float(rows.share[index, dim]):.1%} of its tokens over the scan threshold{flag}"
        )

    def _on_mouse_moved(self, scene_pos) -> None:
        if self.rows is None or not self.plot.sceneBoundingRect().contains(scene_pos):
            return
        point = self.plot.getViewBox().mapSceneToView(scene_pos)
        index, dim = int(math.floor(point.y())), int(math.floor(point.x()))
        rows, width = self.rows.absmax.shape
        if 0 <= index < rows and 0 <= dim < width:
            self.readout.setText(self.describe_cell(index, dim))
