"""What an export in the bitsandbytes layout holds: its tensors, its configs, its sidecar and where the bytes go.

The per-Linear layout is engine.checkpoint.layout's; this module applies it to a
whole model (every quantized Linear, then every other tensor as it was) and
writes the files around the tensors: config.json with bitsandbytes'
`quantization_config`, the generation config and tokenizer, and the sidecar
manifest `int8wb_export.json` that re-opening (engine.checkpoint.reopen) checks
every tensor against.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from int8wb.engine.checkpoint import fallback
from int8wb.engine.checkpoint.layout import (
    HELD_PREFIX,
    bitsandbytes_threshold,
    is_scale,
    layer_record,
    linear_tensors,
    quantization_config,
)
from int8wb.engine.vocabulary import EXPORT_FORMATS, format_of

EXPORT_FORMAT = "int8wb-export"
EXPORT_FORMAT_VERSION = 1
TOOL = "int8-workbench"


def split_tensors(model, fmt: str = EXPORT_FORMATS[0]) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """(main tensors, sidecar tensors, per-layer facts) of a model holding Int8Linear modules, in format `fmt`.

    What `fmt` cannot hold goes to the main file in floating point (engine.checkpoint.fallback); in the
    bitsandbytes layout its INT8 tensors go to the sidecar under HELD_PREFIX, for re-opening.
    """
    from int8wb.engine.quant.int8_linear import Int8Linear

    main: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    layers: list[dict[str, Any]] = []
    quantized_prefixes = set()
    unheld = fallback.unheld_modules(model, fmt)
    for name, module in model.named_modules():
        if not isinstance(module, Int8Linear):
            continue
        quantized_prefixes.add(name)
        stored, sidecar = linear_tensors(name, module, fmt)
        held = fallback.is_held(name, unheld)
        if not held:
            main.update(stored)
        elif format_of(fmt).reopens:  # the sidecar keeps the INT8 the workbench re-opens
            extra.update({f"{HELD_PREFIX}{key}": tensor for key, tensor in stored.items()})
        extra.update(sidecar)
        layers.append(layer_record(name, module, held))
    main.update(fallback.float_tensors(unheld))
    main.update(unquantized_tensors(model, quantized_prefixes, unheld))
    return main, extra, layers


def unquantized_tensors(model, quantized_prefixes: set[str], unheld=()) -> dict[str, Any]:
    """Every state-dict tensor outside the quantized Linears and the `unheld` modules, each shared tensor
    once (as safetensors wants)."""
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    tensors: dict[str, Any] = {}
    seen: set[int] = set()
    for key, tensor in model.state_dict().items():
        if key.rpartition(".")[0] in quantized_prefixes or key in tied or fallback.is_held(key, unheld):
            continue
        if tensor.device.type != "meta":  # a meta tensor (a layout being planned) has no storage to share
            if tensor.data_ptr() in seen:  # a tie the model did not declare: one copy
                continue
            seen.add(tensor.data_ptr())
        tensors[key] = tensor.contiguous()
    return tensors


def skipped_linears(model, fmt: str = EXPORT_FORMATS[0]) -> list[str]:
    """Names of the modules the format's loader must leave in floating point (its skip or ignore list).

    The Linears (and Conv1Ds) the model kept in floating point, routers of any type, and the
    modules `fmt` cannot hold (engine.checkpoint.fallback).
    """
    from int8wb.engine.model.layers import is_linear, is_router

    unheld = fallback.unheld_modules(model, fmt)
    kept = [
        name
        for name, module in model.named_modules()
        if (is_linear(module) or is_router(model, name)) and not fallback.is_held(name, unheld)
    ]
    return kept + list(unheld)


def base_settings(method: str, threshold: float, skip_modules: list[str]) -> dict[str, Any]:
    """The sidecar's settings of a method that used no scan."""
    return {"method": method, "threshold": threshold, "skip_modules": list(skip_modules), "scan": None}


def quantized_settings(quantized, scan) -> dict[str, Any]:
    """The sidecar's settings of an in-memory quantized model, with the scan when the method used one."""
    from int8wb.engine.quant.schemes import scheme_of

    settings = base_settings(quantized.method, quantized.threshold, quantized.skipped)
    if quantized.smoothing:
        settings["smoothing"] = quantized.smoothing
    if scheme_of(quantized.method).needs_scan and scan is not None:
        s = scan.settings
        settings["scan"] = {
            "tokens": s.tokens,
            "seq_len": s.seq_len,
            "batch_size": s.batch_size,
            "threshold": s.threshold,
            "corpus": scan.corpus_source,
            "n_tokens": scan.n_tokens,
        }
    return settings


def serving_record(fmt: str, method: str, threshold: float, settings: dict[str, Any]) -> dict[str, Any]:
    """`int8wb_serving.json` of a serving format: what was exported, by what; nothing re-opens it."""
    return {
        "format": fmt,
        "tool": TOOL,
        "version": tool_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "method": method,
        "threshold": threshold,
        "settings": settings,
    }


