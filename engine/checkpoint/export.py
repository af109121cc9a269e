"""Export a quantized model: the bitsandbytes checkpoint the workbench re-opens, or a serving format.

What is written is engine.checkpoint.contents' (the tensors in engine.checkpoint.layout's
layout of the format, config.json, tokenizer, and for bitsandbytes the sidecar that
re-opening reads: `int8wb_export.json` with the method, threshold, scan settings,
outlier dimensions per layer and every tensor's name, dtype, shape and file;
`int8wb_extra.safetensors` with what bitsandbytes cannot express), or for GGUF
engine.checkpoint.gguf_export's one file. This module writes the files: shards and
the index, staged so that an export appears whole or not at all.

Everything is written into a staging folder beside the target and renamed when
complete (engine.checkpoint.staging), so an interrupted export never leaves a
model that looks whole. Overwriting replaces only a folder that is itself a
workbench export holding only the files its record lists as written (a file the
user added since is named and the overwrite refused), and an export never goes
into, over or around its source model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from int8wb.engine.checkpoint import contents, fallback
from int8wb.engine.checkpoint.layout import check_format, check_kept_super_weights
from int8wb.engine.checkpoint.staging import file_mode, overlaps, write_folder
from int8wb.engine.errors import BadInput
from int8wb.engine.quant import coverage, skip_list
from int8wb.engine.vocabulary import EXPORT_FORMATS, GGUF, format_of

SIDECAR_NAME = "int8wb_export.json"
SIDECAR_TENSORS = "int8wb_extra.safetensors"
SERVING_RECORD = "int8wb_serving.json"  # what a serving format's export holds; the workbench does not re-open it
DEFAULT_MAX_SHARD_SIZE = "50GB"  # transformers' own default for save_pretrained
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WRITTEN_FILES = "written_files"  # the record's list of every file the export wrote: all --overwrite may replace
SHOWN_STRANGERS = 10  # files named when an overwrite is refused for them


@dataclass
class ExportResult:
    """What was written, measured on disk after the rename."""

    path: str
    method: str
    threshold: float
    files: list[dict[str, Any]] = field(default_factory=list)  # [{"name", "bytes"}], sizes from os.stat
    total_bytes: int = 0
    breakdown: dict[str, int] = field(default_factory=dict)
    format: str = EXPORT_FORMATS[0]
    coverage: dict[str, Any] = field(default_factory=dict)  # the INT8 share as the format holds it, and notes

    def to_payload(self) -> dict[str, Any]:
        """Every field, with the coverage's keys at the top level beside them."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "coverage"}
        return own | self.coverage


def held_coverage(model, method: str, fmt: str, unfit=()) -> dict[str, Any]:
    """engine.quant.coverage of what `fmt` holds of `model`: its INT8 share, what is in floating point and why.

    A serving format that would hold nothing in INT8 is refused; the bitsandbytes export is still written
    (with its warning), since the workbench re-opens the INT8 from its sidecar.
    """
    unheld = fallback.unheld_modules(model, fmt)
    held = coverage.measure(model, held_float=fallback.layer_types(unheld), unfit=unfit)
    what = f"{method} export ({fmt})"
    if not format_of(fmt).reopens:
        coverage.require_int8(held, what)
    return {**held.to_payload(what), "notes": fallback.notes(unheld, fmt)}


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

    Refused: a file; a non-empty folder without `overwrite`, or with it unless `overwrite_refusal` finds
    none (a workbench export holding only the files it wrote); a target that is, holds or lies inside one of `sources` (the model being exported).
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
        refusal = overwrite_refusal(target)
        if refusal is not None:
            raise BadInput(refusal)
    nearest = next(folder for folder in target.parents if folder.exists())
    if not nearest.is_dir():
        raise BadInput(f"{nearest} is a file, not a folder: an export cannot go inside it")
    if not target.parent.is_dir():
        raise BadInput(f"the parent folder {target.parent} does not exist")
    return target


