"""The stored tensors of a quantized Linear in each safetensors format, declared once.

Export (in memory and layer by layer) and re-open read this module. Which methods a format carries,
and why it refuses the others, is its declaration in engine.vocabulary (an `ExportFormat`); its
`layout` names which of the stored layouts below it writes (docs/architecture.md, "Adding a format").

bitsandbytes (the default; what transformers + bitsandbytes load, and the workbench re-opens):

| field          | stored as                 | where                     |
|----------------|---------------------------|---------------------------|
| weight_int8    | `name.weight` int8        | model.safetensors         |
| weight_scale   | `name.SCB` float32 (out,) | model.safetensors         |
| (constant 0)   | `name.weight_format` uint8| model.safetensors         |
| bias           | `name.bias`               | model.safetensors         |
| outlier_cols   | `name.outlier_cols`       | int8wb_extra.safetensors  |
| outlier_weight | `name.outlier_weight`     | int8wb_extra.safetensors  |
| super_weight_index, super_weight | `name.super_weight_index`, `name.super_weight` | int8wb_extra.safetensors |

Our INT8 convention is bitsandbytes' own (`q = round(w * 127 / absmax)`, SCB = absmax),
so its `Linear8bitLt` reads the INT8 values without requantizing them. A per-tensor
scale is stored as every row's SCB (the same dequantized weights) and the sidecar's
per-layer record says "tensor", which is how re-opening gets the 0-d scale back.
Fields that bitsandbytes has no place for go to the sidecar tensors file. A kept super weight
(engine.quant.int8_linear) is in `name.weight` clipped to what its row's scale reaches, which is what
transformers + bitsandbytes compute with; the workbench re-opens it whole from the sidecar. The serving
formats have no place for it and refuse it (`check_kept_super_weights`).

compressed-tensors (what vLLM and llm-compressor read): `name.weight` int8 (out, in)
and `name.weight_scale` float32 (out, 1) = SCB / 127 for W8A8 ("int-quantized"); for
W8A16 vLLM reads only "pack-quantized": the same INT8 values, offset by 128 and packed
four to an int32 along the row (`name.weight_packed` (out, ceil(in / 4)),
`name.weight_shape` int64 (2,)), with the same `name.weight_scale`.

`linear_tensors` gives the stored tensors of one quantized Linear by name (a caller
that writes one layer at a time uses it alone); run on an `Int8Linear.empty` layer it
gives the same names with meta tensors, which is how the layer-by-layer export plans its
shards before reading any weight. `rebuild_linear` is its inverse (bitsandbytes).
"""

from __future__ import annotations

from typing import Any

from int8wb.engine.errors import BadInput, ModelLoadError
from int8wb.engine.vocabulary import CHANNEL_SCALE, EXPORT_FORMATS, format_of, format_refusal

INT8_MAX = 127.0
HELD_PREFIX = "int8wb_held."
"""Sidecar names of the INT8 tensors of layers a format holds in floating point (engine.checkpoint.fallback)."""
ROW_FORMAT = 0  # bitsandbytes' weight_format code of a row-major INT8 weight
SCALE_SUFFIXES = (".SCB", ".weight_format", ".weight_scale", ".weight_shape")
"""Stored names that hold quantization scales and format codes, not weights of the model."""

# Int8Linear field -> stored suffix, for the fields that keep their values as they are.
_MAIN_FIELDS = {"weight_int8": "weight"}
_SIDECAR_FIELDS = {"outlier_cols": "outlier_cols", "outlier_weight": "outlier_weight"}


INT_QUANTIZED, PACK_QUANTIZED = "int-quantized", "pack-quantized"  # compressed-tensors' format names


def check_format(fmt: Any, method: str) -> str:
    """The export format (the default if none), if it carries `method`; else a BadInput that says why and
    which format to use."""
    declared = format_of(fmt or EXPORT_FORMATS[0])
    refusal = format_refusal(declared, method)
    if refusal:
        raise BadInput(refusal)
    return declared.name


def check_kept_super_weights(fmt: str, model) -> None:
    """Refuse a serving format for a model that keeps super weights in floating point: it has no place for them."""
    from int8wb.engine.quant.int8_linear import Int8Linear

    declared = format_of(fmt)
    if declared.reopens:
        return
    kept = [n for n, m in model.named_modules() if isinstance(m, Int8Linear) and m.super_weight_index is not None]
    if kept:
        raise BadInput(
            f"{fmt} cannot carry the super weight kept in floating point in {', '.join(kept)}: "
            f"{declared.no_float_weight or 'it has no place for a single floating-point weight'}. Export with "
            f"--format {' or '.join(f for f in EXPORT_FORMATS if format_of(f).reopens)} (its sidecar keeps it), or "
            "quantize without keeping super weights"
        )


