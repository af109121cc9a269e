"""Export written as the layer-by-layer pass makes it: each decoder layer's tensors go to disk before the next.

The result is the export `engine.checkpoint.export` writes from a model quantized in memory, in the
bitsandbytes or the compressed-tensors layout: the same tensor names and bits, the same files (the same
shard plan over the same tensor order), config.json, metadata and sidecar. What differs is when each
tensor exists: every output tensor is planned (name, dtype, shape: engine.checkpoint.layout applied to
an empty layer of the method, engine.checkpoint.contents' order) from the model's skeleton before any
weight is read, the files are laid out from that plan (engine.checkpoint.tensor_files), and each tensor
is written when its part of the model is placed: the embeddings first, each decoder layer as it is
quantized, the final norm and an untied head last. Static llm-int8's outlier columns are known only
once the scan has seen their layer, so the sidecar tensors cannot be laid out in advance: each layer's
go to a file of their own in the staging folder, and at the end they are copied into the sidecar one
tensor at a time and those files removed (held in memory, a 7B model's would grow by the columns of
every layer). GGUF files are written from a model in memory (engine.checkpoint.gguf_export).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from int8wb.engine.checkpoint import contents, export
from int8wb.engine.checkpoint.layout import check_format, layer_record, linear_tensors
from int8wb.engine.checkpoint.tensor_files import PlannedFiles
from int8wb.engine.errors import BadInput
from int8wb.engine.model.layerwise import LayerWork
from int8wb.engine.vocabulary import EXPORT_FORMATS, format_of


def plan(skeleton, method: str, skipped: list[str], dtype, fmt: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(meta tensor of every tensor the export writes, in contents.split_tensors' order; per-Linear records).

    The records' outlier dimensions are filled in by the pass for static llm-int8.
    """
    import torch

    from int8wb.engine.checkpoint.fallback import format_takes
    from int8wb.engine.model.layers import features, linear_layers
    from int8wb.engine.quant.int8_linear import Int8Linear

    specs: dict[str, Any] = {}
    layers: list[dict[str, Any]] = []
    quantized = [(name, linear) for name, linear in linear_layers(skeleton) if name not in skipped]
    for name, linear in quantized:
        if not format_takes(fmt, type(linear)):  # engine.checkpoint.fallback writes those from a model in memory
            raise BadInput(
                f"not supported layer by layer: {type(linear).__name__} in {name}, which {fmt} cannot hold in "
                "INT8; export this model in memory (--offload none)"
            )
        in_features, out_features = features(linear)
        empty = Int8Linear.empty(method, out_features, in_features, linear.bias is not None, dtype)
        stored, _ = linear_tensors(name, empty, fmt)
        specs.update(stored)
        if empty.scheme.outliers == "static":
            empty.outlier_cols = torch.empty(0, dtype=torch.long)  # none known yet: the record starts empty
        layers.append(layer_record(name, empty))
    for key, tensor in contents.unquantized_tensors(skeleton, {name for name, _ in quantized}).items():
        specs[key] = tensor.to(dtype) if tensor.dtype.is_floating_point else tensor
    return specs, layers


