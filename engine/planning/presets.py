"""Where a plan's numbers come from: built-in presets, a user's config.json, or a loaded model.

A preset is a `config.json` cut down to the fields that set memory, copied from the published
config of a common open model (resources/presets/NAME.json, with a `workbench_preset` block for
its label). A preset and a user's config go the same way: transformers builds the model on the
meta device (no weights are read or allocated), and the planner counts its real Linear shapes,
so fused projections, biases and learned position tables are counted as the model has them.
A config transformers does not know (no `model_type`) is read as a Llama-style model from its
numbers, and the plan says so.
"""

from __future__ import annotations

import json
import reprlib
from pathlib import Path
from typing import Any

from int8wb.engine.errors import BadInput
from int8wb.engine.installation import PRESETS
from int8wb.engine.model.source_checks import LAYER_KEYS, MAX_LAYERS, check_layer_count, read_json_object
from int8wb.engine.planning.planner import Architecture, LinearShape, WeightInventory

PRESET_KEY = "workbench_preset"

# Each architecture number and the config keys that may hold it (first present wins).
_ALIASES = {
    "hidden_size": ("hidden_size", "n_embd", "n_embed", "d_model"),
    "num_layers": LAYER_KEYS,
    "num_heads": ("num_attention_heads", "n_head"),
    "vocab_size": ("vocab_size",),
    "intermediate_size": ("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size"),
}
_EXPERT_ALIASES = {
    "num_experts": ("num_local_experts", "num_experts", "n_routed_experts"),
    "experts_per_token": ("num_experts_per_tok", "moe_top_k"),
}
_MLP_4X_FAMILIES = {"bloom", "gpt2", "falcon", "gpt_bigcode"}  # MLP width is 4 x hidden by design
_GATED_SUFFIXES = ("gate_proj", "gate_up_proj", "w1", "w3")


# --- presets --------------------------------------------------------------------------------------


def preset_dir() -> Path:
    return PRESETS


def list_presets() -> list[dict[str, Any]]:
    """name, label, scale and source of every built-in preset, smallest first."""
    rows = []
    for path in sorted(preset_dir().glob("*.json")):
        meta = json.loads(path.read_text())[PRESET_KEY]
        rows.append({"name": path.stem, **meta})
    return sorted(rows, key=lambda row: (row["parameters"], row["name"]))


def preset_config(name: str) -> dict[str, Any]:
    """The config dict of a built-in preset; BadInput names the known ones.

    The name is looked up among the presets, never handed to the file system, so that a path or a
    name too long for it is an unknown preset, and is shown shortened.
    """
    known = [row["name"] for row in list_presets()]
    if name not in known:
        raise BadInput(f"unknown preset {reprlib.repr(name)}; the presets are: {', '.join(known)}")
    return json.loads((preset_dir() / f"{name}.json").read_text())


