"""Screenshots of the workbench's main states, driven through a real engine on the default model.

Run under a virtual display (Debian packages: xvfb xauth libxcb-cursor0 libxkbcommon-x11-0 libxcb-icccm4
libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0 libxcb-randr0 libxcb-shape0 libxcb-xkb1):

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/screenshots.py

Writes docs/after_scan.png, docs/threshold_moved.png and docs/results.png.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))


def main() -> int:
    from PySide6.QtCore import QSettings

    from app.event_loop import process_events_until, settle
    from app.main import create_app
    from app.main_window import MainWindow

    create_app([])
    window = MainWindow(settings=QSettings("/tmp/int8wb-screenshots.ini", QSettings.Format.IniFormat))
    window.resize(1600, 1000)
    window.show()

    def shot(name: str) -> None:
        settle()
        window.grab().save(str(DOCS / name))
        print("wrote", DOCS / name)

    finished: dict[str, dict] = {}
    window.engine.sig_job_finished.connect(lambda job, request, result: finished.__setitem__(request, result))
    window.start_engine()
    process_events_until(lambda: window.workbench.ready, 60)
    window.workbench.load_model(None)
    process_events_until(lambda: window.workbench.model_info is not None, 300)
    window.threshold.set_threshold(6.0)
    window.workbench.start_scan({"tokens": 2048, "seq_len": 512})
    process_events_until(lambda: window.stats.finished, 900)
    top = finished["scan"]["report"].get("attn_in", {}).get("top_dims", [])
    if top:
        window.profile.show_dimension(top[0]["dim"])
    shot("after_scan.png")
    window.threshold_panel.spin.setValue(3.0)
    shot("threshold_moved.png")
    window.threshold_panel.spin.setValue(6.0)
    window.workbench.run_methods(
        ["absmax-tensor", "vectorwise", "llm-int8", "weight-only"], {"tokens": 2048, "window": 512}
    )
    process_events_until(
        lambda: "evaluate" in finished and not window.workbench.running and window.workbench.ready, 1800
    )
    shot("results.png")
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
