"""The `plan_memory` capability: a memory plan for a preset, a user's config.json or a loaded model.

The arithmetic lives in engine.planning.planner (pure functions over dataclasses), the decode
throughput of each method (bytes per token, tokens/s per card) in engine.planning.throughput;
where the architecture numbers come from lives in engine.planning.presets. This module reads a request's
parameters, picks the source and hands the numbers to the planner.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from int8wb.engine.errors import BadInput
from int8wb.engine.planning import layer_by_layer, presets, throughput
from int8wb.engine.planning.gpus import check_gpu, plan
from int8wb.engine.planning.planner import (
    PLAN_METHODS,
    Settings,
    WeightInventory,
    check_method,
    check_settings,
)
from int8wb.engine.vocabulary import FLOAT_BYTES, GIB, GPUS


def settings_from_params(params: dict[str, Any], default_dtype: str = "float16") -> Settings:
    """Settings from a request's parameters; absent ones take the defaults, wrong ones raise BadInput."""
    values: dict[str, Any] = {"dtype": params.get("dtype") or default_dtype}
    for key in ("context", "batch", "attention", "logits"):
        if params.get(key) is not None:
            values[key] = params[key]
    for key in ("outlier_fraction", "usable_fraction"):
        if params.get(key) is not None:
            values[key] = _number(key, params[key])
    if params.get("overhead_gib") is not None:
        values["overhead_bytes"] = int(_number("overhead_gib", params["overhead_gib"]) * GIB)
    return check_settings(Settings(**values))


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise BadInput(f"{key} must be a number, got {value!r}")
    return float(value)


def run(params: dict[str, Any], task) -> dict[str, Any]:
    """The `plan_memory` capability: a plan for a `config` path, a `preset` name or a loaded `model`.

    params: exactly one of config / preset / model (a torch model, or an object whose `.model` is
    one), and optionally context, batch, dtype (default float16; a model's own dtype for a model),
    outlier_fraction, usable_fraction, overhead_gib, attention, logits, methods, gpus, and
    outlier_counts ({Linear name: columns}, e.g. from a scan) to plan static llm-int8 exactly.
    """
    sources = [key for key in ("config", "preset", "model") if params.get(key) is not None]
    if len(sources) != 1:
        raise BadInput("give exactly one of config (a config.json path), preset (a name) or model")
    source = sources[0]
    task.progress(0.1, "reading the architecture")
    default_dtype, notes = "float16", []
    if source == "preset":
        name = str(params["preset"])
        arch, inventory, notes = presets.from_config_dict(presets.preset_config(name), name)
    elif source == "config":
        path = str(params["config"])
        arch, inventory, notes = presets.from_config_dict(presets.read_config(path), path)
    else:
        model = params["model"]
        model = getattr(model, "model", model) if not hasattr(model, "named_modules") else model
        if not hasattr(model, "named_modules") or not hasattr(model, "config"):
            raise BadInput(f"model must be a loaded transformers model, got {type(model).__name__}")
        arch, inventory = presets.from_model(model)
        default_dtype = _model_dtype(model)
    if params.get("outlier_counts") is not None:
        inventory = with_outlier_counts(inventory, params["outlier_counts"])
    settings = settings_from_params(params, default_dtype)
    methods = tuple(check_method(m) for m in params.get("methods") or PLAN_METHODS)
    gpus = params.get("gpus") or tuple(GPUS)
    for gpu in gpus:
        check_gpu(gpu)
    task.check_cancelled()
    task.progress(0.5, "planning")
    result = plan(arch, inventory, settings, methods, tuple(gpus))
    streamed = tuple(m for m in methods if m != "baseline")
    one_machine = layer_by_layer.layer_by_layer(arch, inventory, settings, streamed)
    result["layer_by_layer"] = {**one_machine, "line": layer_by_layer.format_line(one_machine)}
    throughput.add_decode(result, arch, inventory, settings, tuple(gpus))
    result["source"] = {"kind": source, "name": arch.name}
    result["notes"] = notes + result["notes"]
    task.progress(1.0, "planned")
    return result


def with_outlier_counts(inventory: WeightInventory, counts: dict[str, Any]) -> WeightInventory:
    """The inventory with the given Linears' static outlier column counts set (others keep theirs)."""
    if not isinstance(counts, dict):
        raise BadInput("outlier_counts must map Linear names to column counts")
    names = {shape.name for shape in inventory.linears}
    unknown = sorted(set(counts) - names)
    if unknown:
        raise BadInput(f"outlier_counts names Linears the model does not have: {', '.join(unknown[:5])}")
    for name, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise BadInput(f"outlier count of {name} must be a whole number >= 0, got {count!r}")
    linears = tuple(replace(s, outlier_cols=counts[s.name]) if s.name in counts else s for s in inventory.linears)
    return replace(inventory, linears=linears)


def _model_dtype(model: Any) -> str:
    for tensor in model.parameters():
        name = str(tensor.dtype).removeprefix("torch.")
        if name in FLOAT_BYTES:
            return name
    return "float16"
