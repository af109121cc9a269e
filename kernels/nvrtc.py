"""A small ctypes binding of NVRTC, the CUDA runtime compiler, that needs no GPU.

CuPy's own compile path asks the driver for the device's architecture, so it
cannot run on a machine without a GPU. NVRTC itself is a plain host library:
called directly it compiles CUDA C++ to a cubin for any architecture it knows,
which is what the CPU-only compile check and the runtime loader both use. The
same compiler, options and sources serve both, so a source that passes the
check is the source that runs.

The library comes from an NVIDIA wheel: `nvidia-cuda-nvrtc-cu12` (in
`site-packages/nvidia/cuda_nvrtc/lib`) or CUDA 13's `nvidia-cuda-nvrtc` (in
`site-packages/nvidia/cu13/lib`), CUDA 12 first because its cubins load on
CUDA 12 and 13 drivers alike; failing that, from a CUDA toolkit
(`CUDA_PATH`, `CUDA_HOME`, /usr/local/cuda, then the dynamic loader).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

NVRTC_SUCCESS = 0

# Options every kernel is compiled with. No --use_fast_math: division and
# rounding must be IEEE so that int8 values match the torch reference bit for
# bit; --fmad=false keeps `a * b + c` two roundings, as torch computes it.
DEFAULT_OPTIONS = ("--std=c++17", "--fmad=false")


class NvrtcUnavailable(RuntimeError):
    """No NVRTC library could be found or loaded on this machine."""


class NvrtcError(RuntimeError):
    """A source failed to compile; the message carries NVRTC's full log."""

    def __init__(self, name: str, arch: str, log: str) -> None:
        super().__init__(f"NVRTC failed to compile {name} for {arch}:\n{log}")
        self.name, self.arch, self.log = name, arch, log


@dataclass(frozen=True)
class CompiledKernel:
    """The result of one successful compilation: a cubin (arch "sm_90") or PTX text (arch "compute_90")."""

    name: str
    arch: str
    binary: bytes
    log: str  # warnings, if any

    @property
    def ptx(self) -> str:
        return self.binary.rstrip(b"\0").decode()


