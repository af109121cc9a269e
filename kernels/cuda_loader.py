"""Loading the CUDA kernels and handing torch tensors to them.

The `.cu` sources next to this file are compiled with NVRTC (`kernels.nvrtc`,
the same compiler and options as the CPU-only compile check) to a cubin for
the device's exact architecture, cached on disk under the user's cache
directory keyed by a hash of sources, options, architecture and NVRTC version,
and loaded per device with `cupy.RawModule`. Tensors cross to CuPy through
DLPack (`cupy.from_dlpack`), which shares the memory: nothing is copied.
Kernels are launched on torch's current stream of the tensor's device, so
they are ordered with the surrounding torch work without synchronising.

Importing this module imports neither CuPy nor torch.cuda: `kernels.ops`
consults `kernels_available` only for tensors already on a CUDA device. Set
`INT8WB_KERNELS=reference` to force the torch reference everywhere.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from int8wb.kernels import nvrtc

log = logging.getLogger(__name__)

KERNEL_DIR = Path(__file__).resolve().parent
DISABLE_ENV = "INT8WB_KERNELS"

# One entry point per source, fetched when the device is probed (see _load_modules).
PROBE_ENTRY_POINTS = {
    "epilogue": "dequantize_epilogue_f32_f32_v1",
    "feature_stats": "feature_stats_f32_v1",
    "outliers": "outlier_mask",
    "quantize": "quantize_rowwise_f32_v1",
}

_lock = threading.Lock()
_modules: dict[tuple[int, str], Any] = {}  # (device index, source stem) -> cupy.RawModule
_availability: dict[int, str | None] = {}  # device index -> None if usable, else the reason


def cuda_sources() -> dict[str, str]:
    """Every kernel source in `kernels/`, by file name."""
    return {path.name: path.read_text() for path in sorted(KERNEL_DIR.glob("*.cu"))}


def cuda_headers() -> dict[str, str]:
    """The headers the sources include, by the name they are included as."""
    return {path.name: path.read_text() for path in sorted(KERNEL_DIR.glob("*.cuh"))}


def compile_file(name: str, arch: int, source: str | None = None, ptx: bool = False) -> nvrtc.CompiledKernel:
    """Compile one source (by file name, or the given text under that name) for `sm_<arch>`."""
    text = source if source is not None else (KERNEL_DIR / name).read_text()
    return nvrtc.compile_source(text, name, arch, headers=cuda_headers(), ptx=ptx)


def _cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("int8-workbench")) / "kernels"


def _cubin_path(name: str, arch: int) -> Path:
    """Where the cubin of `name` for `arch` is cached; the key covers everything that shapes it."""
    digest = hashlib.sha256()
    for part in (cuda_sources()[name], *sorted(cuda_headers().items()), nvrtc.DEFAULT_OPTIONS, nvrtc.version(), arch):
        digest.update(repr(part).encode())
    return _cache_dir() / f"{Path(name).stem}-sm_{arch}-{digest.hexdigest()[:16]}.cubin"


def cubin_for(name: str, arch: int) -> Path:
    """The cached cubin of one source for one architecture, compiling it on first use."""
    path = _cubin_path(name, arch)
    if not path.exists():
        compiled = compile_file(name, arch)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(compiled.binary)
        partial.replace(path)  # atomic: a concurrent reader sees no half-written cubin
    return path


def cubins_for(arch: int) -> dict[str, Path]:
    """The cached cubin of every source for `arch`, by file name; the missing ones are compiled
    side by side (NVRTC runs outside the GIL and is thread-safe for separate programs), so a
    cold cache costs about the slowest source rather than the sum."""
    names = list(cuda_sources())
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        return dict(zip(names, pool.map(lambda name: cubin_for(name, arch), names)))


def _device_arch(index: int) -> int:
    import torch

    major, minor = torch.cuda.get_device_capability(index)
    return major * 10 + minor


def _load_modules(index: int) -> None:
    """Compile (or find cached) and load every source for this device.

    `cupy.RawModule(path=...)` reads the cubin only when a function is first
    asked for, so one function of each module is fetched here: a cubin the
    driver rejects (an NVRTC newer than the driver, say) fails now, in the
    probe, and the device falls back to the reference instead of failing in
    the middle of a forward pass.
    """
    import cupy

    arch = _device_arch(index)
    if arch not in nvrtc.supported_archs():
        raise RuntimeError(f"NVRTC {nvrtc.version()} cannot generate code for sm_{arch}")
    cubins = cubins_for(arch)
    with cupy.cuda.Device(index):
        for name, cubin in cubins.items():
            stem = Path(name).stem
            module = cupy.RawModule(path=str(cubin))
            try:
                module.get_function(PROBE_ENTRY_POINTS[stem])
            except Exception as exc:
                raise RuntimeError(f"the driver cannot load {name} compiled for sm_{arch}: {exc}") from exc
            _modules[(index, stem)] = module


def kernels_available(device: Any) -> bool:
    """True when the CUDA kernels can run on `device` (a torch.device on CUDA).

    The first call per device imports CuPy and compiles or loads every kernel;
    a failure is logged once with its reason and the reference is used from
    then on for that device.
    """
    index = device.index if device.index is not None else _current_device()
    with _lock:
        if index not in _availability:
            _availability[index] = _probe(index)
            if _availability[index] is not None:
                log.warning(
                    "CUDA kernels unavailable on cuda:%d, using the torch reference: %s", index, _availability[index]
                )
        return _availability[index] is None


def unavailable_reason(device: Any) -> str | None:
    """Why the kernels cannot run on `device`, or None when they can (probing it if needed)."""
    kernels_available(device)
    index = device.index if device.index is not None else _current_device()
    return _availability[index]


def _current_device() -> int:
    import torch

    return torch.cuda.current_device()


def reference_forced() -> bool:
    """True when INT8WB_KERNELS=reference asks for the torch reference on every device."""
    return os.environ.get(DISABLE_ENV, "").lower() == "reference"


def _probe(index: int) -> str | None:
    if reference_forced():
        return f"{DISABLE_ENV}=reference is set"
    try:
        import cupy  # noqa: F401
    except ImportError as exc:
        return f"CuPy is not installed ({exc}); install the `gpu` extra"
    try:
        _load_modules(index)
    except Exception as exc:  # any failure here means: fall back, and say why
        return f"{type(exc).__name__}: {exc}"
    return None


def get_kernel(index: int, module: str, entry_point: str) -> Any:
    """The `cupy.RawKernel` for one entry point of one source on one device."""
    return _function(index, module, entry_point)


@functools.cache
def _function(index: int, module: str, entry_point: str) -> Any:
    import cupy

    with cupy.cuda.Device(index):
        return _modules[(index, module)].get_function(entry_point)


@functools.cache
def multiprocessor_count(index: int) -> int:
    import torch

    return torch.cuda.get_device_properties(index).multi_processor_count


class _OnCurrentStream:
    """A DLPack producer for one torch tensor that skips the stream handshake.

    The kernels are launched on torch's current stream, so the tensor is ready
    in stream order and no cross-stream event is needed; asking torch for
    `stream=-1` also avoids how producers and consumers spell the legacy
    default stream (0, 1), which they do not agree on.
    """

    def __init__(self, tensor: Any) -> None:
        self._tensor = tensor

    def __dlpack_device__(self) -> Any:
        return self._tensor.__dlpack_device__()

    def __dlpack__(self, *, stream: Any = None, **kwargs: Any) -> Any:
        return self._tensor.__dlpack__(stream=-1, **kwargs)


def as_cupy(tensor: Any) -> Any:
    """A flat uint8 CuPy view of a contiguous CUDA torch tensor, sharing its memory (DLPack).

    Viewed as bytes because CuPy has no bfloat16 and a kernel only needs the
    address; call it with the tensor's device current.
    """
    import cupy
    import torch

    flat = tensor.detach().reshape(-1).view(torch.uint8)
    return cupy.from_dlpack(_OnCurrentStream(flat))


def launch(
    tensor_device: Any, module: str, entry_point: str, grid: Sequence[int], block: Sequence[int], args: Sequence[Any]
) -> None:
    """Launch one kernel on torch's current stream of `tensor_device`.

    `args` holds contiguous torch tensors (passed as device pointers through
    DLPack) and NumPy scalars (passed by value with their exact C type).
    """
    import cupy
    import torch

    index = tensor_device.index if tensor_device.index is not None else _current_device()
    kernel = get_kernel(index, module, entry_point)
    stream_pointer = torch.cuda.current_stream(index).cuda_stream
    stream = cupy.cuda.Stream.null if stream_pointer == 0 else cupy.cuda.ExternalStream(stream_pointer)
    with torch.cuda.device(index), cupy.cuda.Device(index), stream:
        converted = tuple(as_cupy(arg) if isinstance(arg, torch.Tensor) else arg for arg in args)
        kernel(tuple(grid), tuple(block), converted)
