"""What a format's loader cannot hold in INT8, written in floating point so that the export still loads.

transformers' bitsandbytes loader gives a `Linear8bitLt` to exactly two module types: `nn.Linear`
itself and `Conv1D`; compressed-tensors' targets ("Linear") match `nn.Linear` by its class name
alone. Quantized modules of two kinds fall outside:
- experts that transformers fuses into 3-D parameters (Qwen3-MoE, Mixtral and most MoE families),
  one module holding (experts, out, in) tensors, held here as `ExpertLinears`;
- subclasses of nn.Linear with a forward of their own (Falcon's `FalconLinear`), which the loader
  leaves as they are and would feed INT8 values.
For each, the export writes in floating point what the loader expects (the weights the INT8
stands for, dequantized) and names the module in the format's skip list; the bitsandbytes export
keeps the INT8 tensors in the sidecar under `layout.HELD_PREFIX` (their names would collide with the
floating-point ones), so that re-opening gives back the very same quantized model. The export's
INT8 share states what the loader gets; its notes say where the INT8 is.
"""

from __future__ import annotations

from typing import Any

from int8wb.engine.vocabulary import EXPORT_FORMATS, format_of


def unheld_modules(model, fmt: str = EXPORT_FORMATS[0]) -> dict[str, Any]:
    """Module name -> module, for each quantized module `fmt` cannot hold (see the module docstring)."""
    from int8wb.engine.model.experts import ExpertLinears

    found: dict[str, Any] = {}
    for name, module in model.named_modules():
        if any(name.startswith(f"{prefix}.") for prefix in found):
            continue
        if isinstance(module, ExpertLinears) or not format_takes(fmt, getattr(module, "source_type", None)):
            found[name] = module
    return found


def format_takes(fmt: str, source_type) -> bool:
    """Whether `fmt`'s loader gives its INT8 layer to a module of `source_type` (None: not quantized)."""
    import torch.nn as nn

    if source_type is None or source_type is nn.Linear:
        return True
    return format_of(fmt).takes_conv1d and _is_conv1d_type(source_type)


def _is_conv1d_type(source_type) -> bool:
    """transformers' Conv1D, whose weight is stored (in, out)."""
    from transformers.pytorch_utils import Conv1D

    return issubclass(source_type, Conv1D)


def is_held(name: str, unheld: dict[str, Any]) -> bool:
    """Whether the module or tensor `name` is, or lies inside, a module the format holds in floating point."""
    return any(name == prefix or name.startswith(f"{prefix}.") for prefix in unheld)


def float_tensors(unheld: dict[str, Any]) -> dict[str, Any]:
    """The floating-point tensors transformers expects in place of the `unheld` modules."""
    import torch

    from int8wb.engine.model.experts import ExpertLinears, fused_tensors

    def weight(module):
        return module.float_weight() if hasattr(module, "float_weight") else module.weight

    tensors: dict[str, Any] = {}
    with torch.no_grad():
        for prefix, module in unheld.items():
            if isinstance(module, ExpertLinears):
                parts = fused_tensors(module, weight)
            else:
                stored = weight(module).t() if _is_conv1d_type(module.source_type) else weight(module)  # as it was
                parts = {"weight": stored, **({"bias": module.bias} if module.bias is not None else {})}
            tensors.update({f"{prefix}.{name}": tensor.contiguous() for name, tensor in parts.items()})
    return tensors


def layer_types(unheld: dict[str, Any]) -> dict[str, str]:
    """Module name -> layer type, for engine.quant.coverage: what the bitsandbytes files hold in floating point."""
    return {
        name: f"{module.source_type} (fused experts)" if hasattr(module, "fused_names") else module.source_type.__name__
        for name, module in unheld.items()
    }


def notes(unheld: dict[str, Any], fmt: str) -> list[str]:
    """What the export says about the modules it wrote in floating point (none when there are none)."""
    if not unheld:
        return []
    types = ", ".join(sorted(set(layer_types(unheld).values())))
    said = (
        f"{fmt} cannot hold {types} in INT8: {len(unheld)} such modules are written in floating point "
        "(dequantized from their INT8) and listed in the format's skip list"
    )
    if format_of(fmt).reopens:
        said += "; their INT8 tensors are in int8wb_extra.safetensors, from which the workbench re-opens them"
    return [said]


def restore(model, tensors: dict[str, Any], held_layers: list[str]) -> None:
    """Re-opening: drop the floating-point copies of INT8 layers; experts still in floating point get their slice.

    `held_layers`: the INT8 layers the export held in floating point (their INT8 is in place already).
    """
    import torch.nn as nn

    from int8wb.engine.model.experts import ExpertLinears

    for name in held_layers:
        for part in ("weight", "bias"):
            tensors.pop(f"{name}.{part}", None)
    for prefix, module in model.named_modules():
        if not isinstance(module, ExpertLinears):
            continue
        fused = {name: tensors.pop(f"{prefix}.{name}", None) for name in ExpertLinears.fused_names}
        for index, expert in enumerate(module):
            for name in ExpertLinears.fused_names:
                linear = getattr(expert, name)
                if isinstance(linear, nn.Linear) and fused[name] is not None:
                    linear.weight = nn.Parameter(fused[name][index], requires_grad=False)
