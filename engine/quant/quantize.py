"""Quantize a loaded model with one method into real INT8 storage.

The quantized model shares every unchanged tensor (embeddings, norms, the LM
head) with the floating-point model it came from, so keeping the baseline and
every quantized variant side by side costs the INT8 weights and little more.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from int8wb.engine.errors import BadInput
from int8wb.engine.model.layers import features, linear_layers
from int8wb.engine.quant import coverage, skip_list, smoothing
from int8wb.engine.quant.int8_linear import Int8Linear
from int8wb.engine.quant.schemes import scheme_of
from int8wb.engine.vocabulary import DEFAULT_ALPHA, DEFAULT_THRESHOLD, METHODS, check_alpha, check_threshold, method_of

SUPER_WEIGHT_KEPT = (
    "a super weight (engine.measure.super_weight), kept in floating point on request (keep_super_weights)"
)


@dataclass
class QuantizedModel:
    """One method's quantized copy of the model, and what it cost."""

    method: str
    threshold: float
    model: Any  # the model with Int8Linear modules in place of nn.Linear; None when run layer by layer
    outlier_dims: dict[str, np.ndarray] = field(default_factory=dict)  # static llm-int8 only
    skipped: list[str] = field(default_factory=list)  # Linears left in floating point
    smoothing: dict[str, Any] | None = None  # smoothquant: alpha, how many Linears smoothed, which not
    sizes: dict[str, int] | None = None  # tensor_bytes of the quantized model, measured layer by layer
    alpha: float | None = None  # smoothquant's strength
    activation_absmax: dict[str, np.ndarray] = field(default_factory=dict)  # smoothquant: per Linear, from the scan
    unfit: list[str] = field(default_factory=list)  # of `skipped`, those the method cannot hold (q8_0's blocks)
    coverage: Any = None  # engine.quant.coverage.Coverage, measured layer by layer when `model` is None
    super_weights: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # kept in float: Linear -> (row, col)

    def summary(self) -> dict[str, Any]:
        """JSON-able facts for the results table, with the share of the decoder in INT8 (engine.quant.coverage)."""
        sizes = self.sizes if self.sizes is not None else tensor_bytes(self.model)
        held = self.coverage if self.coverage is not None else coverage.measure(self.model, unfit=self.unfit)
        payload = held.to_payload(self.method)
        payload["kept_float"] = payload["kept_float"] + [
            {"modules": f"{name}.weight[{row}, {col}]", "count": 1, "weights": 1, "why": SUPER_WEIGHT_KEPT}
            for name, kept in self.super_weights.items()
            for row, col in kept
        ]
        return {
            **payload,
            "method": self.method,
            "threshold": self.threshold,
            "int8_bytes": sizes["int8"],
            "float_bytes": sizes["float"],
            "total_bytes": sizes["int8"] + sizes["float"] + sizes["other"],
            "outlier_dims": int(sum(len(d) for d in self.outlier_dims.values())),
            "skipped_modules": list(self.skipped),
            **({"smoothing": self.smoothing} if self.smoothing else {}),
            "kept_super_weights": [
                {"module": name, "row": row, "col": col}
                for name, kept in self.super_weights.items()
                for row, col in kept
            ],
        }


def smoothing_summary(report: dict[str, Any]) -> dict[str, Any]:
    """What the results table says about smoothing: alpha, how many Linears, which stay unsmoothed."""
    return {"alpha": report["alpha"], "smoothed": len(report["smoothed"]), "unsmoothed": list(report["unsmoothed"])}


