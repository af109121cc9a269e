"""Compiling `kernels/cpu_int8.c` and `kernels/cpu_gemv.c` with the system C compiler, called through ctypes.

torch's eager ops each make one pass over memory and one parallel region; the
passes around the INT8 GEMM (quantize, dequantize) and the scan's statistics
need several each, which costs more than the GEMM saves. `cpu_int8.c` fuses each
into one pass; `cpu_gemv.c` is the whole layer for a few tokens (decoding), with
its instructions picked at run time. The library is compiled once per machine (`cc -O3 -march=native
-fopenmp`, `$CC` if set), cached under the user's cache directory keyed by a
hash of the source, the flags, the compiler and the CPU's features, and loaded
with ctypes; its OpenMP regions share torch's own OpenMP runtime (the library
asks for `libgomp.so.1`, which torch has already loaded), so the two never
compete for the cores with separate thread pools.

Without a working C compiler, or with `INT8WB_KERNELS=reference`, `library()`
is None and `kernels.cpu_int8` runs the same arithmetic as torch ops: the
results are identical, only slower.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).resolve().parent / name for name in ("cpu_int8.c", "cpu_gemv.c"))
DISABLE_ENV = "INT8WB_KERNELS"
# No fast-math, no FMA contraction: the kernels must round exactly as the torch reference does.
FLAGS = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fPIC", "-shared", "-std=gnu11")

_lock = threading.Lock()
_state: dict[str, object] = {}  # "library": ctypes.CDLL | None, "reason": str | None

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_SIGNATURES = {
    "quantize_rows_f32": [_P, _I64, _I64, _I64, _P, _P, _P, _P, _P, ctypes.c_int],
    "quantize_rows_i8": [_P, _I64, _I64, _I64, _P, _P, _P, _P, ctypes.c_int],
    "dequantize_f32": [_P, _P, _I64, _I64, _P, _P, _P, _P, ctypes.c_int],
    "dequantize_i32": [_P, _P, _I64, _I64, _P, _P, _P, _P, ctypes.c_int],
    "outlier_flags": [_P, _I64, _I64, _I64, ctypes.c_float, _P, ctypes.c_int],
    "feature_stats": [_P, _I64, _I64, _I64, ctypes.c_float, _P, _P, _P, _P, _P, ctypes.c_int, _P, ctypes.c_int],
    "token_dim_absmax": [_P, _I64, _I64, _I64, _P, _P, _P, ctypes.c_int],
    "w8a8_rows_linear": [_P, _I64, _I64, _I64, _P, ctypes.c_int, _P, _I64, _P, ctypes.c_int, _P, _P, _P]
    + [ctypes.c_int] * 2,
    "rowscale_rows_linear": [_P, _I64, _I64, _I64, _P, _I64, _P, _P, _P, ctypes.c_int, ctypes.c_int],
    "q8_0_rows_linear": [_P, _I64, _I64, _I64, _P, _I64, _P, _P, _P, ctypes.c_int, ctypes.c_int],
}
_RETURNS = {
    "gemv_isa_supported": ([ctypes.c_int], ctypes.c_int),
    "median_magnitude": ([_P, _I64], ctypes.c_float),
}


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None when they cannot be built here (the reason is logged once)."""
    if "library" in _state:  # decoding asks ~200 times a token: no lock once it is settled
        return _state["library"]
    with _lock:
        if "library" not in _state:
            _state["library"], _state["reason"] = _load()
            if _state["reason"]:
                log.warning("fused CPU kernels unavailable, using torch ops: %s", _state["reason"])
        return _state["library"]


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Inside the block the fused kernels count as unavailable: the torch ops run (benchmarks, tests)."""
    library()
    saved = dict(_state)
    _state.update(library=None, reason="disabled for a comparison")
    try:
        yield
    finally:
        _state.update(saved)


def unavailable_reason() -> str | None:
    """Why `library()` is None, or None when the kernels are loaded."""
    library()
    return _state["reason"]


def _load() -> tuple[ctypes.CDLL | None, str | None]:
    if os.environ.get(DISABLE_ENV, "").lower() == "reference":
        return None, f"{DISABLE_ENV}=reference is set"
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None, "no C compiler found (set CC, or install gcc)"
    try:
        import torch  # noqa: F401  (loads torch's OpenMP runtime first, so the library shares it)

        path = _cached_build(compiler)
        built = ctypes.CDLL(str(path))
        for name, argtypes in _SIGNATURES.items():
            getattr(built, name).argtypes = argtypes
            getattr(built, name).restype = None
        for name, (argtypes, restype) in _RETURNS.items():
            getattr(built, name).argtypes = argtypes
            getattr(built, name).restype = restype
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return built, None


def _cached_build(compiler: str) -> Path:
    path = _cache_dir() / f"cpu_int8-{_build_key(compiler)}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
            partial = Path(scratch) / path.name
            result = subprocess.run(
                [compiler, *FLAGS, *map(str, SOURCES), "-o", str(partial), "-lm"],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if result.returncode != 0:
                raise subprocess.SubprocessError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")
            partial.replace(path)  # atomic: a concurrent reader never sees half a library
    return path


def _build_key(compiler: str) -> str:
    """A hash of everything that shapes the library: source, flags, compiler, and the CPU (-march=native)."""
    import torch

    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    features = sorted(name for name, value in torch.cpu.get_capabilities().items() if value is True)
    digest = hashlib.sha256()
    for part in (*(source.read_text() for source in SOURCES), FLAGS, version, features):
        digest.update(repr(part).encode())
    return digest.hexdigest()[:16]


def _cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("int8-workbench")) / "kernels"