def export_record(folder: Path) -> dict[str, Any]:
    """The record an export of this workbench keeps of itself: its sidecar, when the sidecar and config.json
    say it is one (bitsandbytes), or its serving record (compressed-tensors, GGUF); {} for any other folder."""
    sidecar, config = _json_object(folder / SIDECAR_NAME), _json_object(folder / "config.json")
    if sidecar.get("format") == contents.EXPORT_FORMAT and isinstance(config.get("quantization_config"), dict):
        return sidecar
    serving = _json_object(folder / SERVING_RECORD)
    return serving if serving.get("tool") == contents.TOOL else {}


def files_not_written(folder: Path) -> list[str] | None:
    """What is in `folder` that its export's record does not list as written (a subfolder, a link, a file
    added since), by name; None when the record lists nothing, as exports of earlier versions did."""
    written = export_record(folder).get(WRITTEN_FILES)
    if not isinstance(written, list) or not all(isinstance(name, str) for name in written):
        return None
    return sorted(
        entry.name
        for entry in folder.iterdir()
        if entry.name not in written or entry.is_symlink() or not entry.is_file()
    )


def overwrite_refusal(folder: Path) -> str | None:
    """Why `--overwrite` may not replace `folder`, or None: it may when the folder holds an export of this
    workbench and nothing but the files that export lists as its own, so nobody's other work is deleted."""
    if not export_record(folder):
        return (
            f"{folder} is not an export of this workbench (no {SIDECAR_NAME} with its config.json, nor "
            f"{SERVING_RECORD}): --overwrite replaces only an earlier export; choose another directory"
        )
    strangers = files_not_written(folder)
    if strangers is None:
        return (
            f"{folder} does not list the files it wrote (an export of an earlier version), so --overwrite cannot "
            "tell them from files added since: remove the folder yourself or choose another directory"
        )
    if strangers:
        shown = ", ".join(strangers[:SHOWN_STRANGERS])
        more = f" and {len(strangers) - SHOWN_STRANGERS} more" if len(strangers) > SHOWN_STRANGERS else ""
        return (
            f"{folder} holds what its export did not write: {shown}{more}; --overwrite replaces only the "
            "files an export wrote: move these elsewhere or choose another directory"
        )
    return None


def is_replaceable_export(folder: Path) -> bool:
    return overwrite_refusal(folder) is None


def _json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or {} if there is none."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def model_sources(loaded) -> list[str]:
    """Every place the loaded model was read from: what it was opened as and the folder transformers read."""
    read_from = str(getattr(loaded.model.config, "name_or_path", "") or "")
    return [path for path in (getattr(loaded, "source", ""), read_from) if path]


def run(params: dict[str, Any], task, loaded, quantized, scan=None) -> ExportResult:
    """Write `quantized` (an engine.quant.quantize.QuantizedModel of `loaded`) to `params["out"]`.

    params: out (directory), overwrite (False), max_shard_size ("50GB"), format (one of
    engine.vocabulary.EXPORT_FORMATS, the first unless given: its declaration says which methods it carries).
    `scan` (engine.quant.scan.ScanResult) is recorded in the sidecar when the method used it.
    """
    import torch

    fmt = check_format(params.get("format"), quantized.method)
    check_kept_super_weights(fmt, quantized.model)
    overwrite = bool(params.get("overwrite", False))
    target = check_target(params.get("out"), overwrite, model_sources(loaded))
    settings = contents.quantized_settings(quantized, scan)
    if format_of(fmt).writer == GGUF:
        return _run_gguf(fmt, target, task, loaded, quantized, settings, overwrite)
    held = held_coverage(quantized.model, quantized.method, fmt, quantized.unfit)
    if format_of(fmt).notes_fused_skips:
        held["notes"] += skip_list.vllm_notes(loaded.model, quantized.skipped)
    max_shard_size = parse_size(params.get("max_shard_size") or DEFAULT_MAX_SHARD_SIZE)
    main, extra, layers = contents.split_tensors(quantized.model, fmt)
    needed = sum(t.numel() * t.element_size() for t in list(main.values()) + list(extra.values()))
    metadata = contents.export_metadata(quantized.method, quantized.threshold, settings)

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
                save_tensors(staging / SIDECAR_TENSORS, extra, metadata)
                files[SIDECAR_TENSORS] = list(extra)
        contents.write_configs(
            staging,
            quantized.model.config,
            contents.generation_config_of(loaded, quantized.model),
            loaded.tokenizer,
            quantized.method,
            quantized.threshold,
            contents.skipped_linears(quantized.model, fmt),
            fmt,
        )
        if not format_of(fmt).reopens:
            record = contents.serving_record(fmt, quantized.method, quantized.threshold, settings)
            write_record(staging, SERVING_RECORD, record)
            return
        write_record(
            staging,
            SIDECAR_NAME,
            {
                **contents.manifest(
                    staging, quantized.method, quantized.threshold, settings, layers, files, {**main, **extra}
                ),
                "coverage": held,
            },
        )

    write_staged(target, needed, write, task, overwrite)
    return result(target, quantized.method, quantized.threshold, quantized.model, main, extra, fmt, held)


