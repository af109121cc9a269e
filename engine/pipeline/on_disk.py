"""A model whose weights stay on disk, and the choice between it and a model loaded whole (`offload`).

`open_layerwise` builds the model's skeleton on the meta device from config.json (accelerate's
`init_empty_weights`; buffers computed at construction, such as rotary frequencies, are built for
real), checks that the checkpoint holds every tensor it needs under that name, and checks that the
layer-by-layer loop can run it (engine.model.layerwise). No weight is read: scan, quantize,
evaluate and export read each layer when they reach it.

`decide` answers `offload` (engine.vocabulary.OFFLOAD_MODES): `none` and `disk` as asked, `auto`
from the planner's in-memory estimate against the free memory of the compute device (VRAM on
CUDA, available RAM on the CPU), with the reason in words.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from int8wb.engine.errors import BadInput
from int8wb.engine.model.dependencies import load_failure
from int8wb.engine.model.loaded import LoadedModel
from int8wb.engine.model.source_checks import check_against_stored, check_directory_config, read_json_object
from int8wb.engine.vocabulary import ALL_GPUS, FLOAT_BYTES


@dataclass
class LayerwiseModel(LoadedModel):
    """A LoadedModel whose `model` is the skeleton; `weights` reads its parts from disk."""

    weights: Any = None  # engine.model.disk_weights.DiskWeights
    checkpoint_dtype: str = "float32"

    def describe(self) -> dict[str, Any]:
        from int8wb.engine.planning import layer_by_layer, presets
        from int8wb.engine.planning.planner import Settings
        from int8wb.engine.vocabulary import METHODS

        info = super().describe()
        arch, inventory = presets.from_model(self.model)
        settings = Settings(context=512, batch=4, dtype=self.dtype)
        plan = layer_by_layer.layer_by_layer(
            arch, inventory, settings, METHODS, checkpoint_dtype=self.checkpoint_dtype, tokens=8192
        )
        info["offload"] = {**self.offload, "layers": plan["layers"], "peak_bytes": plan["peak_bytes"]}
        return info


def skeleton(directory: Path, dtype, trust_remote_code: bool = False):
    """The model of `directory`'s config.json on the meta device: names, shapes, ties and real buffers.

    Built only once config.json's layer count is bounded by the tensors the checkpoint stores, and checked
    against their shapes and total size before it is returned (engine.model.source_checks)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from int8wb.engine.model.disk_weights import stored_elements, stored_tensors
    from int8wb.engine.model.loaded import quiet_transformers

    stored = stored_tensors(directory)
    raw = check_directory_config(directory, len(stored))
    quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises many types; the message is what the user needs
        raise load_failure(exc, f"could not build the model of {directory} from its config.json") from exc
    model.tie_weights()  # the meta skeleton is built untied; the model loaded whole is tied
    model.eval()
    model.requires_grad_(False)
    shapes = {name: shape for name, (_, shape) in stored.items()}
    # a checkpoint quantized by another tool stores packed values: fewer than the model's weights
    elements = stored_elements(stored) if "quantization_config" not in raw else None
    check_against_stored(model, shapes, elements, str(directory))
    return model


def decide(requested: str | None, directory, kind: str, device: str, dtype, trust_remote_code: bool):
    """(offload mode, reason, skeleton or None) for a model about to be loaded from `directory`."""
    from int8wb.engine.planning import layer_by_layer, presets

    readable = kind != "hub" and any(Path(directory).glob("*.safetensors"))
    if not readable:
        if requested == "disk":
            raise BadInput(
                f"layer-by-layer mode reads the safetensors files of a local model directory; {directory} has none "
                "(download a hub model first, or load it in memory)"
            )
        layer_by_layer.choose_offload(requested, 0, 0, "")  # validates the name
        return "none", "in memory: the model has no local safetensors files to read layer by layer", None
    model = skeleton(Path(directory), dtype, trust_remote_code)
    arch, inventory = presets.from_model(model)
    need = layer_by_layer.in_memory_need(arch, inventory, str(dtype).removeprefix("torch."))
    available, where = free_memory(device)
    mode, reason = layer_by_layer.choose_offload(requested, need, available, where)
    if mode == "disk":
        from int8wb.engine.model.layerwise import check_supported

        check_supported(model)
    return mode, reason, (model if mode == "disk" else None)


def free_memory(device: str) -> tuple[int, str]:
    """(bytes, what they are) free on the compute device: VRAM on CUDA (every GPU's for cuda:all), else RAM."""
    from int8wb.engine.model.limits import available_bytes

    if device == ALL_GPUS:
        import torch

        count = torch.cuda.device_count()
        return sum(available_bytes(f"cuda:{i}") or 0 for i in range(count)), f"free on {count} GPUs"
    where = f"free on {device}" if device.startswith("cuda") else "of RAM available"
    return available_bytes(device) or 0, where


def open_layerwise(directory: Path, model, tokenizer, identity: dict[str, Any], reason: str) -> LayerwiseModel:
    """The layer-by-layer model of `directory`, given its skeleton; the checkpoint is indexed and checked."""
    from int8wb.engine.model.disk_weights import DiskWeights

    weights = DiskWeights.open(Path(directory), model)
    first_param = next(model.parameters())
    stored = _stored_dtype(Path(directory))
    return LayerwiseModel(
        model=model,
        tokenizer=tokenizer,
        device="cuda:0" if identity["device"] == ALL_GPUS else identity["device"],  # one layer: one GPU
        dtype=str(first_param.dtype).removeprefix("torch."),
        name=identity["name"],
        source=identity["source"],
        kind=identity["kind"],
        notes=[*identity["notes"], f"layer by layer from disk: weights stay in {directory}"],
        offload={"mode": "disk", "reason": reason},
        weights=weights,
        checkpoint_dtype=stored,
    )


def _stored_dtype(directory: Path) -> str:
    """The float dtype config.json says the checkpoint is stored in (float32 when it does not say)."""
    config = read_json_object(directory / "config.json")
    stored = str(config.get("dtype") or config.get("torch_dtype") or "")
    return stored if stored in FLOAT_BYTES else "float32"
