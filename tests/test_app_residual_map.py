"""The residual map (layers x tokens) in the window: filled by a scan's result built by the engine's own
ScanResult from planted residual statistics; hover gives token text, layer, dimension and value; a click shows
the token's dimension profile; the massive activation is marked with its dimension."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, Qt

from int8wb.engine.quant.scan import ScanResult, ScanSettings
from int8wb.engine.quant.token_axis import PROFILE_DIMS, ResidualStats

LAYERS, SEQUENCES, SEQ_LEN, HIDDEN = 4, 2, 12, 32
MASSIVE_DIM, MASSIVE_VALUE = 7, 2500.0
TOKENS = [f"t{i}" for i in range(SEQUENCES * SEQ_LEN)]


def residual(layer: int) -> ResidualStats:
    """Values around 1 everywhere; from layer 2 on, token 0 of every sequence holds MASSIVE_VALUE in MASSIVE_DIM."""
    rng = np.random.default_rng(layer)
    x = rng.uniform(0.1, 1.0, (SEQUENCES, SEQ_LEN, HIDDEN)).astype(np.float32)
    if layer >= 2:
        x[:, 0, MASSIVE_DIM] = MASSIVE_VALUE
    order = np.argsort(-x[0], axis=-1)[:, :PROFILE_DIMS]
    return ResidualStats(
        layer=layer,
        token_absmax=x.max(axis=-1),
        token_argmax=x.argmax(axis=-1).astype(np.int32),
        dim_absmax=x.max(axis=(0, 1)),
        median_abs=float(np.median(x)),
        profile_dims=order.astype(np.int32),
        profile_values=np.take_along_axis(x[0], order, axis=-1),
    )


class LeftClick:
    """What the scene's sigMouseClicked hands over: a left click at a scene position."""

    def __init__(self, scene_pos) -> None:
        self.pos = scene_pos

    def scenePos(self):  # noqa: N802 - Qt's name
        return self.pos

    def button(self):
        return Qt.MouseButton.LeftButton


def scan_result() -> dict:
    result = ScanResult(ScanSettings(seq_len=SEQ_LEN), SEQUENCES * SEQ_LEN, "test", token_text=TOKENS)
    result.residual = [residual(layer) for layer in range(LAYERS + 1)]
    return {"token_axis": result.token_axis_payload()}


def test_residual_map_hover_click_and_marks(make_workbench, qtbot):
    window = make_workbench(start_engine=False)
    view = window.residual_map
    assert view.empty.currentWidget() is view.empty.message  # says what it will show before a scan
    window.workbench.residual.load_result(scan_result())
    window.bottom_tabs.setCurrentWidget(view)
    qtbot.waitExposed(window)
    assert view.empty.currentWidget() is not view.empty.message
    assert view.stream.grid.shape == (LAYERS + 1, SEQ_LEN)

    box = view.plot.getViewBox()
    scene_pos = box.mapViewToScene(QPointF(0.5, 3.5))  # position 0, row 3: entering layer 3
    assert view.cell_at(scene_pos) == (3, 0)
    view._on_mouse_moved(scene_pos)  # what the scene's sigMouseMoved calls, as the heatmap's tests do
    text = view.readout.text()
    assert "'t0'" in text and "entering layer 3" in text and f"dim {MASSIVE_DIM}" in text and "2,500" in text
    assert "massive activation" in text
    view._on_mouse_moved(box.mapViewToScene(QPointF(4.5, 1.5)))
    assert "'t4'" in view.readout.text() and "massive" not in view.readout.text()

    view._on_mouse_clicked(LeftClick(scene_pos))
    assert f"largest dim {MASSIVE_DIM}" in view.profile_plot.getPlotItem().titleLabel.text

    marked = [m for m in view._marks if hasattr(m, "textItem")]
    assert [m.textItem.toPlainText() for m in marked] == [f"dim {MASSIVE_DIM}"]
    rings = [m for m in view._marks if not hasattr(m, "textItem")]
    assert len(rings[0].points()) == LAYERS + 1 - 2  # layers 2, 3 and after the last, at position 0
    assert "massive activations" in view.summary.text() and "no precision alarm" in view.summary.text()


def test_a_result_without_massive_activations_says_so_and_the_bottom_axis_names_tokens(make_workbench):
    window = make_workbench(start_engine=False)
    payload = scan_result()
    payload["token_axis"]["massive_activations"] = []
    window.workbench.residual.load_result(payload)
    view = window.residual_map
    assert view._marks == []
    assert view.summary.text().startswith("no massive activation")
    ticks = view.plot.getAxis("bottom")._tickLevels[0]
    assert [label for _, label in ticks][:3] == ["t0", "t1", "t2"]