def tool_version() -> str:
    from int8wb.engine.installation import __version__

    return __version__


def export_metadata(method: str, threshold: float, settings: dict[str, Any]) -> dict[str, str]:
    """The safetensors metadata every file of an export carries."""
    return {
        "format": "pt",
        "int8wb.tool": TOOL,
        "int8wb.version": tool_version(),
        "int8wb.method": method,
        "int8wb.threshold": repr(threshold),
        "int8wb.settings": json.dumps(settings, sort_keys=True),
    }


def write_configs(
    staging: Path,
    config,
    generation_config,
    tokenizer,
    method: str,
    threshold: float,
    skip_modules: list[str],
    fmt: str = EXPORT_FORMATS[0],
) -> None:
    """config.json with the format's quantization_config; generation config and tokenizer files."""
    import copy

    config = copy.deepcopy(config)
    config.quantization_config = quantization_config(fmt, method, threshold, skip_modules)
    config.save_pretrained(staging)
    if generation_config is not None:
        generation_config.save_pretrained(staging)
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)


def generation_config_of(loaded, model):
    """The model's generation config when its source had one (transformers makes one up otherwise)."""
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and _source_has(loaded, "generation_config.json"):
        return generation_config
    return None


def _source_has(loaded, filename: str) -> bool:
    """Whether the directory the model was read from has `filename` (hub models: assume it does)."""
    source = Path(str(getattr(loaded.model.config, "name_or_path", "") or ""))
    if source.is_dir():
        return (source / filename).is_file()
    return getattr(loaded, "kind", "") == "hub"


def manifest(staging, method, threshold, settings, layers, files, tensors) -> dict[str, Any]:
    """The sidecar: `tensors` maps every written name to a tensor, or a meta tensor of its dtype and shape."""
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "tool": TOOL,
        "version": tool_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "method": method,
        "threshold": threshold,
        "bitsandbytes_threshold": bitsandbytes_threshold(method, threshold),
        "settings": settings,
        "layers": layers,
        "files": {
            filename: {
                "bytes": (staging / filename).stat().st_size,
                "tensors": {
                    n: {"dtype": str(tensors[n].dtype).removeprefix("torch."), "shape": list(tensors[n].shape)}
                    for n in names
                },
            }
            for filename, names in files.items()
        },
    }


def size_breakdown(model, main, extra, files) -> dict[str, int]:
    """Where the bytes on disk go, and the floating-point sizes they compare with.

    `embedding_and_head` stay in floating point as they were; `fp16_model` is what
    the original weights take in fp16 and `fp16_rest` the same without the
    embedding and head: the reference of the 55% size rule (tests/test_export.py).
    """
    import torch

    def nbytes(t) -> int:
        return t.numel() * t.element_size()

    def weights(key: str, t) -> int:
        """How many weights of the original model a stored tensor stands for (four per packed int32)."""
        return t.numel() * (4 if key.endswith(".weight_packed") else 1)

    embed_keys = _embedding_keys(model)
    breakdown = {
        "int8_weights": sum(
            nbytes(t) for k, t in main.items() if t.dtype == torch.int8 or k.endswith(".weight_packed")
        ),
        "scales": sum(nbytes(t) for k, t in main.items() if is_scale(k)),
        "embedding_and_head": sum(nbytes(t) for k, t in main.items() if k in embed_keys),
        "other_float": sum(
            nbytes(t) for k, t in main.items() if t.dtype.is_floating_point and k not in embed_keys and not is_scale(k)
        ),
        "sidecar_tensors": sum(nbytes(t) for t in extra.values()),
    }
    tensor_file_bytes = sum(f["bytes"] for f in files if f["name"].endswith(".safetensors"))
    breakdown["safetensors_headers"] = tensor_file_bytes - sum(breakdown.values())
    breakdown["config_tokenizer_sidecar_json"] = sum(f["bytes"] for f in files) - tensor_file_bytes
    breakdown["total_on_disk"] = sum(f["bytes"] for f in files)
    # Each INT8 weight, bias and floating-point tensor stands for one weight of the original model.
    original = sum(weights(k, t) for k, t in main.items() if not is_scale(k))
    breakdown["fp16_model"] = 2 * original
    breakdown["fp16_rest"] = 2 * (original - sum(weights(k, t) for k, t in main.items() if k in embed_keys))
    return breakdown


def _embedding_keys(model) -> set[str]:
    """State-dict names of the input embedding and the output head (tied or not)."""
    modules = [getattr(model, getter, lambda: None)() for getter in ("get_input_embeddings", "get_output_embeddings")]
    weights = [p for m in modules if m is not None for p in m.parameters()]
    return {key for key, tensor in model.state_dict(keep_vars=True).items() if any(tensor is w for w in weights)}
