"""A model as the engine holds it, and the choices every loader makes the same way (device, dtype).

Loading from a directory, a GGUF file or the hub (engine.pipeline.loading) and re-opening a
workbench export (engine.checkpoint.reopen) both produce a `LoadedModel`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from int8wb.engine.errors import BadInput, ModelLoadError
from int8wb.engine.vocabulary import ALL_GPUS, BF16_MIN_CAPABILITY


@dataclass
class LoadedModel:
    """A model ready for the engine, with what the user should know about it."""

    model: Any  # transformers PreTrainedModel, in eval mode, no gradients
    tokenizer: Any
    name: str  # what the UI shows
    source: str  # path or hub id it came from
    kind: str  # "default", "directory", "gguf", "hub"
    device: str  # "cpu", "cuda", "cuda:0", ...
    dtype: str  # "float32", "float16", "bfloat16"
    notes: list[str] = field(default_factory=list)
    offload: dict[str, Any] = field(
        default_factory=lambda: {"mode": "none", "reason": ""}
    )  # see engine.pipeline.on_disk

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for the CLI and the GUI."""
        from int8wb.kernels.ops import int8_product_path

        config = self.model.config
        return {
            "name": self.name,
            "source": self.source,
            "kind": self.kind,
            "device": self.device,
            "dtype": self.dtype,
            "architecture": type(self.model).__name__,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "layers": getattr(config, "num_hidden_layers", None),
            "hidden_size": getattr(config, "hidden_size", None),
            "intermediate_size": getattr(config, "intermediate_size", None),
            "int8_path": int8_product_path(self.device),
            "notes": list(self.notes),
            "offload": dict(self.offload),
        }


def pick_device(requested: str | None = None) -> str:
    """The requested device, else CUDA when present, else the CPU; `BadInput` for one this machine lacks.

    An explicit `cuda:N` is honoured as it is (never spread over other GPUs); `cuda:all`
    (vocabulary.ALL_GPUS) asks for the model spread over every visible GPU.
    """
    import torch

    if not requested or requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == ALL_GPUS:
        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            raise BadInput(f"device {requested!r} requested but no CUDA device is available; use cpu")
        return requested
    try:
        device = torch.device(requested) if isinstance(requested, str) else None
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise BadInput(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise BadInput(f"device {requested!r} requested but no CUDA device is available; use cpu")
        if device.index is not None and device.index >= count:
            raise BadInput(f"device {requested!r} requested but this machine has {count} CUDA device(s)")
    return requested


def cuda_indices(device: str) -> list[int]:
    """The GPU indices a CUDA device string stands for: all of them for `cuda:all`."""
    import torch

    if device == ALL_GPUS:
        return list(range(torch.cuda.device_count()))
    index = device.partition(":")[2]
    return [int(index)] if index.isdigit() else [torch.cuda.current_device()]


def pick_dtype(device: str, requested: str | None = None):
    """float32 on the CPU; on GPUs bfloat16 where every GPU used has it natively (compute
    capability 8.0 or newer), else float16. `torch.cuda.is_bf16_supported()` is true on GPUs
    that only emulate bfloat16 (T4, V100), where it is slow and the kernels cannot compile."""
    import torch

    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if requested and requested != "auto":
        if requested not in names:
            raise ModelLoadError(f"unknown dtype {requested!r}; use one of {', '.join(names)}")
        return names[requested]
    if device.startswith("cuda"):
        capabilities = [torch.cuda.get_device_capability(index) for index in cuda_indices(device)]
        return torch.bfloat16 if min(capabilities) >= BF16_MIN_CAPABILITY else torch.float16
    return torch.float32


def quiet_transformers() -> None:
    """transformers' own progress bars and advice would interleave with ours."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
