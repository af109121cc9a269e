"""A screenshot of the Residual stream tab on the default model: docs/residual_map.png.

The scan runs in this process (engine.quant.scan, 512 calibration tokens: one sequence) and its result goes
to the view the window's tab holds, as a finished scan's would; the map shows the first 48 tokens, with the cell of the
first token entering layer 12 clicked (its dimension profile on the right) and hovered (the readout).
Run under a virtual display (see docs/screenshots.py for the packages):

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python docs/residual_map_screenshot.py
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
FILE = "residual_map.png"
SHOWN_TOKENS = 48
CLICKED_LAYER = 12


def main() -> int:
    from PySide6.QtCore import QPointF

    from int8wb.app.main import create_app
    from int8wb.app.view_models.residual_stream import ResidualStream
    from int8wb.app.views.residual_map import ResidualMapView
    from int8wb.engine.pipeline import loading
    from int8wb.engine.quant import scan
    from int8wb.engine.task import Task

    app = create_app([])
    loaded = loading.load({"device": "cpu"}, Task())
    result = scan.run({"tokens": 512, "seq_len": 512}, Task(), loaded)
    stream = ResidualStream()  # the window's tab holds the same view over the workbench's ResidualStream
    view = ResidualMapView(stream)
    view.resize(1500, 640)
    view.show()
    stream.load_result({"token_axis": result.token_axis_payload()})
    view.plot.getViewBox().setXRange(0, SHOWN_TOKENS, padding=0)
    app.processEvents()
    cell = view.plot.getViewBox().mapViewToScene(QPointF(0.5, CLICKED_LAYER + 0.5))
    view._on_mouse_moved(cell)
    view.show_profile(stream.profile(*view.cell_at(cell)))
    for _ in range(5):
        app.processEvents()
    view.grab().save(str(DOCS / FILE))
    print(f"wrote {DOCS / FILE}: {view.readout.text()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
