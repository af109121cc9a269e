"""The bitsandbytes layout of a quantized Linear, declared once for export, streaming export and re-open.

Each Int8Linear field (engine.quant.schemes) is stored under one name:

| field          | stored as                 | where                     |
|----------------|---------------------------|---------------------------|
| weight_int8    | `name.weight` int8        | model.safetensors         |
| weight_scale   | `name.SCB` float32 (out,) | model.safetensors         |
| (constant 0)   | `name.weight_format` uint8| model.safetensors         |
| bias           | `name.bias`               | model.safetensors         |
| outlier_cols   | `name.outlier_cols`       | int8wb_extra.safetensors  |
| outlier_weight | `name.outlier_weight`     | int8wb_extra.safetensors  |

Our INT8 convention is bitsandbytes' own (`q = round(w * 127 / absmax)`, SCB = absmax),
so its `Linear8bitLt` reads the INT8 values without requantizing them. A per-tensor
scale is stored as every row's SCB (the same dequantized weights) and the sidecar's
per-layer record says "tensor", which is how re-opening gets the 0-d scale back.
Fields that bitsandbytes has no place for go to the sidecar tensors file.

`linear_tensors` gives the stored tensors of one quantized Linear by name (a caller
that writes one layer at a time uses it alone); run on an `Int8Linear.empty` layer it
gives the same names with meta tensors, which is how the streaming export plans its
shards before reading any weight. `rebuild_linear` is its inverse.
"""

from __future__ import annotations

from typing import Any

from engine.errors import ModelLoadError

ROW_FORMAT = 0  # bitsandbytes' weight_format code of a row-major INT8 weight
SCALE_SUFFIXES = (".SCB", ".weight_format")
"""Stored names that hold quantization scales and format codes, not weights of the model."""

# Int8Linear field -> stored suffix, for the fields that keep their values as they are.
_MAIN_FIELDS = {"weight_int8": "weight"}
_SIDECAR_FIELDS = {"outlier_cols": "outlier_cols", "outlier_weight": "outlier_weight"}


def linear_tensors(name: str, module) -> tuple[dict[str, Any], dict[str, Any]]:
    """(bitsandbytes tensors, sidecar tensors) of the Int8Linear `module` stored as `name`."""
    import torch

    main: dict[str, Any] = {}
    sidecar: dict[str, Any] = {}
    for field in module.scheme.tensor_data_names:
        tensor = getattr(module, field)
        if field in _MAIN_FIELDS:
            main[f"{name}.{_MAIN_FIELDS[field]}"] = tensor.contiguous()
        elif field == "weight_scale":
            main[f"{name}.SCB"] = _row_scale(tensor, module.out_features)
            main[f"{name}.weight_format"] = torch.tensor(ROW_FORMAT, dtype=torch.uint8, device=_format_device(tensor))
        else:
            sidecar[f"{name}.{_SIDECAR_FIELDS[field]}"] = tensor.contiguous()
    if module.bias is not None:
        main[f"{name}.bias"] = module.bias.contiguous()
    return main, sidecar


def _row_scale(scale, out_features: int):
    """SCB (out,) float32: a per-tensor scale repeated on every row."""
    rows = scale.float().reshape(1).expand(out_features) if scale.dim() == 0 else scale
    return rows.float().contiguous().clone()


def _format_device(tensor):
    """Meta for a layout-only layer, else the CPU (a 0-d code is written from there)."""
    return tensor.device if tensor.device.type == "meta" else "cpu"


def layer_record(name: str, module) -> dict[str, Any]:
    """The sidecar's facts about one quantized Linear (JSON)."""
    static = module.scheme.outliers == "static"
    return {
        "name": name,
        "method": module.method,
        "in_features": module.in_features,
        "out_features": module.out_features,
        "scale": module.scheme.weight_scale,
        "bias": module.bias is not None,
        "outlier_dims": module.outlier_cols.tolist() if static else [],
    }


def rebuild_linear(layer: dict[str, Any], remaining: dict[str, Any], threshold: float, dtype):
    """The Int8Linear of one sidecar `layer` record, popping its stored tensors from `remaining`."""
    from engine.quant.int8_linear import Int8Linear
    from engine.quant.schemes import scheme_of

    name = layer["name"]
    weight = remaining.pop(f"{name}.weight")
    scb = remaining.pop(f"{name}.SCB")
    weight_format = remaining.pop(f"{name}.weight_format")
    bias = remaining.pop(f"{name}.bias", None)
    if weight.dtype.itemsize != 1 or not weight.dtype.is_signed or int(weight_format) != ROW_FORMAT:
        raise ModelLoadError(f"{name}: expected an int8 row-major weight (weight_format 0)")
    scale = scb
    if layer["scale"] == "tensor":
        if not bool((scb == scb[0]).all()):
            raise ModelLoadError(f"{name}: the sidecar says one scale per tensor but the SCB rows differ")
        scale = scb[0].clone()  # 0-d
    fields = {
        field: remaining.pop(f"{name}.{suffix}")
        for field, suffix in _SIDECAR_FIELDS.items()
        if field in scheme_of(layer["method"]).tensor_data_names
    }
    return Int8Linear(layer["method"], weight, scale, bias, dtype, threshold, **fields)


def bitsandbytes_threshold(method: str, threshold: float) -> float:
    """The `llm_int8_threshold` of bitsandbytes' view of `method`: 0 turns its outlier decomposition off.

    Only the methods that quantize every activation column get 0. weight-only has no
    bitsandbytes counterpart (bitsandbytes always quantizes activations): its view is
    the dynamic llm-int8 of the same INT8 weights.
    """
    from engine.quant.schemes import scheme_of

    scheme = scheme_of(method)
    quantizes_every_column = scheme.activations != "float" and scheme.outliers == "none"
    return 0.0 if quantizes_every_column else float(threshold)


def bitsandbytes_config(method: str, threshold: float, skip_modules: list[str]):
    """The `quantization_config` transformers reads to load the export with bitsandbytes."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_8bit=True,
        llm_int8_threshold=bitsandbytes_threshold(method, threshold),
        llm_int8_skip_modules=list(skip_modules),
    )


def is_scale(key: str) -> bool:
    """Whether a stored name holds a scale or a format code rather than a weight of the model."""
    return key.endswith(SCALE_SUFFIXES)
