"""Export a quantized model as a checkpoint that transformers + bitsandbytes load as it is.

Layout (DESIGN.md, "Exported files"), for every quantized Linear `name`:
`name.weight` int8 (out, in) row-major, `name.SCB` float32 (out,) per-row abs-max,
`name.weight_format` uint8 0-d (0 = "row"); every other tensor as it was. Our
INT8 convention is bitsandbytes' own (`q = round(w * 127 / absmax)`, SCB = absmax),
so its `Linear8bitLt` reads the INT8 values without requantizing them.

What bitsandbytes cannot express goes into the sidecar, so that re-opening
(`engine.checkpoint.reopen`) gives back the very same model:
- `int8wb_export.json`: the method, threshold, scan settings, outlier dimensions
  per layer, and the name, dtype, shape and file of every tensor (for validation);
- `int8wb_extra.safetensors`: static llm-int8's outlier columns and their weight
  columns in true floating point. A per-tensor scale (absmax-tensor) needs no
  extra tensor: every row's SCB is the tensor's abs-max, which dequantizes the
  same INT8 values to the same weights.

Everything is written into a staging folder beside the target and renamed when
complete (engine.checkpoint.staging), so an interrupted export never leaves a
model that looks whole. Overwriting replaces only a folder that is itself a
workbench export, and an export never goes into, over or around its source model.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.checkpoint.staging import file_mode, overlaps, write_folder
from engine.errors import BadInput

SIDECAR_NAME = "int8wb_export.json"
SIDECAR_TENSORS = "int8wb_extra.safetensors"
EXPORT_FORMAT = "int8wb-export"
EXPORT_FORMAT_VERSION = 1
DEFAULT_MAX_SHARD_SIZE = "50GB"  # transformers' own default for save_pretrained
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"

# bitsandbytes' threshold for the view of each method: 0 turns its outlier decomposition off.
# weight-only has no bitsandbytes counterpart (bitsandbytes always quantizes activations):
# its view is the dynamic llm-int8 of the same INT8 weights.
_BNB_USES_THRESHOLD = {
    "absmax-tensor": False,
    "vectorwise": False,
    "llm-int8": True,
    "llm-int8-dynamic": True,
    "weight-only": True,
}


@dataclass
class ExportResult:
    """What was written, measured on disk after the rename."""

    path: str
    method: str
    threshold: float
    files: list[dict[str, Any]] = field(default_factory=list)  # [{"name", "bytes"}], sizes from os.stat
    total_bytes: int = 0
    breakdown: dict[str, int] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "method": self.method,
            "threshold": self.threshold,
            "files": self.files,
            "total_bytes": self.total_bytes,
            "breakdown": self.breakdown,
        }


def parse_size(value: Any) -> int:
    """Bytes from an int or a string such as "5GB", "500MB" (decimal units, as transformers uses)."""
    if isinstance(value, bool):
        raise BadInput(f"max_shard_size must be a size such as 5GB, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise BadInput(f"max_shard_size must be positive, got {value}")
        return value
    text = str(value).strip().upper()
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)):
        if text.endswith(unit):
            number = text[: -len(unit)].strip()
            try:
                size = int(float(number) * factor)
            except ValueError:
                break
            if size >= 1:
                return size
    raise BadInput(f"max_shard_size must be a size such as 5GB or 500MB, got {value!r}")


def check_target(out: Any, overwrite: bool, sources: list[str] = ()) -> Path:
    """The resolved target folder, if an export may go there.

    Refused: a file; a non-empty folder without `overwrite`, or with it unless the folder is a workbench
    export; a target that is, holds or lies inside one of `sources` (the model being exported).
    """
    if not out or not isinstance(out, (str, os.PathLike)):
        raise BadInput("export needs an output directory (out)")
    target = Path(os.path.expanduser(str(out))).resolve()
    for source in sources:
        source_path = Path(os.path.expanduser(str(source))).resolve()
        if source_path.exists() and overlaps(target, source_path):
            raise BadInput(
                f"{target} is, holds or lies inside the source model {source_path}: "
                "an export never writes over its own source; choose another folder"
            )
    if target.exists() and not target.is_dir():
        raise BadInput(f"{target} exists and is a file: choose a directory for the export")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise BadInput(f"{target} already exists and is not empty: choose another directory or pass --overwrite")
        if not is_workbench_export(target):
            raise BadInput(
                f"{target} is not an export of this workbench (no {SIDECAR_NAME} and bitsandbytes config.json): "
                "--overwrite replaces only an earlier export; choose another directory"
            )
    if not target.parent.is_dir():
        raise BadInput(f"the parent folder {target.parent} does not exist")
    return target


def is_workbench_export(folder: Path) -> bool:
    """A flat folder whose sidecar and config.json say it is an export of this workbench."""
    try:
        entries = list(folder.iterdir())
        sidecar = json.loads((folder / SIDECAR_NAME).read_text(encoding="utf-8"))
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    flat = all(entry.is_file() and not entry.is_symlink() for entry in entries)
    return (
        flat
        and isinstance(sidecar, dict)
        and sidecar.get("format") == EXPORT_FORMAT
        and isinstance(config, dict)
        and isinstance(config.get("quantization_config"), dict)
    )


def model_sources(loaded) -> list[str]:
    """Every place the loaded model was read from: what it was opened as and the folder transformers read."""
    read_from = str(getattr(loaded.model.config, "name_or_path", "") or "")
    return [path for path in (getattr(loaded, "source", ""), read_from) if path]


def run(params: dict[str, Any], task, loaded, quantized, scan=None) -> ExportResult:
    """Write `quantized` (an engine.quant.quantize.QuantizedModel of `loaded`) to `params["out"]`.

    params: out (directory), overwrite (False), max_shard_size ("50GB").
    `scan` (engine.quant.scan.ScanResult) is recorded in the sidecar when the method used it.
    """
    import torch

    overwrite = bool(params.get("overwrite", False))
    target = check_target(params.get("out"), overwrite, model_sources(loaded))
    max_shard_size = parse_size(params.get("max_shard_size") or DEFAULT_MAX_SHARD_SIZE)
    main, extra, layers = split_tensors(quantized.model)
    needed = sum(t.numel() * t.element_size() for t in list(main.values()) + list(extra.values()))

    settings = _settings(quantized, scan)
    metadata = export_metadata(quantized.method, quantized.threshold, settings)

    def write(staging: Path) -> None:
        with torch.no_grad():
            files = write_weights(
                staging,
                plan_shards(main, max_shard_size),
                lambda names: {n: main[n] for n in names},
                metadata,
                task.slice(0.0, 0.9),
            )
            if extra:
                _save(staging / SIDECAR_TENSORS, extra, metadata)
                files[SIDECAR_TENSORS] = list(extra)
        write_configs(
            staging,
            quantized.model.config,
            _generation_config(loaded, quantized.model),
            loaded.tokenizer,
            quantized.method,
            quantized.threshold,
            skipped_linears(quantized.model),
        )
        write_json(
            staging / SIDECAR_NAME,
            manifest(staging, quantized.method, quantized.threshold, settings, layers, files, {**main, **extra}),
        )

    write_staged(target, needed, write, task, overwrite)
    return result(target, quantized.method, quantized.threshold, quantized.model, main, extra)


def export_metadata(method: str, threshold: float, settings: dict[str, Any]) -> dict[str, str]:
    """The safetensors metadata every file of an export carries."""
    return {
        "format": "pt",
        "int8wb.tool": "int8-workbench",
        "int8wb.version": _version(),
        "int8wb.method": method,
        "int8wb.threshold": repr(threshold),
        "int8wb.settings": json.dumps(settings, sort_keys=True),
    }


def write_staged(target: Path, needed: int, write, task, overwrite: bool) -> None:
    """Run `write(staging)` in a staging folder beside `target`, then put it in place (engine.checkpoint.staging).

    Replaces an existing `target` only with `overwrite` and only if it is a workbench export.
    """
    write_folder(target, needed, write, task.check_cancelled, overwrite, is_workbench_export)
    task.progress(1.0, f"exported to {target}")


def split_tensors(model) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """(bitsandbytes tensors, sidecar tensors, per-layer facts) of a model holding Int8Linear modules."""
    import torch

    from engine.quant.int8_linear import Int8Linear

    main: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    layers: list[dict[str, Any]] = []
    quantized_prefixes = set()
    for name, module in model.named_modules():
        if not isinstance(module, Int8Linear):
            continue
        quantized_prefixes.add(name)
        per_tensor = module.weight_scale.dim() == 0
        scb = module.weight_scale.float().reshape(1).expand(module.out_features) if per_tensor else module.weight_scale
        main[f"{name}.weight"] = module.weight_int8.contiguous()  # (out, in) int8
        main[f"{name}.SCB"] = scb.float().contiguous().clone()  # (out,) float32
        main[f"{name}.weight_format"] = torch.tensor(0, dtype=torch.uint8)  # 0 = "row"
        if module.bias is not None:
            main[f"{name}.bias"] = module.bias.contiguous()
        layer = {
            "name": name,
            "method": module.method,
            "in_features": module.in_features,
            "out_features": module.out_features,
            "scale": "tensor" if per_tensor else "row",
            "bias": module.bias is not None,
            "outlier_dims": [],
        }
        if module.method == "llm-int8":
            extra[f"{name}.outlier_cols"] = module.outlier_cols.contiguous()  # (n,) int64
            extra[f"{name}.outlier_weight"] = module.outlier_weight.contiguous()  # (out, n) float
            layer["outlier_dims"] = module.outlier_cols.tolist()
        layers.append(layer)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    seen: set[int] = set()
    for key, tensor in model.state_dict().items():
        if key.rpartition(".")[0] in quantized_prefixes or key in tied:
            continue
        if tensor.data_ptr() in seen:  # a tie the model did not declare: one copy, as safetensors wants
            continue
        seen.add(tensor.data_ptr())
        main[key] = tensor.contiguous()
    return main, extra, layers


def skipped_linears(model) -> list[str]:
    """Names of the Linears left in floating point (bitsandbytes' llm_int8_skip_modules)."""
    import torch.nn as nn

    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def bitsandbytes_threshold(method: str, threshold: float) -> float:
    return float(threshold) if _BNB_USES_THRESHOLD[method] else 0.0


def base_settings(method: str, threshold: float, skip_modules: list[str]) -> dict[str, Any]:
    """The sidecar's settings of a method that used no scan."""
    return {"method": method, "threshold": threshold, "skip_modules": list(skip_modules), "scan": None}


def _settings(quantized, scan) -> dict[str, Any]:
    settings = base_settings(quantized.method, quantized.threshold, quantized.skipped)
    if quantized.method == "llm-int8" and scan is not None:
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


def _version() -> str:
    import engine

    return engine.__version__


def _save(path: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    """One safetensors file, flushed to disk before the directory is renamed."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, file_mode(path.parent))  # safetensors creates its files private
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def plan_shards(tensors: dict[str, Any], max_shard_size: int):
    """huggingface_hub's split of `tensors` into shards; meta tensors (shape and dtype only) plan as well."""
    from huggingface_hub import split_torch_state_dict_into_shards

    return split_torch_state_dict_into_shards(
        tensors, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
    )


def write_weights(staging: Path, split, produce, metadata, task) -> dict[str, list[str]]:
    """model.safetensors, or the shards of `split` plus model.safetensors.index.json.

    `produce(names)` gives the tensors of one shard; each shard is written and
    released before the next one is produced, so a caller that builds tensors on
    demand holds one shard at a time.
    """
    files: dict[str, list[str]] = {}
    shards = list(split.filename_to_tensors.items())
    total = 0
    for i, (filename, names) in enumerate(shards):
        task.check_cancelled()
        shard = produce(names)
        total += sum(t.numel() * t.element_size() for t in shard.values())
        _save(staging / filename, shard, metadata)
        del shard
        files[filename] = list(names)
        task.progress((i + 1) / len(shards), f"wrote {filename}")
    if split.is_sharded:
        write_json(
            staging / WEIGHTS_INDEX_NAME,
            {"metadata": {"total_size": total, **metadata}, "weight_map": dict(split.tensor_to_filename)},
        )
    return files


def write_configs(
    staging: Path, config, generation_config, tokenizer, method: str, threshold: float, skip_modules: list[str]
) -> None:
    """config.json with bitsandbytes' quantization_config; generation config and tokenizer files."""
    import copy

    from transformers import BitsAndBytesConfig

    config = copy.deepcopy(config)
    config.quantization_config = BitsAndBytesConfig(
        load_in_8bit=True,
        llm_int8_threshold=bitsandbytes_threshold(method, threshold),
        llm_int8_skip_modules=list(skip_modules),
    )
    config.save_pretrained(staging)
    if generation_config is not None:
        generation_config.save_pretrained(staging)
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)


def _generation_config(loaded, model):
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
        "tool": "int8-workbench",
        "version": _version(),
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


def write_json(path: Path, value: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=1, sort_keys=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def result(target: Path, method: str, threshold: float, model, main, extra) -> ExportResult:
    """What was written, measured on disk; `main`/`extra` may hold meta tensors (sizes only)."""
    files = sorted(
        ({"name": p.name, "bytes": p.stat().st_size} for p in target.iterdir() if p.is_file()), key=lambda f: f["name"]
    )
    return ExportResult(
        str(target), method, threshold, files, sum(f["bytes"] for f in files), size_breakdown(model, main, extra, files)
    )


def size_breakdown(model, main, extra, files) -> dict[str, int]:
    """Where the bytes on disk go, and the floating-point sizes they compare with.

    `embedding_and_head` stay in floating point as they were; `fp16_model` is what
    the original weights take in fp16 and `fp16_rest` the same without the
    embedding and head: the reference of the 55% size rule (tests/test_export.py).
    """

    def nbytes(t) -> int:
        return t.numel() * t.element_size()

    embed_keys = _embedding_keys(model)
    breakdown = {
        "int8_weights": sum(nbytes(t) for t in main.values() if str(t.dtype) == "torch.int8"),
        "scales": sum(nbytes(t) for k, t in main.items() if _is_scale(k)),
        "embedding_and_head": sum(nbytes(t) for k, t in main.items() if k in embed_keys),
        "other_float": sum(
            nbytes(t) for k, t in main.items() if t.dtype.is_floating_point and k not in embed_keys and not _is_scale(k)
        ),
        "sidecar_tensors": sum(nbytes(t) for t in extra.values()),
    }
    tensor_file_bytes = sum(f["bytes"] for f in files if f["name"].endswith(".safetensors"))
    breakdown["safetensors_headers"] = tensor_file_bytes - sum(breakdown.values())
    breakdown["config_tokenizer_sidecar_json"] = sum(f["bytes"] for f in files) - tensor_file_bytes
    breakdown["total_on_disk"] = sum(f["bytes"] for f in files)
    # Each INT8 weight, bias and floating-point tensor stands for one weight of the original model.
    original = sum(t.numel() for k, t in main.items() if not _is_scale(k))
    breakdown["fp16_model"] = 2 * original
    breakdown["fp16_rest"] = 2 * (original - sum(t.numel() for k, t in main.items() if k in embed_keys))
    return breakdown


def _is_scale(key: str) -> bool:
    return key.endswith((".SCB", ".weight_format"))


def _embedding_keys(model) -> set[str]:
    """State-dict names of the input embedding and the output head (tied or not)."""
    modules = [getattr(model, getter, lambda: None)() for getter in ("get_input_embeddings", "get_output_embeddings")]
    weights = [p for m in modules if m is not None for p in m.parameters()]
    return {key for key, tensor in model.state_dict(keep_vars=True).items() if any(tensor is w for w in weights)}
