"""Screenshots of the divergence columns of the results table and of the "Where it hurts" token view.

The default model, quantized with absmax-tensor and llm-int8 and evaluated on --tokens (default 1,024) in
this process (the views are fed the engine's `evaluate` reply as the window would be). Run under a virtual
display (see docs/screenshots.py for the system packages Qt needs):

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -P docs/divergence_screenshot.py

Writes docs/divergence_columns.png and docs/divergence_tokens.png (the token view with absmax-tensor chosen,
hovering its worst token).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
METHODS = ("absmax-tensor", "llm-int8")


def evaluation(tokens: int) -> dict:
    from int8wb.engine.measure import evaluate
    from int8wb.engine.pipeline import loading
    from int8wb.engine.quant import quantize, scan
    from int8wb.engine.task import Task

    loaded = loading.load({"device": "cpu"}, Task())
    found = scan.run({"tokens": 2048}, Task(), loaded)
    variants = {m: quantize.run({"method": m}, Task(), loaded, found) for m in METHODS}
    return evaluate.run({"tokens": tokens}, Task(), loaded, variants)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1024)
    args = parser.parse_args()
    result = evaluation(args.tokens)

    from PySide6.QtCore import QEvent
    from PySide6.QtGui import QHelpEvent
    from PySide6.QtWidgets import QApplication, QToolTip

    from int8wb.app.event_loop import settle
    from int8wb.app.main import create_app
    from int8wb.app.view_models.results import ResultsModel
    from int8wb.app.view_models.scan_stats import ScanStatistics
    from int8wb.app.view_models.threshold import ThresholdModel
    from int8wb.app.views.results_view import ResultsView
    from int8wb.app.views.token_view import TokenView

    create_app([])
    model = ResultsModel()
    stats = ScanStatistics()
    results = ResultsView(model, stats, ThresholdModel(stats))
    tokens = TokenView(model)
    results.resize(1500, 260)
    tokens.resize(1200, 520)
    results.show()
    tokens.show()
    model.add_evaluation(result)
    settle()
    results.fit_table_width()
    settle()
    results.grab().save(str(DOCS / "divergence_columns.png"))
    results.hide()  # the token view's grab takes the screen under it, tooltip included

    tokens.method.setCurrentText(METHODS[0])
    worst = tokens.data.worst(METHODS[0])[0]
    tokens._go_to(tokens.worst.item(0))
    settle()
    point = tokens.point_of(worst.index)
    viewport = tokens.text.viewport()
    QApplication.sendEvent(viewport, QHelpEvent(QEvent.Type.ToolTip, point, viewport.mapToGlobal(point)))
    settle()
    shot = tokens.screen().grabWindow(0, tokens.x(), tokens.y(), tokens.width(), tokens.height() + 160)
    shot.save(str(DOCS / "divergence_tokens.png"))
    print(QToolTip.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
