"""The GPU runner (bench/gpu_check.sh) runs here up to where a device is needed.

On this machine, which has no GPU, it checks its prerequisites, compiles the kernels for sm_90,
loads the default model (full run), collects the GPU tests and says "no CUDA device: skipped" for
the steps that need one. It runs as on a headless CUDA image: a PySide6 that fails to import (no
libEGL) sits first on the path, so loading the Qt test plugin would stop the run.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_runner():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_without_gpu(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    broken_qt = tmp_path / "headless" / "PySide6"
    broken_qt.mkdir(parents=True)
    (broken_qt / "__init__.py").write_text('raise ImportError("libEGL.so.1: cannot open shared object file")\n')
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": f"{broken_qt.parent}{os.pathsep}{ROOT}"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU, even on a machine that has one
    return subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), *args], env=env, capture_output=True, text=True, timeout=600
    )


def step_lines(output: str) -> dict[str, str]:
    """Step title -> what its closing line says ("ok in 3.1 s", "skipped in 0.5 s: ...")."""
    return dict(re.findall(r"^-- (.+?): ((?:ok|FAILED|skipped) in [\d.]+ s.*)$", output, re.MULTILINE))


def collected(line: str) -> int:
    return int(re.search(r"(\d+)(?:/\d+)? tests? collected", line).group(1))


@pytest.mark.slow
def test_quick_run_without_a_gpu(tmp_path):
    result = run_without_gpu(tmp_path, "--quick")
    output = result.stdout
    assert result.returncode == 3, output + result.stderr
    steps = step_lines(output)
    assert list(steps) == ["prerequisites", "compile the kernels with NVRTC", "GPU tests", "benchmark"], output
    assert steps["prerequisites"].startswith("ok") and steps["compile the kernels with NVRTC"].startswith("ok")
    assert "4 sources for sm_90" in steps["compile the kernels with NVRTC"]
    assert "no CUDA device: skipped" in steps["GPU tests"] and "no CUDA device: skipped" in steps["benchmark"]
    assert 10 <= collected(steps["GPU tests"]) <= 80  # one shape per kernel and the VRAM checks, not all
    assert output.strip().splitlines()[-1].startswith("verdict: NO CUDA DEVICE (quick run")


@pytest.mark.slow
@pytest.mark.heavy
def test_full_run_without_a_gpu(tmp_path):
    result = run_without_gpu(tmp_path)
    output = result.stdout
    assert result.returncode == 3, output + result.stderr
    steps = step_lines(output)
    assert list(steps) == [
        "prerequisites",
        "compile the kernels with NVRTC",
        "default model: load (GGUF conversion on first use)",
        "GPU tests",
        "perplexity, GPU against CPU",
        "benchmark",
        "decoding: tokens/s per method against the copy bandwidth",
    ], output
    assert steps["default model: load (GGUF conversion on first use)"].startswith("ok")
    assert "134,515,008 parameters" in output
    assert collected(steps["GPU tests"]) > 200  # every case of every kernel, and the VRAM checks
    assert collected(steps["perplexity, GPU against CPU"]) == 2  # float32 and the GPU's own half dtype
    assert all("no CUDA device: skipped" in steps[name] for name in list(steps)[3:])
    assert output.strip().splitlines()[-1].startswith("verdict: NO CUDA DEVICE (full run")


def uses_the_gpu_marker(path: Path) -> bool:
    """Whether the file applies `pytest.mark.gpu` (as a decorator or in `pytestmark`), read from its syntax tree."""
    return any(
        isinstance(node, ast.Attribute)
        and node.attr == "gpu"
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "mark"
        for node in ast.walk(ast.parse(path.read_text()))
    )


def test_every_gpu_test_file_is_run():
    runner = load_runner()
    marked = {path.name for path in (ROOT / "tests").glob("test_*.py") if uses_the_gpu_marker(path)}
    assert {"test_kernels_gpu.py", "test_memory.py"} <= marked
    assert marked <= {Path(name).name for name in runner.gpu_test_files()}


def test_the_verdict_on_a_gpu():
    runner = load_runner()
    machine = runner.Machine(quick=True, device="NVIDIA H200")
    passed, failed = runner.Outcome("passed"), runner.Outcome("failed", "exit status 1")
    line, status = runner.verdict({"prerequisites": passed, "GPU tests": passed}, machine, 80.0)
    assert status == 0 and line.startswith("verdict: PASS (quick run, 80 s, NVIDIA H200): 2 passed")
    line, status = runner.verdict({"prerequisites": passed, "GPU tests": failed}, machine, 80.0)
    assert status == 1 and line.endswith(": GPU tests")
    line, status = runner.verdict({"prerequisites": passed}, machine, 130.0)
    assert status == 1 and "over the 120 s budget" in line
    machine.missing = ["CuPy"]
    line, status = runner.verdict({"prerequisites": failed}, machine, 5.0)
    assert status == 2 and line.endswith("CuPy")