def _run_gguf(
    fmt: str, target: Path, task, loaded, quantized, settings: dict[str, Any], overwrite: bool
) -> ExportResult:
    """One GGUF file with the Linear weights in Q8_0 (engine.checkpoint.gguf_export), staged like the others."""
    from int8wb.engine.checkpoint import gguf_export

    plan = gguf_export.plan(loaded, quantized)
    needed = plan.total_bytes()

    def write(staging: Path) -> None:
        gguf_export.write(staging, plan, task.slice(0.0, 0.95))
        record = contents.serving_record(fmt, quantized.method, quantized.threshold, settings)
        write_record(staging, SERVING_RECORD, record)

    write_staged(target, needed, write, task, overwrite)
    files = files_on_disk(target)
    total = sum(f["bytes"] for f in files)
    held = held_coverage(quantized.model, quantized.method, fmt, quantized.unfit)
    return ExportResult(
        str(target), quantized.method, quantized.threshold, files, total, plan.breakdown(files), fmt, held
    )


def write_staged(target: Path, needed: int, write, task, overwrite: bool) -> None:
    """Run `write(staging)` in a staging folder beside `target`, then put it in place (engine.checkpoint.staging).

    Replaces an existing `target` only with `overwrite` and only if it is a workbench export holding
    nothing but its own files (judged again once the old folder is set aside).
    """
    write_folder(target, needed, write, task.check_cancelled, overwrite, is_replaceable_export)
    task.progress(1.0, f"exported to {target}")


def save_tensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
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
        save_tensors(staging / filename, shard, metadata)
        del shard
        files[filename] = list(names)
        task.progress((i + 1) / len(shards), f"wrote {filename}")
    if split.is_sharded:
        write_json(
            staging / WEIGHTS_INDEX_NAME,
            {"metadata": {"total_size": total, **metadata}, "weight_map": dict(split.tensor_to_filename)},
        )
    return files


def write_record(staging: Path, name: str, record: dict[str, Any]) -> None:
    """The export's own record `name`, written last: with the list of every file in the staging folder, which
    is every file the export wrote (and all that a later --overwrite may replace)."""
    written = sorted({entry.name for entry in staging.iterdir()} | {name})
    write_json(staging / name, {**record, WRITTEN_FILES: written})


def write_json(path: Path, value: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=1, sort_keys=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def result(target: Path, method: str, threshold: float, model, main, extra, fmt: str, held) -> ExportResult:
    """What was written, measured on disk; `main`/`extra` may hold meta tensors (sizes only).

    `held`: the coverage of what the format holds (`held_coverage`).
    """
    files = files_on_disk(target)
    total = sum(f["bytes"] for f in files)
    breakdown = contents.size_breakdown(model, main, extra, files)
    return ExportResult(str(target), method, threshold, files, total, breakdown, fmt, held)


def files_on_disk(target: Path) -> list[dict[str, Any]]:
    """[{"name", "bytes"}] of the files in `target`, by name, sizes from os.stat."""
    return sorted(
        ({"name": p.name, "bytes": p.stat().st_size} for p in target.iterdir() if p.is_file()), key=lambda f: f["name"]
    )
