"""The GPU runner: what a first session on a GPU must run, as one command, each step timed.

    bash bench/gpu_check.sh [--quick]        (docs/gpu.md: what it must print)

Steps, in order:
  prerequisites  torch and the GPU, CuPy, NVRTC, platformdirs (the kernel cache), pytest, transformers;
                 for the full run also gguf and the default model. A missing requirement stops the run
                 here and says what to install; a missing default model only skips the perplexity step.
  compile        NVRTC compiles every kernel source for the GPU's architecture (sm_90, the H200's, when
                 there is no GPU) into the kernel cache, the sources side by side.
  default model  (full run) loaded on the CPU: the GGUF file is converted into the cache on first use.
  GPU tests      every test marked `gpu`, in every test file (quick: those also marked `quick`: one case
                 per kernel, and the VRAM checks), except the slow perplexity test.
  perplexity     (full run) the default model on the GPU against the CPU: the `gpu` tests marked `slow`.
  benchmark      bench/cuda_kernels.py (quick: its main rows).
  decoding       (full run) `int8wb bench-decode` on the GPU: tokens/s of greedy decoding per method, the
                 bytes each step reads as planned, and the card's own copy bandwidth measured alongside.
pytest runs with no third-party plugin (PYTEST_DISABLE_PLUGIN_AUTOLOAD: pytest-qt would import
PySide6.QtGui at start-up, which needs libEGL and libxkbcommon) and without the suite's conftest
(which needs pyzmq): the GPU tests need neither, and a headless CUDA image may lack all three. Warnings
are shown rather than raised (`-W default`): a GPU machine brings its own versions of torch, CuPy and
transformers, whose deprecation notices say nothing about the CUDA path and must not stop its only run.

Without a CUDA device the steps that need one collect their tests (so they are known to import) and
say "no CUDA device: skipped". The last line is the verdict. Exit status: 0 passed, 1 a step failed,
2 a prerequisite is missing, 3 no CUDA device (nothing failed; the device steps were skipped).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NO_DEVICE = "no CUDA device: skipped"
ARCH_WITHOUT_DEVICE = 90  # the H200 (and H100): what the first GPU will be
BUDGET_S = {"quick": 120, "full": 290}  # the limits: under 2 minutes, well under 5
PYTEST = ["-m", "pytest", "-p", "no:cacheprovider", "--noconftest", "-W", "default", "-q", "-rs"]
PYTEST_ENV = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
EXIT_PASSED, EXIT_FAILED, EXIT_MISSING, EXIT_NO_DEVICE = 0, 1, 2, 3


@dataclass
class Outcome:
    status: str  # "passed", "failed", "skipped"
    note: str = ""


OUT_OF_TIME = Outcome("failed", "not run: out of time")


@dataclass
class Machine:
    """What the prerequisites step found."""

    quick: bool
    arch: int = ARCH_WITHOUT_DEVICE
    device: str | None = None  # the GPU's name, None without one
    missing: list[str] = field(default_factory=list)  # required and absent: the run stops
    model_missing: str | None = None  # why the perplexity step cannot run


# --- prerequisites -----------------------------------------------------------------------------------


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _module_version(module: str, *distributions: str) -> str | None:
    """The installed version of a module (from the first distribution that names it), or None."""
    if importlib.util.find_spec(module) is None:
        return None
    return next(filter(None, map(_version, distributions)), "installed")


def _report(name: str, value: str | None, why: str) -> bool:
    print(f"  {name:<14}{value if value else 'MISSING (' + why + ')'}")
    return value is not None


def check_prerequisites(machine: Machine) -> Outcome:
    import torch

    print(f"  {'python':<14}{sys.version.split()[0]} ({sys.executable})")
    print(f"  {'torch':<14}{torch.__version__}, built for CUDA {torch.version.cuda}")
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        machine.arch = major * 10 + minor
        machine.device = torch.cuda.get_device_name()
        count = torch.cuda.device_count()
        print(f"  {'GPU':<14}{machine.device}, sm_{machine.arch}, {count} device(s)")
    else:
        print(f"  {'GPU':<14}none visible to torch: the device steps will be skipped")
    required = {
        "CuPy": (_module_version("cupy", "cupy-cuda13x", "cupy-cuda12x", "cupy"), "the kernels' launcher"),
        "NVRTC": (_nvrtc(machine.arch), "compiles the kernels: pip install nvidia-cuda-nvrtc-cu12"),
        "platformdirs": (_module_version("platformdirs", "platformdirs"), "the kernel cache's location"),
        "pytest": (_module_version("pytest", "pytest"), "runs the GPU tests"),
        "transformers": (_module_version("transformers", "transformers"), "the VRAM and perplexity tests"),
    }
    for name, (value, why) in required.items():
        if not _report(name, value, why):
            machine.missing.append(name)
    if not machine.quick:
        machine.model_missing = _default_model()
    _report("bitsandbytes", _module_version("bitsandbytes", "bitsandbytes"), "optional: the benchmark's comparison")
    if machine.missing:
        return Outcome("failed", f"missing: {', '.join(machine.missing)}")
    return Outcome("passed")


def _nvrtc(arch: int) -> str | None:
    from int8wb.kernels import nvrtc

    try:
        version = nvrtc.version()
        archs = nvrtc.supported_archs()
    except Exception as exc:  # not found, or not loadable: say so
        print(f"  {'NVRTC':<14}{type(exc).__name__}: {str(exc).splitlines()[0]}")
        return None
    if arch not in archs:
        return None
    return f"{version[0]}.{version[1]}, generates sm_{arch}"


def _default_model() -> str | None:
    """Why the default model cannot be loaded here, or None when it can."""
    from int8wb.engine.errors import ModelLoadError
    from int8wb.engine.pipeline import loading

    gguf = _module_version("gguf", "gguf")
    _report("gguf", gguf, "reads the default model's GGUF file")
    try:
        path = loading.default_gguf_path()
    except ModelLoadError as exc:
        _report("default model", None, f"the perplexity step will be skipped: {exc}")
        return str(exc)
    _report("default model", str(path), "")
    return None if gguf else "gguf is not installed"


# --- the steps -----------------------------------------------------------------------------------------


def compile_kernels(machine: Machine) -> Outcome:
    from int8wb.kernels import cuda_loader

    started = time.perf_counter()
    cubins = cuda_loader.cubins_for(machine.arch)
    for name, path in cubins.items():
        print(f"  {name:<18}{path.stat().st_size:>10,} bytes  {path}")
    return Outcome("passed", f"{len(cubins)} sources for sm_{machine.arch} in {time.perf_counter() - started:.1f} s")


def load_default_model(machine: Machine, timeout: float) -> Outcome:
    if machine.model_missing:
        return Outcome("skipped", machine.model_missing)
    code = (
        "import time; t = time.perf_counter()\n"
        "from int8wb.engine.pipeline import loading\nfrom int8wb.engine.task import Task\n"
        "loaded = loading.load({'device': 'cpu'}, Task())\n"
        "print(f'  {loaded.name}: {loaded.describe()[\"parameters\"]:,} parameters in {time.perf_counter() - t:.1f} s')"
    )
    return run_command([sys.executable, "-c", code], timeout)


def gpu_test_files() -> list[str]:
    """Every test file that holds a `gpu`-marked test."""
    return [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "tests").glob("test_*.py"))
        if "pytest.mark.gpu" in path.read_text()
    ]


def run_tests(machine: Machine, marker: str, timeout: float) -> Outcome:
    """pytest on every GPU test file, with `marker`; the figures the tests print are shown (-s)."""
    command = [sys.executable, *PYTEST, "-s", "-m", marker, *gpu_test_files()]
    if machine.device is None:
        collected = subprocess.run(
            [*command, "--collect-only"], cwd=ROOT, env=PYTEST_ENV, capture_output=True, text=True
        )
        summary = (collected.stdout.strip().splitlines() or ["no output"])[-1]
        if collected.returncode != 0:
            print(collected.stdout[-4000:] + collected.stderr[-4000:])
            return Outcome("failed", f"the tests do not collect: {summary}")
        return Outcome("skipped", f"{NO_DEVICE} ({summary})")
    return run_command(command, timeout, PYTEST_ENV)


def run_benchmark(machine: Machine, timeout: float) -> Outcome:
    if machine.device is None:
        return Outcome("skipped", NO_DEVICE)
    return run_command([sys.executable, "bench/cuda_kernels.py", *(["--quick"] if machine.quick else [])], timeout)


def run_decode(machine: Machine, timeout: float) -> Outcome:
    if machine.device is None:
        return Outcome("skipped", NO_DEVICE)
    if machine.model_missing:
        return Outcome("skipped", machine.model_missing)
    methods = "absmax-tensor,vectorwise,llm-int8,llm-int8-dynamic,weight-only"
    command = [sys.executable, "-m", "int8wb.engine.cli", "bench-decode", "--device", "cuda", "--methods", methods]
    return run_command([*command, "--repeats", "3", "--copy-mib", "1024", "--quiet"], timeout)


def run_command(command: list[str], timeout: float, env: dict[str, str] | None = None) -> Outcome:
    """Run `command` in the repository with its output shown as it comes; stopped after `timeout` s."""
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    try:
        status = process.wait(timeout=None if math.isinf(timeout) else max(timeout, 1))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return Outcome("failed", f"stopped after {timeout:.0f} s")
    return Outcome("passed") if status == 0 else Outcome("failed", f"exit status {status}")


# --- the run ----------------------------------------------------------------------------------------------


def steps(machine: Machine) -> list[tuple[str, float, Callable[[float], Outcome]]]:
    """(title, time limit in s, step) in order; a step gets the smaller of its limit and what is left."""
    quick = machine.quick
    plan = [
        ("compile the kernels with NVRTC", 90, lambda limit: compile_kernels(machine)),
        ("default model: load (GGUF conversion on first use)", 90, lambda limit: load_default_model(machine, limit)),
        ("GPU tests", 100, lambda limit: run_tests(machine, "gpu and quick" if quick else "gpu and not slow", limit)),
        ("perplexity, GPU against CPU", 150, lambda limit: run_tests(machine, "gpu and slow", limit)),
        ("benchmark", 90 if quick else 120, lambda limit: run_benchmark(machine, limit)),
        ("decoding: tokens/s per method against the copy bandwidth", 90, lambda limit: run_decode(machine, limit)),
    ]
    skipped_in_quick = {
        "default model: load (GGUF conversion on first use)",
        "perplexity, GPU against CPU",
        "decoding: tokens/s per method against the copy bandwidth",
    }
    return [step for step in plan if not (quick and step[0] in skipped_in_quick)]


def verdict(outcomes: dict[str, Outcome], machine: Machine, seconds: float) -> tuple[str, int]:
    mode = "quick" if machine.quick else "full"
    failed = [name for name, outcome in outcomes.items() if outcome.status == "failed"]
    skipped = [name for name, outcome in outcomes.items() if outcome.status == "skipped"]
    counts = f"{len(outcomes) - len(failed) - len(skipped)} passed, {len(failed)} failed, {len(skipped)} skipped"
    over = f"; over the {BUDGET_S[mode]} s budget" if machine.device and seconds > BUDGET_S[mode] else ""
    where = f"{mode} run, {seconds:.0f} s, {machine.device or 'no GPU'}"
    if machine.missing:
        return f"verdict: MISSING PREREQUISITES ({where}): {', '.join(machine.missing)}", EXIT_MISSING
    if failed:
        return f"verdict: FAIL ({where}): {counts}: {', '.join(failed)}{over}", EXIT_FAILED
    if machine.device is None:
        return f"verdict: NO CUDA DEVICE ({where}): {counts}; run it again on a GPU", EXIT_NO_DEVICE
    if over:
        return f"verdict: FAIL ({where}): {counts}{over}", EXIT_FAILED
    return f"verdict: PASS ({where}): {counts}", EXIT_PASSED


def run(quick: bool) -> int:
    machine = Machine(quick=quick)
    budget = BUDGET_S["quick" if quick else "full"]
    started = time.perf_counter()
    outcomes: dict[str, Outcome] = {}
    plan = [("prerequisites", budget, lambda limit: check_prerequisites(machine)), *steps(machine)]
    for number, (title, limit, step) in enumerate(plan, 1):
        print(f"\n== [{number}/{len(plan)}] {title} ==", flush=True)
        step_started = time.perf_counter()
        # The limits are the GPU machine's; a run without one (a CPU check) is not held to them.
        remaining = budget - (step_started - started) if machine.device else math.inf
        outcome = step(min(limit, remaining) if machine.device else math.inf) if remaining > 0 else OUT_OF_TIME
        outcomes[title] = outcome
        word = {"passed": "ok", "failed": "FAILED", "skipped": "skipped"}[outcome.status]
        note = f": {outcome.note}" if outcome.note else ""
        print(f"-- {title}: {word} in {time.perf_counter() - step_started:.1f} s{note}", flush=True)
        if machine.missing:
            break
    line, status = verdict(outcomes, machine, time.perf_counter() - started)
    print(f"\n{line}", flush=True)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one test per kernel and the benchmark's main rows")
    return run(parser.parse_args().quick)


if __name__ == "__main__":
    sys.exit(main())
