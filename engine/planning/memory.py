"""Measured memory: what a model's tensors take, and the peak of each phase of a job.

On CUDA the numbers are torch's allocator statistics: the peak is reset when a phase
starts, so each phase (load, quantize, an evaluation batch) reports its own peak of
allocated and reserved bytes. The CUDA context and library workspaces are outside
the allocator and not counted (the planner's per-GPU overhead stands for them).

On the CPU torch has no allocator statistics; what can be measured is the bytes of
the model's tensors (exact, by dtype) and the process's peak resident memory
(`ru_maxrss`). That peak cannot be reset, so a phase reports the peak so far and how
much it rose during the phase (0 when an earlier phase went higher), and the resident
memory at its start and end. Linux keeps `ru_maxrss` across fork and exec, so a process
started by a larger one begins with its parent's peak.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since it started, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes


def current_rss_bytes() -> int | None:
    """Resident memory now (Linux /proc), or None where that file does not exist."""
    try:
        with open("/proc/self/statm") as handle:
            resident_pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    import os

    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def tensor_bytes(model: Any) -> dict[str, Any]:
    """Bytes of the model's tensors by dtype, each storage counted once (tied weights once).

    `state` holds parameters and persistent buffers (what a checkpoint stores; the
    planner's weight bytes); `runtime_buffers` holds non-persistent buffers such as
    rotary `inv_freq` tables, rebuilt at load time, listed by name.
    """
    state: dict[str, int] = {}
    runtime: dict[str, dict[str, Any]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        tensors = [(key, t, True) for key, t in module._parameters.items()]
        tensors += [(key, t, key not in module._non_persistent_buffers_set) for key, t in module._buffers.items()]
        for key, tensor, persistent in tensors:
            if tensor is None or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            dtype, size = str(tensor.dtype).removeprefix("torch."), tensor.numel() * tensor.element_size()
            if persistent:
                state[dtype] = state.get(dtype, 0) + size
            else:
                runtime[f"{module_name}.{key}" if module_name else key] = {"dtype": dtype, "bytes": size}
    return {
        "state_by_dtype": state,
        "state_bytes": sum(state.values()),
        "runtime_buffers": runtime,
        "runtime_buffer_bytes": sum(item["bytes"] for item in runtime.values()),
    }


@dataclass
class PhaseMemory:
    """The memory of one phase. CUDA fields are None on the CPU and the other way round; on several
    GPUs (`cuda:all`) each CUDA field is the sum over them of that GPU's figure."""

    phase: str
    device: str
    seconds: float = 0.0
    cuda_peak_allocated: int | None = None
    cuda_peak_reserved: int | None = None
    cuda_allocated_at_start: int | None = None
    cuda_allocated_at_end: int | None = None
    cpu_peak_rss: int | None = None
    cpu_peak_rss_rise: int | None = None
    cpu_rss_at_start: int | None = None
    cpu_rss_at_end: int | None = None


@dataclass
class MemoryRecorder:
    """Collects the phases of one job; `as_dict()` is what the engine sends and the GUI shows."""

    phases: list[PhaseMemory] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str, device: Any = "cpu") -> Iterator[PhaseMemory]:
        """Measure the code in the `with` block as phase `name` on `device` (a string or torch.device)."""
        record = PhaseMemory(phase=name, device=str(device))
        with measure(record):
            yield record
        self.phases.append(record)

    def as_dict(self) -> dict[str, Any]:
        return {"phases": [asdict(p) for p in self.phases]}


@contextmanager
def measure(record: PhaseMemory) -> Iterator[PhaseMemory]:
    """Fill `record` with the memory of the `with` block (CUDA allocator peaks, or CPU peak RSS).

    On CUDA every GPU the device stands for is measured (all of them for `cuda:all`, a model
    spread by accelerate) and the figures are summed over them.
    """
    cuda = record.device.startswith("cuda")
    start = time.perf_counter()
    if cuda:
        import torch

        from int8wb.engine.model.loaded import cuda_indices

        gpus = cuda_indices(record.device)
        for index in gpus:
            torch.cuda.synchronize(index)
            torch.cuda.reset_peak_memory_stats(index)
        record.cuda_allocated_at_start = sum(torch.cuda.memory_allocated(index) for index in gpus)
    rss_peak_before = peak_rss_bytes()
    if not cuda:
        record.cpu_rss_at_start = current_rss_bytes()
    try:
        yield record
    finally:
        if cuda:
            for index in gpus:
                torch.cuda.synchronize(index)
            record.cuda_peak_allocated = sum(torch.cuda.max_memory_allocated(index) for index in gpus)
            record.cuda_peak_reserved = sum(torch.cuda.max_memory_reserved(index) for index in gpus)
            record.cuda_allocated_at_end = sum(torch.cuda.memory_allocated(index) for index in gpus)
        else:
            record.cpu_peak_rss = peak_rss_bytes()
            record.cpu_peak_rss_rise = record.cpu_peak_rss - rss_peak_before
            record.cpu_rss_at_end = current_rss_bytes()
        record.seconds = time.perf_counter() - start