def linear_tensors(name: str, module, fmt: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(main tensors, sidecar tensors) of the Int8Linear `module` stored as `name` in format `fmt` (default:
    the first)."""
    if format_of(fmt or EXPORT_FORMATS[0]).layout == CHANNEL_SCALE:
        return _compressed_tensors(name, module), {}
    return _bitsandbytes_tensors(name, module)


def _bitsandbytes_tensors(name: str, module) -> tuple[dict[str, Any], dict[str, Any]]:
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
    if module.super_weight_index is not None:
        sidecar[f"{name}.super_weight_index"] = module.super_weight_index.contiguous()
        sidecar[f"{name}.super_weight"] = module.super_weight.contiguous()
    return main, sidecar


def _compressed_tensors(name: str, module) -> dict[str, Any]:
    """compressed-tensors' tensors of a Linear with one scale per row (see the module docstring)."""
    import torch

    step = module.weight_scale.float().reshape(-1, 1) / INT8_MAX  # (out, 1): q * step is the weight
    if module.scheme.activations == "float":
        tensors = {
            f"{name}.weight_packed": _pack_int32(module.weight_int8),
            f"{name}.weight_shape": torch.tensor(
                [module.out_features, module.in_features], dtype=torch.int64, device=_format_device(step)
            ),
        }
    else:
        tensors = {f"{name}.weight": module.weight_int8.contiguous()}
    tensors[f"{name}.weight_scale"] = step.contiguous()
    if module.bias is not None:
        tensors[f"{name}.bias"] = module.bias.contiguous()
    return tensors


def _pack_int32(weight_int8):
    """int8 (out, in) -> int32 (out, ceil(in / 4)): q + 128 as bytes, four to a word, little-endian."""
    import torch

    rows, cols = weight_int8.shape
    padded = torch.zeros((rows, -(-cols // 4) * 4), dtype=torch.int16, device=weight_int8.device)
    padded[:, :cols] = weight_int8
    return (padded + 128).to(torch.uint8).view(torch.int32).contiguous()


def _row_scale(scale, out_features: int):
    """SCB (out,) float32: a per-tensor scale repeated on every row."""
    rows = scale.float().reshape(1).expand(out_features) if scale.dim() == 0 else scale
    return rows.float().contiguous().clone()


def _format_device(tensor):
    """Meta for a layout-only layer, else the CPU (a 0-d code is written from there)."""
    return tensor.device if tensor.device.type == "meta" else "cpu"


def layer_record(name: str, module, held_in_float: bool = False) -> dict[str, Any]:
    """The sidecar's facts about one quantized Linear (JSON); `held_in_float`: its INT8 is under HELD_PREFIX."""
    static = module.scheme.outliers == "static"
    return {
        "name": name,
        "method": module.method,
        "in_features": module.in_features,
        "out_features": module.out_features,
        "scale": module.scheme.weight_scale,
        "bias": module.bias is not None,
        "held_in_float": held_in_float,
        "outlier_dims": module.outlier_cols.tolist() if static else [],
        "super_weights": [] if module.super_weight_index is None else module.super_weight_index.tolist(),
    }


def rebuild_linear(layer: dict[str, Any], remaining: dict[str, Any], threshold: float, dtype):
    """The Int8Linear of one sidecar `layer` record, popping its stored tensors from `remaining`."""
    from int8wb.engine.quant.int8_linear import Int8Linear
    from int8wb.engine.quant.schemes import scheme_of

    name = layer["name"]
    stored = f"{HELD_PREFIX}{name}" if layer.get("held_in_float") else name
    weight = remaining.pop(f"{stored}.weight")
    scb = remaining.pop(f"{stored}.SCB")
    weight_format = remaining.pop(f"{stored}.weight_format")
    bias = remaining.pop(f"{stored}.bias", None)
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
    if layer.get("super_weights"):
        fields["super_weight_index"] = remaining.pop(f"{name}.super_weight_index")
        fields["super_weight"] = remaining.pop(f"{name}.super_weight")
    return Int8Linear(layer["method"], weight, scale, bias, dtype, threshold, **fields)


def bitsandbytes_threshold(method: str, threshold: float) -> float:
    """The `llm_int8_threshold` of bitsandbytes' view of `method`: 0 turns its outlier decomposition off.

    Only the methods that quantize every activation column get 0. weight-only has no
    bitsandbytes counterpart (bitsandbytes always quantizes activations): its view is
    the dynamic llm-int8 of the same INT8 weights.
    """
    from int8wb.engine.quant.schemes import scheme_of

    scheme = scheme_of(method)
    quantizes_every_column = scheme.activations != "float" and scheme.outliers == "none"
    return 0.0 if quantizes_every_column else float(threshold)


def quantization_config(fmt: str, method: str, threshold: float, skip_modules: list[str]):
    """The `quantization_config` of config.json: how transformers (or vLLM) loads the export."""
    if format_of(fmt).layout == CHANNEL_SCALE:
        return compressed_tensors_config(method, skip_modules)
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_8bit=True,
        llm_int8_threshold=bitsandbytes_threshold(method, threshold),
        llm_int8_skip_modules=list(skip_modules),
    )


def compressed_tensors_config(method: str, ignore: list[str]) -> dict[str, Any]:
    """compressed-tensors' config: int8 symmetric per-channel weights; dynamic per-token int8 inputs for W8A8."""
    from int8wb.engine.quant.schemes import scheme_of

    weight_only = scheme_of(method).activations == "float"
    int8 = {"num_bits": 8, "type": "int", "symmetric": True, "dynamic": False}
    activations = None if weight_only else {**int8, "strategy": "token", "dynamic": True}
    fmt = PACK_QUANTIZED if weight_only else INT_QUANTIZED
    return {
        "quant_method": "compressed-tensors",
        "format": fmt,
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {**int8, "strategy": "channel"},
                "input_activations": activations,
                "output_activations": None,
                "format": fmt,
            }
        },
        "ignore": list(ignore),
        "kv_cache_scheme": None,
    }


def is_scale(key: str) -> bool:
    """Whether a stored name holds a scale or a format code rather than a weight of the model."""
    return key.endswith(SCALE_SUFFIXES)
