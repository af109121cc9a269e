"""Screenshots of the error map and the sensitivity panel, driven through a real engine on the default model.

Run under a virtual display (the Debian packages docs/screenshots.py names):

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/errors_screenshot.py

Writes docs/error_map.png and docs/sensitivity.png (`... errors_screenshot.py error_map` writes only the
first, `... sensitivity` only the second). A small scan keeps it short on a CPU; the sweep runs at its
default budget of 2,048 tokens.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent

ERROR_METHODS = ["absmax-tensor", "vectorwise", "llm-int8", "weight-only"]


def main() -> int:
    from PySide6.QtCore import QSettings

    from int8wb.app.event_loop import process_events_until
    from int8wb.app.main import create_app
    from int8wb.app.main_window import MainWindow

    create_app([])
    window = MainWindow(settings=QSettings("/tmp/int8wb-error-screenshots.ini", QSettings.Format.IniFormat))
    window.resize(1600, 1000)
    window.show()
    finished: dict[str, dict] = {}
    window.engine.sig_job_finished.connect(lambda job, request, result: finished.__setitem__(request, result))
    window.start_engine()
    process_events_until(lambda: window.workbench.model_info is not None, 600)
    if sys.argv[1:] != ["sensitivity"]:
        take_error_map(window, finished)
    if sys.argv[1:] != ["error_map"]:
        take_sensitivity(window, finished)
    window.close()
    return 0


def take_error_map(window, finished: dict) -> None:
    """A scan with each method's error, the worst vectorwise Linear selected, the maps given room."""
    from int8wb.app.event_loop import process_events_until, settle

    window.run_panel.set_methods(ERROR_METHODS)
    window.scan_panel.measure_errors.setChecked(True)
    window.scan_panel.tokens.setValue(512)
    window.workbench.start_scan(window.scan_panel.params())
    process_events_until(lambda: window.stats.finished and window.workbench.ready, 1800)
    for method, entry in finished["scan"]["errors"].items():
        print(method, entry)
    worst = finished["scan"]["errors"]["vectorwise"]["worst_linear"]
    errors = window.workbench.errors
    row = next(r for r, names in enumerate(errors.row_linears) if worst in names)
    column = errors.methods.index("vectorwise") * errors.slots + errors.row_linears[row].index(worst)
    window.error_map.select_cell(row, column)
    window.error_map.readout.setText(errors.describe_cell(row, column, window.threshold.threshold))
    # The maps side by side at equal width, over most of the height: what a user dragging the splitters sees.
    width, height = window.maps.width(), window.right.height()
    window.maps.setSizes([width // 2, width - width // 2])
    window.right.setSizes([int(height * 0.6), int(height * 0.2), height - int(height * 0.6) - int(height * 0.2)])
    settle()
    window.grab().save(str(DOCS / "error_map.png"))
    print("wrote", DOCS / "error_map.png")


def take_sensitivity(window, finished: dict) -> None:
    """The panel's default sweep (vectorwise, +1%, the Linears that read one input), its list applied to the next
    export."""
    from int8wb.app.event_loop import process_events_until, settle

    panel = window.open_sensitivity()
    panel.run()
    process_events_until(lambda: "sensitivity" in finished and window.workbench.ready, 3600)
    result = finished["sensitivity"]
    print({k: v for k, v in result.items() if k not in ("groups", "forms", "curve")})
    panel.apply()
    settle()
    panel.grab().save(str(DOCS / "sensitivity.png"))
    print("wrote", DOCS / "sensitivity.png")


if __name__ == "__main__":
    sys.exit(main())
