"""Screenshot of the memory planner dialog planning the Llama 2 70B preset through a real engine.

Run under a virtual display (see docs/screenshots.py for the system packages Qt needs):

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/planner_screenshot.py

Writes docs/planner.png: FP16 on A100-40GB selected, with the terms behind its GPU count; and
docs/planner_throughput.png: the throughput tab, LLM.int8() on an H100 selected.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent


def main() -> int:
    from int8wb.app.engine_client import QtEngineClient
    from int8wb.app.event_loop import process_events_until, settle
    from int8wb.app.main import create_app
    from int8wb.app.views.planner_dialog import PlannerDialog
    from int8wb.engine.link.client import EngineState

    create_app([])
    client = QtEngineClient()

    try:
        client.client.start_local()
        process_events_until(lambda: client.client.state is EngineState.READY, 120)
        dialog = PlannerDialog(client, has_model=False)
        dialog.show()
        dialog.preset_combo.setCurrentIndex(dialog.preset_combo.findData("llama-2-70b"))
        dialog.radio_preset.setChecked(True)
        if dialog.plan() is None:
            raise RuntimeError(dialog.status.text())
        process_events_until(lambda: dialog.job is None, 120)
        if dialog.view is None:
            raise RuntimeError(dialog.status.text())
        dialog.select("baseline", "A100-40GB")
        settle()
        dialog.grab().save(str(DOCS / "planner.png"))
        print("wrote", DOCS / "planner.png")
        dialog.lower_tabs.setCurrentWidget(dialog.throughput)
        dialog.resize(dialog.width(), 990)  # the whole screen's height, for the section's terms
        dialog.select("llm-int8", "H100-80GB")
        settle()
        dialog.grab().save(str(DOCS / "planner_throughput.png"))
        print("wrote", DOCS / "planner_throughput.png")
        dialog.close()
    finally:
        client.client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