# Where the NVIDIA wheels put the library, under site-packages/nvidia: CUDA 12's layout, then CUDA 13's.
WHEEL_PATTERNS = ("cuda_nvrtc/lib/libnvrtc.so*", "cuda_nvrtc/bin/nvrtc64_*.dll", "cu*/lib/libnvrtc.so*")
TOOLKIT_DIRS = [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"]


def _candidate_paths() -> list[str]:
    """Where libnvrtc may live, most specific first."""
    found: list[Path] = []
    spec = importlib.util.find_spec("nvidia")
    if spec is not None and spec.submodule_search_locations:
        for pattern in WHEEL_PATTERNS:
            for root in spec.submodule_search_locations:
                found += sorted(Path(root).glob(pattern))
    for toolkit in filter(None, TOOLKIT_DIRS):
        found += sorted((Path(toolkit) / "lib64").glob("libnvrtc.so*"))
    candidates = [str(path) for path in found if "builtins" not in path.name and "alt" not in path.name]
    return list(dict.fromkeys(candidates + ["libnvrtc.so.12", "libnvrtc.so.13", "libnvrtc.so"]))


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    c_int_p = ctypes.POINTER(ctypes.c_int)
    c_size_p = ctypes.POINTER(ctypes.c_size_t)
    signatures = {
        "nvrtcVersion": [c_int_p, c_int_p],
        "nvrtcGetNumSupportedArchs": [c_int_p],
        "nvrtcGetSupportedArchs": [c_int_p],
        "nvrtcCreateProgram": [
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.POINTER(ctypes.c_char_p),
        ],
        "nvrtcCompileProgram": [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
        "nvrtcGetProgramLogSize": [ctypes.c_void_p, c_size_p],
        "nvrtcGetProgramLog": [ctypes.c_void_p, ctypes.c_char_p],
        "nvrtcGetCUBINSize": [ctypes.c_void_p, c_size_p],
        "nvrtcGetCUBIN": [ctypes.c_void_p, ctypes.c_char_p],
        "nvrtcGetPTXSize": [ctypes.c_void_p, c_size_p],
        "nvrtcGetPTX": [ctypes.c_void_p, ctypes.c_char_p],
        "nvrtcDestroyProgram": [ctypes.POINTER(ctypes.c_void_p)],
    }
    for name, argtypes in signatures.items():
        function = getattr(lib, name)
        function.argtypes = argtypes
        function.restype = ctypes.c_int
    lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return lib


@functools.lru_cache(maxsize=1)
def load_library() -> ctypes.CDLL:
    """The NVRTC shared library, loaded once; raises `NvrtcUnavailable` with every path tried."""
    failures = []
    for path in _candidate_paths():
        try:
            return _declare(ctypes.CDLL(path))
        except OSError as exc:
            failures.append(f"{path}: {exc}")
    raise NvrtcUnavailable(
        "NVRTC not found; install the `nvidia-cuda-nvrtc-cu12` package or a CUDA toolkit. Tried:\n  "
        + "\n  ".join(failures)
    )


def _check(lib: ctypes.CDLL, status: int, what: str) -> None:
    if status != NVRTC_SUCCESS:
        raise RuntimeError(f"{what} failed: {lib.nvrtcGetErrorString(status).decode()} ({status})")


def version() -> tuple[int, int]:
    """NVRTC's (major, minor) version."""
    lib = load_library()
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib, lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def supported_archs() -> list[int]:
    """Compute capabilities NVRTC can generate a cubin for, as integers (80 for sm_80)."""
    lib = load_library()
    count = ctypes.c_int()
    _check(lib, lib.nvrtcGetNumSupportedArchs(ctypes.byref(count)), "nvrtcGetNumSupportedArchs")
    archs = (ctypes.c_int * count.value)()
    _check(lib, lib.nvrtcGetSupportedArchs(archs), "nvrtcGetSupportedArchs")
    return list(archs)


def _program_log(lib: ctypes.CDLL, program: ctypes.c_void_p) -> str:
    size = ctypes.c_size_t()
    _check(lib, lib.nvrtcGetProgramLogSize(program, ctypes.byref(size)), "nvrtcGetProgramLogSize")
    buffer = ctypes.create_string_buffer(size.value)
    _check(lib, lib.nvrtcGetProgramLog(program, buffer), "nvrtcGetProgramLog")
    return buffer.value.decode(errors="replace")


def compile_source(
    source: str,
    name: str,
    arch: int,
    headers: dict[str, str] | None = None,
    options: tuple[str, ...] = DEFAULT_OPTIONS,
    ptx: bool = False,
) -> CompiledKernel:
    """Compile CUDA C++ `source` to a cubin for `sm_<arch>` (or to PTX for `compute_<arch>`).

    `headers` maps include names (as written in `#include "..."`) to their
    text, so that a source and its headers compile from memory with no search
    path. Raises `NvrtcError` with the compiler log when the source is wrong.
    """
    lib = load_library()
    headers = headers or {}
    arch_name = f"compute_{arch}" if ptx else f"sm_{arch}"
    header_texts = (ctypes.c_char_p * len(headers))(*[text.encode() for text in headers.values()])
    header_names = (ctypes.c_char_p * len(headers))(*[key.encode() for key in headers])
    program = ctypes.c_void_p()
    _check(
        lib,
        lib.nvrtcCreateProgram(
            ctypes.byref(program), source.encode(), name.encode(), len(headers), header_texts, header_names
        ),
        "nvrtcCreateProgram",
    )
    try:
        all_options = [f"--gpu-architecture={arch_name}", *options]
        option_array = (ctypes.c_char_p * len(all_options))(*[o.encode() for o in all_options])
        status = lib.nvrtcCompileProgram(program, len(all_options), option_array)
        log = _program_log(lib, program)
        if status != NVRTC_SUCCESS:
            raise NvrtcError(name, arch_name, log or lib.nvrtcGetErrorString(status).decode())
        get_size, get_binary = (
            (lib.nvrtcGetPTXSize, lib.nvrtcGetPTX) if ptx else (lib.nvrtcGetCUBINSize, lib.nvrtcGetCUBIN)
        )
        size = ctypes.c_size_t()
        _check(lib, get_size(program, ctypes.byref(size)), "nvrtcGet*Size")
        binary = ctypes.create_string_buffer(size.value)
        _check(lib, get_binary(program, binary), "nvrtcGet{PTX,CUBIN}")
        return CompiledKernel(name=name, arch=arch_name, binary=binary.raw, log=log)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))
