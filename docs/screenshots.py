"""Screenshots of the workbench's first minutes at 1366 x 768 and 1920 x 1080, through a real engine.

Run under a virtual display (Debian packages: xvfb xauth libxcb-cursor0 libxkbcommon-x11-0 libxcb-icccm4
libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0 libxcb-randr0 libxcb-shape0 libxcb-xkb1):

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python docs/screenshots.py

The window starts as a newcomer's does (fresh settings: the default model loads at start), then
scans 2,048 calibration tokens and runs four methods on 2,048 evaluation tokens. At each stage it is
drawn at both sizes, with the splitters laid out as on a first start at that size (and, after Run,
with the room the results take when they arrive). Writes
docs/window-{1366,1920}-{start,scan,run}.png and docs/explain.png (the "What am I looking at?" panel).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent

SIZES = ((1366, 768), (1920, 1080))
STAGES = ("start", "scan", "run")
EXPLAIN = "explain.png"
METHODS = ["absmax-tensor", "vectorwise", "llm-int8", "weight-only"]
TOKENS = 2048


def window_file(width: int, stage: str) -> str:
    return f"window-{width}-{stage}.png"


def file_names() -> list[str]:
    """Every file this script writes into docs/ (the packaging test checks the metainfo against it)."""
    return [window_file(width, stage) for stage in STAGES for width, _ in SIZES] + [EXPLAIN]


def main() -> int:
    from PySide6.QtCore import QSettings

    from int8wb.app import window_memory
    from int8wb.app.event_loop import process_events_until, settle
    from int8wb.app.main import create_app
    from int8wb.app.main_window import MainWindow
    from int8wb.app.view_models.story import recurring_dimension

    create_app([])
    settings_file = Path(tempfile.mkdtemp()) / "workbench.ini"
    window = MainWindow(settings=QSettings(str(settings_file), QSettings.Format.IniFormat))
    window.resize(*SIZES[0])
    window.show()
    workbench = window.workbench

    def shots(stage: str) -> None:
        for width, height in SIZES:
            window.resize(width, height)
            settle()
            window_memory.default_proportions(window)  # as on a first start at this size
            if stage == "run":
                window.make_room_for_results()  # as the Run's results did when they arrived
            settle()
            path = DOCS / window_file(width, stage)
            window.grab().save(str(path))
            print("wrote", path, window.size().toTuple())

    window.start_engine()
    process_events_until(lambda: workbench.job is not None and workbench.job.request == "load_model", 120)
    shots("start")
    process_events_until(lambda: workbench.model_info is not None, 600)
    window.scan_panel.tokens.setValue(TOKENS)
    window.scan_panel.scan_button.click()
    process_events_until(lambda: window.stats.finished, 1800)
    recurring = recurring_dimension(window.stats, window.threshold.threshold)  # as the explanation names it
    if recurring is not None:
        window.profile.show_dimension(recurring[0])
    shots("scan")
    window.run_panel.set_methods(METHODS)
    window.run_panel.eval_tokens.setValue(TOKENS)
    window.run_panel.run_button.click()
    process_events_until(lambda: not workbench.running and window.results.has_evaluation, 3600)
    shots("run")
    panel = window.show_explanation()
    panel.resize(620, 760)
    settle()
    panel.grab().save(str(DOCS / EXPLAIN))
    print("wrote", DOCS / EXPLAIN)
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