def check_methods(methods: Any) -> list[str]:
    """Validate a list of method names (a comma-separated string is accepted)."""
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    if not isinstance(methods, (list, tuple)) or not methods:
        raise BadInput(f"methods must be a non-empty list of names from: {', '.join(METHODS)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise BadInput(f"unknown method(s) {', '.join(map(str, unknown))}; choose from {', '.join(METHODS)}")
    return list(methods)


def run(params: dict[str, Any], task, loaded, scan=None) -> QuantizedModel:
    """Quantize `loaded.model` with `params["method"]` at `params["threshold"]` (default 6.0).

    Static `llm-int8` takes its outlier columns from `scan` (the dimensions whose
    calibration abs-max exceeds the threshold) and `smoothquant` its per-channel
    abs-max (smoothed with `params["alpha"]`, default 0.5, engine.quant.smoothing);
    the other methods need no scan. `params["skip_modules"]`: Linears to
    leave in floating point (engine.quant.skip_list); q8_0 leaves those whose input is not whole
    blocks of 32 there too. `params["super_weights"]` ([{"module", "row", "col"}]): weights every method
    keeps in floating point (engine.measure.super_weight, engine.quant.int8_linear).
    """
    recipe = recipe_from_params(params, loaded.model, scan)
    model = share_tensors_copy(loaded.model)
    smoothed = None
    if recipe.alpha is not None:
        smoothed = smoothing_summary(smoothing.smooth(model, scan, recipe.alpha))
    skipped = quantize_linears(model, "", recipe, task)
    used_dims = {n: d for n, d in recipe.outlier_dims.items() if n not in skipped}
    kept = {n: k for n, k in recipe.super_weights.items() if n not in skipped}
    return QuantizedModel(
        recipe.method, recipe.threshold, model, used_dims, skipped, smoothed, unfit=recipe.unfit, super_weights=kept
    )


def recipe_from_params(params: dict[str, Any], model, scan=None, scan_in_pass: bool = False) -> QuantizedModel:
    """What to quantize `model` with, checked before any weight is touched: a QuantizedModel without its model.

    `skipped` holds the Linears left in floating point (the resolved skip list; q8_0's misfits). Static
    `llm-int8` and `smoothquant` take their numbers from `scan`, or, with `scan_in_pass`, from the scan
    of the same layer-by-layer pass, which fills them in layer by layer. A recipe that would store none
    of the decoder's matrix weights as INT8 is refused here (engine.quant.coverage), before any work.
    """
    (method,) = check_methods([params.get("method")])
    scheme = scheme_of(method)
    threshold = check_threshold(params.get("threshold", DEFAULT_THRESHOLD))
    alpha = check_alpha(params.get("alpha", DEFAULT_ALPHA)) if scheme.smoothed else None
    if scheme.needs_scan and scan is None and not scan_in_pass:
        raise BadInput(method_of(method).scan_need)
    outlier_dims = scan.outlier_dims(threshold) if scheme.outliers == "static" and scan is not None else {}
    absmax = scan.absmax_of() if scheme.smoothed and scan is not None else {}
    chosen = set(skip_list.resolve(model, params.get("skip_modules")))
    targets = linear_layers(model)
    unfit = [n for n, linear in targets if n not in chosen and not scheme.fits(features(linear)[0])]
    skipped = [n for n, _ in targets if n in chosen or n in unfit]
    planned = [n for n, _ in targets if n not in skipped]
    coverage.require_int8(coverage.measure(model, int8_names=planned, unfit=unfit), method)
    super_weights = kept_super_weights(params.get("super_weights"), model)
    return QuantizedModel(
        method,
        threshold,
        None,
        outlier_dims,
        skipped,
        alpha=alpha,
        activation_absmax=absmax,
        unfit=unfit,
        super_weights=super_weights,
    )


def quantize_linears(root, prefix: str, recipe: QuantizedModel, task) -> list[str]:
    """Replace the quantizable Linears of `root` (a model, or a decoder layer called `prefix`) with Int8Linears.

    Names are full module paths (`prefix` + the name inside `root`), as the scan and the skip list
    use them. Returns the names of `root`'s Linears left in floating point.
    """
    import torch

    scheme = scheme_of(recipe.method)
    targets = linear_layers(root)
    skipped = []
    with torch.no_grad():
        for i, (local, linear) in enumerate(targets):
            task.check_cancelled()
            name = f"{prefix}.{local}" if prefix else local
            if name in recipe.skipped:
                skipped.append(name)
                continue
            check_finite(name, linear.weight)
            cols = None
            if scheme.outliers == "static":
                cols = torch.as_tensor(recipe.outlier_dims.get(name, np.empty(0, dtype=np.int64)), dtype=torch.long)
            kept = recipe.super_weights.get(name)
            replace_module(root, local, Int8Linear.from_linear(linear, recipe.method, recipe.threshold, cols, kept))
            task.progress((i + 1) / len(targets), f"quantized {name}")
    return skipped


def quantize_block(block, prefix: str, recipe: QuantizedModel, task):
    """A quantized copy of one decoder layer (sharing its unchanged tensors): (copy, names left in float,
    {smoothed Linear: its source} for smoothquant)."""
    copy_of_block = share_tensors_copy(block)
    smoothed = {}
    if recipe.alpha is not None:
        found = smoothing.block_groups(block, prefix)
        smoothed, _ = smoothing.smooth_groups(copy_of_block, prefix, found, recipe.activation_absmax, recipe.alpha)
    return copy_of_block, quantize_linears(copy_of_block, prefix, recipe, task), smoothed


def kept_super_weights(value: Any, model) -> dict[str, list[tuple[int, int]]]:
    """The `super_weights` of a quantize request ([{"module", "row", "col"}, ...], as engine.measure.super_weight
    finds them) as {Linear: [(row, col)]}, each checked against the model's quantizable Linears and their shapes."""
    if value is None:
        return {}
    if not isinstance(value, list):
        raise BadInput(f"super_weights must be a list of {{module, row, col}}, got {type(value).__name__}")
    linears = dict(linear_layers(model))
    kept: dict[str, list[tuple[int, int]]] = {}
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("module"), str):
            raise BadInput(f"each super weight is {{module, row, col}}, got {entry!r}")
        name, row, col = entry["module"], entry.get("row"), entry.get("col")
        if name not in linears:
            raise BadInput(f"super weight: {name!r} is not a quantizable Linear of this model")
        in_features, out_features = features(linears[name])
        for axis, index, size in (("row", row, out_features), ("col", col, in_features)):
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < size:
                raise BadInput(f"super weight of {name}: {axis} must be an integer in [0, {size}), got {index!r}")
        if (row, col) not in kept.setdefault(name, []):
            kept[name].append((row, col))
    return kept


