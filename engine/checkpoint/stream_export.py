"""Quantize and export a model that need not fit in memory, one output shard at a time.

DESIGN.md, "Scale": the weights are read from memory-mapped safetensors and each
quantized tensor is written as it is made, so peak memory is one output shard
(bounded by `max_shard_size`) plus the file handles, not the whole model. The
result is the same export as `engine.checkpoint.export` writes from a model quantized in
memory (same tensor names, bits, config.json, metadata and sidecar), for the
methods that need no calibration scan: absmax-tensor, vectorwise,
llm-int8-dynamic and weight-only. Static llm-int8 takes its outlier columns from
a scan of the loaded model, so it stays with the in-memory export.

Which tensors are quantized is decided as the in-memory path decides it
(`engine.model.layers.linear_layers`: every nn.Linear but the output head), on a
skeleton of the model built on the meta device from config.json: no weight is
read to learn the layout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from engine.checkpoint import contents, export
from engine.checkpoint.layout import BITSANDBYTES, check_format, layer_record, linear_tensors
from engine.errors import BadInput, ModelLoadError
from engine.quant.schemes import SCHEMES
from engine.vocabulary import FORMAT_METHODS

STREAMING_METHODS = tuple(
    method for method, scheme in SCHEMES.items() if not scheme.needs_scan and method in FORMAT_METHODS[BITSANDBYTES]
)
"""The methods that need no scan, in the default format (a serving format carries fewer)."""
# Peak memory is about one output shard: transformers' 50GB default would make a 7B model one shard.
DEFAULT_MAX_SHARD_SIZE = "2GB"


def run(params: dict[str, Any], task) -> export.ExportResult:
    """Export `params["model"]` (a Hugging Face directory with safetensors) quantized with `params["method"]`.

    params: model (directory), method, threshold (6.0), out, overwrite (False),
    max_shard_size ("2GB": the memory bound), dtype ("auto": float32, the in-memory path's dtype on the CPU),
    format ("bitsandbytes" or "compressed-tensors"; GGUF is written from a loaded model).
    """
    import torch

    from engine.model.loaded import pick_dtype
    from engine.quant.quantize import check_methods
    from engine.vocabulary import check_threshold

    (method,) = check_methods([params.get("method")])
    fmt = check_format(params.get("format"), method)
    if fmt == export.GGUF_Q8_0:
        raise BadInput("the GGUF export is written from a loaded model: export without --streaming")
    if method not in STREAMING_METHODS:
        raise BadInput(
            f"{method} takes its {'smoothing factors' if SCHEMES[method].smoothed else 'outlier dimensions'} "
            "from a calibration scan of the loaded model, "
            "so it cannot be streamed: use the in-memory export (without --streaming), or a method "
            f"that needs no scan: {', '.join(STREAMING_METHODS)}"
        )
    threshold = check_threshold(params.get("threshold", 6.0))
    source = _check_source(params.get("model"))
    overwrite = bool(params.get("overwrite", False))
    target = export.check_target(params.get("out"), overwrite, [str(source)])
    max_shard_size = export.parse_size(params.get("max_shard_size") or DEFAULT_MAX_SHARD_SIZE)
    dtype = pick_dtype("cpu", params.get("dtype"))

    skeleton = _skeleton(source, dtype)
    checkpoint = _checkpoint_index(source)
    plan = _plan(skeleton, checkpoint, method, dtype, fmt)
    specs = plan["specs"]
    needed = sum(t.numel() * t.element_size() for t in specs.values())

    settings = contents.base_settings(method, threshold, [])
    metadata = contents.export_metadata(method, threshold, settings)
    linears = {layer["name"] for layer in plan["layers"]}
    skipped = [
        name for name, module in skeleton.named_modules() if isinstance(module, torch.nn.Linear) and name not in linears
    ]
    tokenizer, generation_config = _side_files(source)

    def produce(names: list[str]) -> dict[str, Any]:
        return _produce(names, plan["recipes"], checkpoint, source, method, dtype, fmt)

    def write(staging: Path) -> None:
        with torch.no_grad():
            files = export.write_weights(
                staging, export.plan_shards(specs, max_shard_size), produce, metadata, task.slice(0.0, 0.9)
            )
        contents.write_configs(staging, skeleton.config, generation_config, tokenizer, method, threshold, skipped, fmt)
        if fmt != BITSANDBYTES:
            record = contents.serving_record(fmt, method, threshold, settings)
            export.write_json(staging / export.SERVING_RECORD, record)
            return
        export.write_json(
            staging / export.SIDECAR_NAME,
            contents.manifest(staging, method, threshold, settings, plan["layers"], files, specs),
        )

    export.write_staged(target, needed, write, task, overwrite)
    return export.result(target, method, threshold, skeleton, specs, {}, fmt)


def _check_source(model: Any) -> Path:
    """The model directory; it must hold safetensors weights and not be an export already."""
    if not model or not isinstance(model, (str, os.PathLike)):
        raise BadInput("the streaming export needs a model directory (model) with safetensors weights")
    path = Path(os.path.expanduser(str(model))).resolve()
    if not path.is_dir():
        raise BadInput(
            f"the streaming export reads a model directory; {path} is not one (a GGUF file or hub id "
            "goes through the in-memory export)"
        )
    if (path / export.SIDECAR_NAME).is_file():
        raise BadInput(f"{path} is already an export of this workbench: export it again without --streaming")
    if not (path / "config.json").is_file():
        raise BadInput(f"{path} has no config.json: it is not a Hugging Face model directory")
    if not list(path.glob("*.safetensors")):
        raise BadInput(
            f"{path} has no *.safetensors weights: the streaming export reads safetensors only; "
            "use the in-memory export"
        )
    return path


def _skeleton(source: Path, dtype):
    """The model built on the meta device from config.json: names, shapes and ties, no weights."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(source)
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except Exception as exc:  # transformers raises many types; the message is what the user needs
        raise ModelLoadError(
            f"could not build the model of {source} from its config.json: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
        ) from exc
    return model.eval()


def _checkpoint_index(source: Path) -> dict[str, str]:
    """Tensor name -> safetensors file name, from the index of a sharded checkpoint or the file headers."""
    from safetensors import safe_open

    index = source / export.WEIGHTS_INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"{index} is not a readable safetensors index: {exc}") from exc
        return dict(weight_map)
    files: dict[str, str] = {}
    for path in sorted(source.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:  # reads the header only
            files.update({key: path.name for key in handle.keys()})
    return files


def _plan(skeleton, checkpoint: dict[str, str], method: str, dtype, fmt: str) -> dict[str, Any]:
    """Every output tensor as a meta tensor (for sharding, the manifest and sizes) and the recipe that makes it.

    Each quantized Linear's names, dtypes and shapes come from engine.checkpoint.layout applied to an
    empty layer of the method; the order is engine.checkpoint.contents.split_tensors' order (quantized
    Linears, then the other state-dict tensors), so the shards come out as the in-memory export's.
    """
    from engine.model.layers import linear_layers
    from engine.quant.int8_linear import Int8Linear

    specs: dict[str, Any] = {}
    recipes: dict[str, tuple[str, str]] = {}
    layers: list[dict[str, Any]] = []
    prefixes = set()
    for name, linear in linear_layers(skeleton):
        prefixes.add(name)
        _require(checkpoint, f"{name}.weight")
        if linear.bias is not None:
            _require(checkpoint, f"{name}.bias")
        out_features, in_features = linear.weight.shape
        empty = Int8Linear.empty(method, out_features, in_features, linear.bias is not None, dtype)
        stored, _ = linear_tensors(name, empty, fmt)
        specs.update(stored)
        recipes.update({key: ("quantize", name) for key in stored})
        layers.append(layer_record(name, empty))
    for key, tensor in contents.unquantized_tensors(skeleton, prefixes).items():
        _require(checkpoint, key)
        specs[key] = tensor.to(dtype) if tensor.dtype.is_floating_point else tensor
        recipes[key] = ("copy", key)
    return {"specs": specs, "recipes": recipes, "layers": layers}


def _require(checkpoint: dict[str, str], key: str) -> None:
    if key not in checkpoint:
        raise BadInput(
            f"the checkpoint has no tensor {key!r} where the model built from its config.json expects "
            "one (renamed or legacy names): use the in-memory export, which transformers' loader maps"
        )


def _produce(names, recipes, checkpoint, source: Path, method: str, dtype, fmt: str) -> dict[str, Any]:
    """The tensors of one output shard.

    Each source tensor is read under its own short-lived mapping of its file:
    pages of a memory map count as resident while it is open, so a mapping kept
    across a shard would hold about four times the shard's INT8 bytes of source
    float weights.
    """
    shard: dict[str, Any] = {}
    quantized: dict[str, dict[str, Any]] = {}  # layer -> its stored tensors, for this shard only
    for name in names:
        kind, key = recipes[name]
        if kind == "copy":
            tensor = _read(source, checkpoint, key)
            shard[name] = (tensor.to(dtype) if tensor.dtype.is_floating_point else tensor).contiguous()
            continue
        if key not in quantized:
            has_bias = f"{key}.bias" in recipes
            quantized[key] = _quantized_linear(key, has_bias, checkpoint, source, method, dtype, fmt)
        shard[name] = quantized[key][name]
    return shard


def _read(source: Path, checkpoint: dict[str, str], key: str):
    """One tensor, copied out of its file's memory map, which is closed again before returning."""
    from safetensors import safe_open

    with safe_open(str(source / checkpoint[key]), framework="pt") as handle:
        return handle.get_tensor(key).clone()


def _quantized_linear(name: str, has_bias: bool, checkpoint, source: Path, method: str, dtype, fmt) -> dict[str, Any]:
    """The stored tensors of one Linear, quantized from its source weight as Int8Linear.from_linear does."""
    from engine.quant.int8_linear import Int8Linear
    from engine.quant.quantize import check_finite

    weight = _read(source, checkpoint, f"{name}.weight").to(dtype)
    check_finite(name, weight)
    bias = _read(source, checkpoint, f"{name}.bias").to(dtype) if has_bias else None
    stored, _ = linear_tensors(name, Int8Linear.from_weight(weight, bias, method), fmt)
    return stored


def _side_files(source: Path):
    """(tokenizer, generation config) of the source directory, as the in-memory load reads them."""
    from transformers import AutoTokenizer, GenerationConfig

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # the in-memory load fails the same way on a directory without a tokenizer
        raise ModelLoadError(f"could not load the tokenizer of {source}: {exc}") from exc
    generation_config = None
    if (source / "generation_config.json").is_file():
        generation_config = GenerationConfig.from_pretrained(source)
    return tokenizer, generation_config
