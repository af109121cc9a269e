"""Screenshot of the super weight panel showing the experiment measured on the default model.

    .venv/bin/int8wb outliers --super-weights --compare absmax-tensor,vectorwise --device cpu --json \
        > docs/super_weight.json
    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/super_weight_screenshot.py

The panel shows docs/super_weight.json, the engine's result of that command, handed to the window's
workflow as the engine's `super_weights` result event would hand it (running the experiment again in
the window takes minutes). Writes docs/super_weight.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent


class _RecordingEngine:
    """The surface of EngineClient the workflow uses, ready with no job: the result arrives by hand."""

    def __init__(self) -> None:
        from int8wb.engine.link.client import EngineState

        self.state = EngineState.READY
        self.active_job = None
        self.version_mismatch = None


def main() -> int:
    from int8wb.app.event_loop import settle
    from int8wb.app.main import create_app
    from int8wb.app.view_models.results import ResultsModel
    from int8wb.app.view_models.scan_stats import ScanStatistics
    from int8wb.app.view_models.threshold import ThresholdModel
    from int8wb.app.view_models.workbench import Workbench
    from int8wb.app.views.super_weight_panel import SuperWeightPanel
    from int8wb.engine.link.client import Job

    create_app([])
    stats = ScanStatistics()
    workbench = Workbench(_RecordingEngine(), stats, ThresholdModel(stats), ResultsModel())
    workbench.model_info = {"name": "SmolLM2-135M", "layers": 30, "hidden_size": 576}
    workbench.job = Job("super-weights", "super_weights")
    result = json.loads((DOCS / "super_weight.json").read_text(encoding="utf-8"))
    result.pop("comparison", None)
    workbench.on_finished("super-weights", "super_weights", result)
    panel = SuperWeightPanel(workbench)
    panel.resize(1000, 330)
    panel.show()
    settle()
    panel.grab().save(str(DOCS / "super_weight.png"))
    print("wrote", DOCS / "super_weight.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
