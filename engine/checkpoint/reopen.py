"""Re-open an exported directory as the quantized model it was, with no re-quantization.

The bitsandbytes tensors (`weight` int8, `SCB`) give back each Int8Linear's INT8
weight and per-row scale as they were; the sidecar (engine.checkpoint.export) adds what
bitsandbytes cannot express: the method, a per-tensor scale, static llm-int8's
outlier columns and their floating-point weights. Every tensor the sidecar lists
is checked (present, dtype, shape, file size) before anything is built, so a
damaged export is refused with a message that names the tensor or file.

The model skeleton is built with its parameters on the meta device (no random
initialisation, no second copy of the weights); buffers computed at construction
(rotary frequencies) are built for real, and every parameter is then assigned
from the files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from int8wb.engine.checkpoint import fallback
from int8wb.engine.checkpoint.contents import EXPORT_FORMAT, EXPORT_FORMAT_VERSION
from int8wb.engine.checkpoint.export import SIDECAR_NAME
from int8wb.engine.checkpoint.layout import is_scale, rebuild_linear
from int8wb.engine.errors import ModelLoadError
from int8wb.engine.model.dependencies import load_failure
from int8wb.engine.model.loaded import LoadedModel
from int8wb.engine.vocabulary import ALL_GPUS

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class ExportedModel(LoadedModel):
    """A re-opened export: `model` is the quantized model itself (there is no floating-point one)."""

    quantized: Any = None  # engine.quant.quantize.QuantizedModel wrapping `model`
    manifest: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["quantization"] = {
            "method": self.quantized.method,
            "threshold": self.quantized.threshold,
            "outlier_dims": int(sum(len(d) for d in self.quantized.outlier_dims.values())),
            "skipped_modules": list(self.quantized.skipped),
            "exported_by": f"{self.manifest['tool']} {self.manifest['version']}",
        }
        return info


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / SIDECAR_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} cannot be read as the workbench's export sidecar: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise ModelLoadError(f"{path} is not a workbench export sidecar (format {EXPORT_FORMAT!r} expected)")
    if manifest.get("format_version") != EXPORT_FORMAT_VERSION:
        raise ModelLoadError(
            f"{path} has export format version {manifest.get('format_version')!r}; this workbench "
            f"reads version {EXPORT_FORMAT_VERSION}"
        )
    for key in ("method", "threshold", "layers", "files", "settings"):
        if key not in manifest:
            raise ModelLoadError(f"{path} lacks {key!r}: the export is incomplete")
    _check_files(path, manifest["files"])
    return manifest


def _check_files(path: Path, files: Any) -> None:
    """The sidecar's file list names plain files of the export's own directory, each with its tensors.

    A name such as `../../elsewhere.safetensors` or `/etc/passwd` would make re-opening read outside it.
    """
    if not isinstance(files, dict):
        raise ModelLoadError(f"{path}: 'files' must map file names to their tensors")
    for filename, entry in files.items():
        if not is_plain_file_name(filename):
            raise ModelLoadError(f"{path} names the file {filename!r}, which is not a file of the export's own folder")
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("tensors"), dict)
            or not isinstance(entry.get("bytes"), int)
        ):
            raise ModelLoadError(f"{path}: the entry of {filename} lacks its size or its tensors")


def is_plain_file_name(name: Any) -> bool:
    """A name of a file directly inside a folder: no separator, not "." or "..", not absolute."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name