def read_config(path: str | Path) -> dict[str, Any]:
    """A config.json (or a model directory holding one) as a dict; BadInput when unreadable."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.exists():
        raise BadInput(f"no config file at {path}")
    return read_json_object(path, BadInput)


# --- config -> architecture + inventory -------------------------------------------------------------


def from_config_dict(raw: dict[str, Any], name: str) -> tuple[Architecture, WeightInventory, list[str]]:
    """Architecture numbers and exact weight inventory of a config, without reading any weights."""
    raw = {key: value for key, value in raw.items() if key != PRESET_KEY}
    missing = [number for number, keys in _ALIASES.items() if not any(raw.get(k) is not None for k in keys)]
    if "intermediate_size" in missing and raw.get("model_type") in _MLP_4X_FAMILIES:
        missing.remove("intermediate_size")
    if missing:
        raise BadInput(
            f"the config of {name} lacks {', '.join(missing)} (looked for keys: "
            + "; ".join(f"{m}: {' / '.join(_ALIASES[m])}" for m in missing)
            + ")"
        )
    why = f"a plan from a config alone allows at most {MAX_LAYERS:,} (no published model is that deep)"
    check_layer_count(raw, MAX_LAYERS, f"the config of {name}", why, BadInput)
    notes: list[str] = []
    model = _meta_model(raw, notes)
    if model is None:
        numbers = {number: _first(raw, keys) for number, keys in _ALIASES.items()}
        arch = _architecture(name, raw, numbers, gated=True)
        return arch, llama_inventory(arch), notes
    return from_model(model, name) + (notes,)


def _first(raw: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((raw[k] for k in keys if raw.get(k) is not None), None)


def _meta_model(raw: dict[str, Any], notes: list[str]):
    """The model built on the meta device, or None (with a note) when transformers cannot build it."""
    model_type = raw.get("model_type")
    if not model_type:
        notes.append("the config has no model_type: a Llama-style layout (gated MLP, no biases) is assumed")
        return None
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from int8wb.engine.model.experts import unfuse_experts

    fields = {k: v for k, v in raw.items() if k not in ("model_type", "architectures", "auto_map")}
    try:
        config = AutoConfig.for_model(model_type, **fields)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        notes.extend(note for note in unfuse_experts(model) if note.startswith("not supported"))
        return model
    except Exception as exc:  # an unknown or malformed family: fall back to the numbers, say so
        notes.append(
            f"transformers could not build model_type {model_type!r} ({str(exc).splitlines()[0][:200]}): "
            "a Llama-style layout (gated MLP, no biases) is assumed"
        )
        return None


def _architecture(name: str, config: Any, numbers: dict[str, Any], gated: bool) -> Architecture:
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    hidden, heads = int(numbers["hidden_size"]), int(numbers["num_heads"])
    kv_heads = get("num_key_value_heads") or (1 if get("multi_query") else heads)
    head_dim = get("head_dim") or hidden // heads
    intermediate = numbers.get("intermediate_size") or 4 * hidden
    max_positions = get("max_position_embeddings") or get("n_positions") or get("seq_length")
    values = {
        "hidden_size": hidden,
        "num_layers": numbers["num_layers"],
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "head_dim": head_dim,
        "intermediate_size": intermediate,
        "vocab_size": numbers["vocab_size"],
    }
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInput(f"the config of {name} has {key} = {value!r}; it must be a positive whole number")
    experts = {key: next((get(k) for k in keys if get(k)), 0) for key, keys in _EXPERT_ALIASES.items()}
    if experts["num_experts"] and not 0 < experts["experts_per_token"] <= experts["num_experts"]:
        raise BadInput(f"the config of {name} has {experts['num_experts']} experts but no valid experts per token")
    return Architecture(
        **experts,
        name=name,
        gated_mlp=gated,
        tie_word_embeddings=bool(get("tie_word_embeddings", False)),
        max_positions=int(max_positions) if max_positions else None,
        **values,
    )


def llama_inventory(arch: Architecture) -> WeightInventory:
    """The weights of a Llama-style model from its numbers: q/k/v/o, gate/up/down, RMSNorms."""
    h, hd, inter = arch.hidden_size, arch.head_dim, arch.intermediate_size
    shapes = {
        "self_attn.q_proj": (arch.num_heads * hd, h),
        "self_attn.k_proj": (arch.num_kv_heads * hd, h),
        "self_attn.v_proj": (arch.num_kv_heads * hd, h),
        "self_attn.o_proj": (h, arch.num_heads * hd),
        "mlp.gate_proj": (inter, h),
        "mlp.up_proj": (inter, h),
        "mlp.down_proj": (h, inter),
    }
    linears = tuple(
        LinearShape(f"model.layers.{i}.{suffix}", out_f, in_f, False, i)
        for i in range(arch.num_layers)
        for suffix, (out_f, in_f) in shapes.items()
    )
    head = 0 if arch.tie_word_embeddings else arch.vocab_size * h
    return WeightInventory(linears, (2 * h,) * arch.num_layers, arch.vocab_size * h, h + head)


# --- a model in memory (meta, CPU or CUDA; floating point or quantized) -----------------------------------


def from_model(model: Any, name: str | None = None) -> tuple[Architecture, WeightInventory]:
    """Architecture from the model's config and its weights counted from its actual modules."""
    inventory = model_inventory(model)
    config = model.config
    numbers = {
        number: next((getattr(config, k) for k in keys if getattr(config, k, None) is not None), None)
        for number, keys in _ALIASES.items()
    }
    missing = [number for number, value in numbers.items() if value is None and number != "intermediate_size"]
    if missing:
        raise BadInput(f"the model's config lacks {', '.join(missing)}")
    gated = any(s.name.rsplit(".", 1)[-1] in _GATED_SUFFIXES for s in inventory.linears)
    label = name or getattr(config, "_name_or_path", "") or type(model).__name__
    return _architecture(label, config, numbers, gated), inventory


def is_quantized_linear(module: Any) -> bool:
    """A module of engine/quantize.py: it holds `weight_int8` in place of a float weight."""
    import torch

    return isinstance(getattr(module, "weight_int8", None), torch.Tensor)


def model_inventory(model: Any) -> WeightInventory:
    """The quantizable Linears (engine.model.layers.linear_layers) and every other state tensor, by placement.

    Counts parameters and persistent buffers once each (a tied lm_head shares the embedding);
    non-persistent buffers such as rotary `inv_freq` tables are rebuilt at load time, are not
    weights, and are left out. Routers stay floating point and count with their layer.
    """
    from int8wb.engine.model.layers import decoder_layers, expert_index, features, linear_layers

    layers_path, layers = decoder_layers(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    quantizable = {name for name, _ in linear_layers(model)}
    owners = {
        name: m
        for name, m in model.named_modules()
        if name in quantizable or (m is not head and is_quantized_linear(m))
    }
    linears = []
    for name, module in owners.items():
        in_features, out_features = features(module)
        cols = getattr(module, "outlier_cols", None) if is_quantized_linear(module) else None
        linears.append(
            LinearShape(
                name,
                int(out_features),
                int(in_features),
                getattr(module, "bias", None) is not None,
                _layer_index(name, layers_path),
                int(cols.numel()) if cols is not None else None,
                expert_index(name),
            )
        )
    per_layer, first, last, seen_layers = [0] * len(layers), 0, 0, False
    for name, tensor in _state_tensors(model):
        if name.rsplit(".", 1)[0] in owners:
            continue
        index = _layer_index(name, layers_path)
        if index is not None:
            per_layer[index] += tensor.numel()
            seen_layers = True
        elif seen_layers:
            last += tensor.numel()
        else:
            first += tensor.numel()
    return WeightInventory(tuple(linears), tuple(per_layer), first, last)


def _layer_index(name: str, layers_path: str) -> int | None:
    prefix = f"{layers_path}."
    if not name.startswith(prefix):
        return None
    return int(name[len(prefix) :].split(".", 1)[0])


def _state_tensors(model: Any):
    """(name, tensor) of parameters and persistent buffers, each storage once, in registration order."""
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        tensors = list(module._parameters.items()) + [
            (key, buf) for key, buf in module._buffers.items() if key not in module._non_persistent_buffers_set
        ]
        for key, tensor in tensors:
            if tensor is None or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            yield (f"{module_name}.{key}" if module_name else key), tensor
