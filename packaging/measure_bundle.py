"""Measure the built bundle: its size, what dominates it, and its start-up times (the figures of README.md).

    .venv/bin/python packaging/measure_bundle.py [dist/int8-workbench]

Start-up is measured with the bundle's own `--self-test` (see launcher.py)
under the offscreen Qt platform: the first start with an empty model cache
(the bundled GGUF is converted then), and a second start with that cache.
Times are seconds from launching the executable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = ("window_visible", "engine_ready", "model_loaded", "scanned", "exited")


def folder_bytes(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def size_report(bundle: Path, top: int = 10) -> None:
    internal = bundle / "_internal"
    total = folder_bytes(bundle)
    print(f"bundle {bundle}: {total / 1e6:,.0f} MB in {sum(1 for _ in bundle.rglob('*')):,} files")
    entries = sorted(((folder_bytes(p), p.name) for p in internal.iterdir()), reverse=True)
    for size, name in entries[:top]:
        print(f"  {name:<28} {size / 1e6:8,.0f} MB  {100 * size / total:5.1f} %")
    rest = sum(size for size, _ in entries[top:])
    print(f"  {'(everything else)':<28} {rest / 1e6:8,.0f} MB  {100 * rest / total:5.1f} %")


def start_up(executable: Path, cache: Path, label: str) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        report_path = Path(scratch) / "report.json"
        env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "INT8WB_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
        launched = time.time()
        run = subprocess.run(
            [str(executable), "--self-test", str(report_path)], env=env, capture_output=True, text=True, timeout=1800
        )
        if not report_path.is_file():
            raise SystemExit(f"the self-test wrote no report (status {run.returncode}):\n{run.stderr[-3000:]}")
        report = json.loads(report_path.read_text())
    if report["errors"]:
        raise SystemExit(f"the self-test failed: {report['errors']}")
    times = "  ".join(f"{step} {report['steps'][step] - launched:6.1f} s" for step in STEPS)
    print(f"{label:<26} {times}")


def main() -> int:
    bundle = Path(sys.argv[1] if len(sys.argv) > 1 else "dist/int8-workbench").resolve()
    executable = bundle / "int8-workbench"
    if not executable.is_file():
        raise SystemExit(f"no bundle at {bundle}: run `make package` first")
    size_report(bundle)
    with tempfile.TemporaryDirectory() as cache:
        start_up(executable, Path(cache), "first start (empty cache)")
        start_up(executable, Path(cache), "second start")
    return 0


if __name__ == "__main__":
    sys.exit(main())