def read_tensors(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Every tensor the manifest lists, checked against it; a missing or truncated one is a ModelLoadError."""
    from safetensors import safe_open

    tensors: dict[str, Any] = {}
    for filename, entry in manifest["files"].items():
        path = directory / filename
        if not path.is_file():
            raise ModelLoadError(f"{path} is missing: the export in {directory} is incomplete")
        try:
            with safe_open(str(path), framework="pt") as handle:
                present = set(handle.keys())
                for name, spec in entry["tensors"].items():
                    if name not in present:
                        raise ModelLoadError(f"tensor {name} is missing from {path}: the export is damaged")
                    tensor = handle.get_tensor(name)
                    dtype, shape = str(tensor.dtype).removeprefix("torch."), list(tensor.shape)
                    if dtype != spec["dtype"] or shape != spec["shape"]:
                        raise ModelLoadError(
                            f"tensor {name} in {path} is {dtype} {shape}, the export wrote "
                            f"{spec['dtype']} {spec['shape']}: the export is damaged"
                        )
                    tensors[name] = tensor
        except ModelLoadError:
            raise
        except Exception as exc:  # safetensors reports a cut file as a header/buffer error
            raise ModelLoadError(f"{path} cannot be read (truncated or damaged): {str(exc).splitlines()[0]}") from exc
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise ModelLoadError(
                f"{path} has {size:,} bytes, the export wrote {entry['bytes']:,}: the file was truncated or modified"
            )
    return tensors


def load(directory: Path, params: dict[str, Any], task, allow_remote_code: bool = False) -> ExportedModel:
    """The quantized model stored in `directory`, on the requested device, as it was exported.

    `allow_remote_code` (the process owner's choice, never a request's) lets its tokenizer run shipped code.
    """
    from int8wb.engine.model.loaded import pick_device, quiet_transformers

    directory = Path(directory)
    device = pick_device(params.get("device"))
    if device == ALL_GPUS:
        raise ModelLoadError("a re-opened export goes onto one device: pass --device cuda or cuda:N, not cuda:all")
    task.progress(0.05, "reading the export")
    manifest = read_manifest(directory)
    tensors = read_tensors(directory, manifest)
    task.progress(0.5, "building the quantized model")
    quiet_transformers()
    model, quantized = _build(directory, manifest, tensors)
    model.to(device)
    tokenizer, notes = _tokenizer(directory, allow_remote_code)
    dtype = _float_dtype(model)
    requested = params.get("dtype")
    if requested and requested not in ("auto", dtype):
        notes.append(f"kept the exported dtype {dtype}: converting would change the model ({requested} was asked)")
    notes.insert(
        0,
        f"exported by {manifest['tool']} {manifest['version']}: method {manifest['method']}, "
        f"threshold {manifest['threshold']:g}; this is the quantized model, re-opened without "
        "re-quantization",
    )
    task.progress(1.0, "model loaded")
    return ExportedModel(
        model=model,
        tokenizer=tokenizer,
        name=directory.name,
        source=str(directory),
        kind="exported",
        device=str(next(model.parameters()).device),
        dtype=dtype,
        notes=notes,
        quantized=quantized,
        manifest=manifest,
    )


def _build(directory: Path, manifest: dict[str, Any], tensors: dict[str, Any]):
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from int8wb.engine.model.experts import unfuse_experts
    from int8wb.engine.model.layers import features
    from int8wb.engine.quant.quantize import QuantizedModel, replace_module

    try:
        config = AutoConfig.from_pretrained(directory)
    except Exception as exc:
        raise load_failure(exc, f"could not read {directory / 'config.json'}") from exc
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # that is bitsandbytes' view; the workbench builds its own modules
    dtype = _stored_float_dtype(tensors)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    unfuse_experts(model)  # as engine.pipeline.loading holds them: one Linear per expert

    remaining = dict(tensors)
    outlier_dims: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for layer in manifest["layers"]:
            name = layer["name"]
            try:
                linear = model.get_submodule(name)
            except AttributeError as exc:
                raise ModelLoadError(f"the export quantized {name}, which the model in config.json lacks") from exc
            module = rebuild_linear(layer, remaining, float(manifest["threshold"]), dtype)
            expected = features(linear)[::-1]
            if (module.out_features, module.in_features) != expected:
                raise ModelLoadError(
                    f"{name}.weight is {module.out_features}x{module.in_features}, the model expects {expected}"
                )
            module.source_type = type(linear)
            replace_module(model, name, module)
            if module.scheme.outliers == "static":
                outlier_dims[name] = module.outlier_cols.cpu().numpy()
        fallback.restore(
            model, remaining, [layer["name"] for layer in manifest["layers"] if layer.get("held_in_float")]
        )
        result = model.load_state_dict(remaining, strict=False, assign=True)
    if result.unexpected_keys:
        raise ModelLoadError(f"tensors the model does not have: {', '.join(sorted(result.unexpected_keys)[:5])}")
    model.tie_weights()
    missing = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if missing:
        raise ModelLoadError(f"tensor {missing[0]} is not in the export ({len(missing)} missing in all)")
    model.eval()
    model.requires_grad_(False)
    settings = manifest["settings"]
    quantized = QuantizedModel(
        manifest["method"],
        float(manifest["threshold"]),
        model,
        outlier_dims,
        list(settings.get("skip_modules") or []),
        settings.get("smoothing"),
        super_weights={
            layer["name"]: [tuple(kept) for kept in layer["super_weights"]]
            for layer in manifest["layers"]
            if layer.get("super_weights")
        },
    )
    return model, quantized


def _stored_float_dtype(tensors: dict[str, Any]):
    """The dtype of the model's floating-point tensors (SCB is always float32, so it does not count)."""
    import torch

    for name, tensor in tensors.items():
        if tensor.dtype.is_floating_point and not is_scale(name):
            return tensor.dtype
    return torch.float32


def _float_dtype(model) -> str:
    for tensor in model.parameters():
        if tensor.dtype.is_floating_point:
            return str(tensor.dtype).removeprefix("torch.")
    return "float32"


def _tokenizer(directory: Path, allow_remote_code: bool):
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        return None, ["the export has no tokenizer files: evaluation needs a tokenizer"]
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=allow_remote_code)
    except Exception as exc:
        raise load_failure(exc, f"could not load the tokenizer in {directory}") from exc
    return tokenizer, []