def tensor_bytes(model) -> dict[str, int]:
    """Bytes of the model's own tensors (each shared tensor counted once): int8, float, other.

    A tensor on the meta device (a skeleton whose weights stay on disk) counts for what it will hold.
    """
    return tensor_bytes_of(list(model.parameters()) + list(model.buffers()))


def tensor_bytes_of(tensors) -> dict[str, int]:
    """tensor_bytes of a list of tensors."""
    sizes = {"int8": 0, "float": 0, "other": 0}
    seen: set[int] = set()
    for tensor in tensors:
        key = id(tensor) if tensor.device.type == "meta" else tensor.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        nbytes = tensor.numel() * tensor.element_size()
        if tensor.dtype.is_floating_point:
            sizes["float"] += nbytes
        elif tensor.dtype.itemsize == 1 and tensor.dtype.is_signed:
            sizes["int8"] += nbytes
        else:
            sizes["other"] += nbytes
    return sizes


def share_tensors_copy(model):
    """A structural copy of `model` whose parameters and buffers are the original's tensors.

    Nothing in the copy is modified in place: Linears are replaced whole, so the
    original floating-point model stays intact.
    """
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


def replace_module(model, name: str, module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def check_finite(name: str, weight) -> None:
    import torch

    if not torch.isfinite(weight).all():
        raise BadInput(f"the weight of {name} contains NaN or infinity: this checkpoint cannot be quantized")
