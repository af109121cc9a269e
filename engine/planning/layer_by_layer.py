"""One machine, layer by layer: what running a model one decoder layer at a time costs, and when to do it.

A model that does not fit the compute device still runs there one decoder layer at a time, its
weights read from disk as each layer comes (engine.model.layerwise). The peak memory is then

    largest part    the largest of: one decoder layer in the compute dtype, the embedding, the head
    + int8 copies   a quantized copy of that layer (INT8 weights and scales) per method streamed
    + hidden states streams x tokens x hidden x dtype bytes (baseline, each method, the calibration)
    + workspace     one forward of one batch through one layer (the planner's workspace terms)
    + head chunk    the logits of one chunk of tokens: HEAD_CHUNK_BYTES at most

and each run reads the checkpoint once, so it costs at least its size over the disk's read speed;
the arithmetic is the same as in memory. `choose_offload` compares the in-memory estimate (the
weights in the compute dtype, one INT8 copy of the Linears, the workspace) with the free memory of
the compute device and says why it picked what it picked.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from int8wb.engine.errors import BadInput
from int8wb.engine.planning.planner import Architecture, Settings, WeightInventory, layer_weight_bytes, weight_bytes
from int8wb.engine.planning.planner import workspace_terms as planner_workspace
from int8wb.engine.vocabulary import GIB, OFFLOAD_MODES, VECTORWISE

HEAD_CHUNK_BYTES = 256 * 2**20  # float32 logits of one chunk of tokens, at most
DEFAULT_DISK_BYTES_PER_S = 2 * 10**9  # an NVMe SSD's sequential read; shown with the estimate


def head_chunk_tokens(vocab_size: int) -> int:
    """Tokens whose float32 logits over the vocabulary fit HEAD_CHUNK_BYTES (at least one)."""
    return max(1, HEAD_CHUNK_BYTES // (4 * max(vocab_size, 1)))


def layer_by_layer(
    arch: Architecture,
    inventory: WeightInventory,
    settings: Settings,
    methods: tuple[str, ...] = (),
    disk_bytes_per_s: int = DEFAULT_DISK_BYTES_PER_S,
    checkpoint_dtype: str | None = None,
    tokens: int | None = None,
) -> dict[str, Any]:
    """The peak and the disk time of a run with the baseline and `methods`, forward calls of batch x context.

    Streams: the baseline, each method, and the calibration tokens of a scan, `tokens` each (default
    one batch x context). `checkpoint_dtype` (default: the settings' dtype) sets the bytes read from disk.
    """
    fb = settings.float_bytes
    layers = layer_weight_bytes(inventory, "baseline", settings)
    outside = max(inventory.float_elements_first, inventory.float_elements_last) * fb
    quantized = [max(layer_weight_bytes(inventory, m, settings), default=0) for m in methods if m != "baseline"]
    streams = len(methods) + 2
    tokens = tokens or settings.batch * settings.context
    terms = {
        "largest part": max([*layers, outside], default=0),
        "int8 copies": sum(quantized),
        "hidden states": streams * tokens * arch.hidden_size * fb,
        "workspace": sum(planner_workspace(arch, inventory, "baseline", replace(settings, logits="last")).values()),
        "head chunk": min(tokens, head_chunk_tokens(arch.vocab_size)) * arch.vocab_size * 4,
    }
    read_settings = replace(settings, dtype=checkpoint_dtype or settings.dtype)
    read = weight_bytes(inventory, "baseline", read_settings)
    return {
        "layers": arch.num_layers,
        "streams": streams,
        "peak_bytes": sum(terms.values()),
        "terms": terms,
        "read_bytes": read,
        "disk_bytes_per_s": disk_bytes_per_s,
        "read_seconds": read / disk_bytes_per_s,
    }


def in_memory_need(arch: Architecture, inventory: WeightInventory, dtype: str) -> int:
    """What the in-memory path needs to evaluate: the weights, one INT8 copy of the Linears, the workspace."""
    settings = Settings(context=512, batch=4, dtype=dtype, logits="all")
    int8_copy = sum(s.out_features * (s.in_features + 4) for s in inventory.linears)  # INT8 weights, row scales
    workspace = sum(planner_workspace(arch, inventory, VECTORWISE.name, settings).values())
    return weight_bytes(inventory, "baseline", settings) + int8_copy + workspace


def choose_offload(requested: str | None, need: int, available: int, where: str) -> tuple[str, str]:
    """("none" or "disk", why): the requested mode, or for "auto" the one the estimate calls for."""
    requested = requested or "auto"
    if requested not in OFFLOAD_MODES:
        raise BadInput(f"offload must be one of {', '.join(OFFLOAD_MODES)}, got {requested!r}")
    if requested != "auto":
        return requested, "asked for"
    fits = need <= available
    verdict = "in memory" if fits else "layer by layer from disk"
    relation = "fits in" if fits else "exceeds"
    return ("none" if fits else "disk"), (
        f"offload auto: {verdict}: the in-memory estimate {need / GIB:.1f} GiB {relation} the "
        f"{available / GIB:.1f} GiB {where}"
    )


def format_line(entry: dict[str, Any]) -> str:
    """The planner's "one machine, layer by layer" line."""
    terms = ", ".join(f"{name} {value / GIB:.2f}" for name, value in entry["terms"].items() if value)
    minutes = entry["read_seconds"] / 60
    reading = f"{minutes:.1f} min" if minutes >= 1 else f"{math.ceil(entry['read_seconds'])} s"
    return (
        f"one machine, layer by layer: peak about {entry['peak_bytes'] / GIB:.1f} GiB ({terms} GiB); "
        f"reads {entry['read_bytes'] / 1e9:.1f} GB from disk once per run, about {reading} at "
        f"{entry['disk_bytes_per_s'] / 1e9:g} GB/s"
    )