class LayerExport(LayerWork):
    """The export of one quantized variant, written part by part during a layer-by-layer pass.

    `variants` (engine.pipeline.layer_pass.LayerVariants) hands over each decoder layer's quantized copy;
    `start(staging)` lays the files out, the LayerWork hooks write, `finish()` writes the rest.
    """

    def __init__(self, params: dict[str, Any], loaded, recipe, variants, settings: dict[str, Any]) -> None:
        self.fmt = check_format(params.get("format"), recipe.method)
        if not format_of(self.fmt).layer_by_layer:
            writable = " or ".join(f for f in EXPORT_FORMATS if format_of(f).layer_by_layer)
            raise BadInput(
                f"the {self.fmt} export is written from a model in memory; layer by layer the workbench writes "
                f"{writable} (load the model with --offload none for {self.fmt})"
            )
        self.overwrite = bool(params.get("overwrite", False))
        self.target = export.check_target(params.get("out"), self.overwrite, export.model_sources(loaded))
        max_shard_size = export.parse_size(params.get("max_shard_size") or export.DEFAULT_MAX_SHARD_SIZE)
        self.loaded, self.recipe, self.variants, self.settings = loaded, recipe, variants, settings
        self.skeleton = loaded.model
        dtype = next(self.skeleton.parameters()).dtype
        self.specs, self.layers = plan(self.skeleton, recipe.method, recipe.skipped, dtype, self.fmt)
        self.split = export.plan_shards(self.specs, max_shard_size)
        self.needed = sum(t.numel() * t.element_size() for t in self.specs.values())
        self.metadata = contents.export_metadata(recipe.method, recipe.threshold, settings)
        self.extra: dict[str, Any] = {}  # sidecar tensor name -> meta tensor of its dtype and shape
        self.extra_parts: list[Path] = []  # the staging files that hold them, one per decoder layer
        self.files: PlannedFiles | None = None
        self.staging: Path | None = None

    def start(self, staging: Path) -> None:
        self.staging = staging
        self.files = PlannedFiles(staging, dict(self.split.filename_to_tensors), self.specs, self.metadata)

    def first(self, model, names: list[str]) -> None:
        self._write_placed(model, names)

    def layer(self, index: int, prefix: str, block) -> None:
        module = self.variants.block(self.recipe.method, index, prefix, block)
        main, extra, layers = contents.split_tensors(module, self.fmt)
        for name, tensor in main.items():
            self.files.write(f"{prefix}.{name}", tensor)
        if extra:
            self._hold({f"{prefix}.{name}": tensor for name, tensor in extra.items()}, index)
        dims = {f"{prefix}.{layer['name']}": layer["outlier_dims"] for layer in layers}
        for layer in self.layers:
            layer["outlier_dims"] = dims.get(layer["name"], layer["outlier_dims"])

    def last(self, model, names: list[str]) -> None:
        self._write_placed(model, names)

    def _hold(self, tensors: dict[str, Any], index: int) -> None:
        """One layer's sidecar tensors to a staging file of their own; only their dtypes and shapes stay here."""
        from safetensors.torch import save_file

        part = self.staging / f".held-layer-{index:05d}.part"
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(part))
        self.extra_parts.append(part)
        self.extra.update({name: tensor.to("meta") for name, tensor in tensors.items()})

    def _write_held(self) -> None:
        """The sidecar tensors file, filled from the layers' staging files one tensor at a time."""
        from safetensors import safe_open

        names = sorted(self.extra)
        sidecar = PlannedFiles(self.staging, {export.SIDECAR_TENSORS: names}, self.extra, self.metadata)
        for part in self.extra_parts:
            with safe_open(str(part), framework="pt") as handle:
                for name in handle.keys():
                    sidecar.write(name, handle.get_tensor(name))
            part.unlink()
        sidecar.close()

    def _write_placed(self, model, names: list[str]) -> None:
        state = model.state_dict()
        for name in names:
            if name in self.specs:
                self.files.write(name, state[name])

    def finish(self, task) -> None:
        """The sidecar tensors, config.json, tokenizer files and the sidecar; every planned tensor written."""
        self.files.close()
        files = dict(self.split.filename_to_tensors)
        if self.split.is_sharded:
            index = {
                "metadata": {"total_size": self.needed, **self.metadata},
                "weight_map": self.split.tensor_to_filename,
            }
            export.write_json(self.staging / export.WEIGHTS_INDEX_NAME, index)
        if self.extra:
            self._write_held()
            files[export.SIDECAR_TENSORS] = list(self.extra)
        contents.write_configs(
            self.staging,
            self.skeleton.config,
            _generation_config(Path(self.loaded.weights.directory)),
            self.loaded.tokenizer,
            self.recipe.method,
            self.recipe.threshold,
            self.recipe.skipped + _outside_linears(self.skeleton) + _routers(self.skeleton),
            self.fmt,
        )
        if not format_of(self.fmt).reopens:
            record = contents.serving_record(self.fmt, self.recipe.method, self.recipe.threshold, self.settings)
            export.write_record(self.staging, export.SERVING_RECORD, record)
            return
        manifest = contents.manifest(
            self.staging,
            self.recipe.method,
            self.recipe.threshold,
            self.settings,
            self.layers,
            files,
            {**self.specs, **self.extra},
        )
        export.write_record(self.staging, export.SIDECAR_NAME, {**manifest, "coverage": self.coverage()})

    def coverage(self) -> dict[str, Any]:
        """The INT8 share the files hold: the pass's own (no layer type is held in floating point here)."""
        measured = self.variants.coverage[self.recipe.method]
        return {**measured.to_payload(f"{self.recipe.method} export ({self.fmt})"), "notes": []}

    def result(self) -> export.ExportResult:
        return export.result(
            self.target,
            self.recipe.method,
            self.recipe.threshold,
            self.skeleton,
            self.specs,
            self.extra,
            self.fmt,
            self.coverage(),
        )


def _outside_linears(skeleton) -> list[str]:
    """The Linears outside the decoder layers (the head): kept in floating point, listed with the skipped."""
    import torch.nn as nn

    from int8wb.engine.model.layers import decoder_layers

    stack_path, _ = decoder_layers(skeleton)
    return [
        name
        for name, module in skeleton.named_modules()
        if isinstance(module, nn.Linear) and not name.startswith(f"{stack_path}.")
    ]


def _routers(skeleton) -> list[str]:
    """The routers of mixture-of-experts layers: kept in floating point, listed with the skipped."""
    from int8wb.engine.model.layers import is_router

    return [name for name, _ in skeleton.named_modules() if name and is_router(skeleton, name)]


def _generation_config(directory: Path):
    """The source's generation config when it has one, as the in-memory export writes it."""
    if not (directory / "generation_config.json").is_file():
        return None
    from transformers import GenerationConfig

    return GenerationConfig.from_pretrained(directory)
