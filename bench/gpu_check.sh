#!/usr/bin/env bash
# The first run on a GPU machine: prerequisites, kernel compilation, every `gpu` test and the kernel
# benchmark, each step timed, then a one-line verdict (bench/gpu_check.py; docs/gpu.md says what it
# must print). Runs anywhere: without a CUDA device the device steps say "no CUDA device: skipped".
#     bash bench/gpu_check.sh [--quick]        (PYTHON=/path/to/python to choose the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
exec "$PYTHON" bench/gpu_check.py "$@"
