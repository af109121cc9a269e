#!/usr/bin/env bash
# One command on a GPU machine: the GPU tests of the CUDA kernels (including the GPU-vs-CPU
# perplexity check), then the kernel benchmark. Budget: under 5 minutes on an H200.
#     bash bench/gpu_check.sh            (PYTHON=/path/to/python to choose the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
"$PYTHON" - <<'PY' || exit 2
import torch, sys
if not torch.cuda.is_available():
    sys.exit(f"no CUDA device visible to torch {torch.__version__}: nothing to check")
print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | CUDA {torch.version.cuda}")
PY
status=0
echo "== GPU tests: every kernel against the reference, then perplexity GPU vs CPU =="
timeout 200 "$PYTHON" -m pytest tests/test_kernels_gpu.py -m gpu -q -rs -s -p no:cacheprovider || status=1
echo "== benchmark =="
timeout 90 "$PYTHON" bench/kernels.py --repeats 30 || status=1
exit $status
