"""How much of the decoder a result really holds in INT8, and what stayed in floating point and why.

A quantized model that quietly kept most of its weights in floating point
reports the baseline's perplexity as if INT8 were free. So every result
states the share of the decoder's matrix weights (the weights of its
Linears, Conv1Ds, experts, routers and anything else two-dimensional inside
the stack of decoder layers; embeddings and the output head are outside it)
that are stored as INT8, and lists each group of matrix weights left in
floating point with its reason (engine.vocabulary.FLOAT_REASONS): skipped by
the user, a router, a layer type not supported, or a format that cannot
hold it. Under `LOW_INT8_SHARE` a result carries a warning; with nothing in
INT8 quantizing is an error rather than a table of baseline numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from int8wb.engine.errors import BadInput
from int8wb.engine.model.layers import decoder_layers, is_linear, is_router
from int8wb.engine.vocabulary import (
    FLOAT_FORMAT,
    FLOAT_METHOD,
    FLOAT_REASONS,
    FLOAT_ROUTER,
    FLOAT_SKIPPED,
    FLOAT_UNSUPPORTED,
    LOW_INT8_SHARE,
)


@dataclass
class Coverage:
    """INT8 and floating-point matrix weights of a model's decoder, counted in weights (elements).

    `floats` holds one (module name, layer type, reason, weights) entry per module kept in floating
    point; coverages of decoder layers measured one at a time add up (`add`).
    """

    int8_weights: int = 0
    floats: list[tuple[str, str, str, int]] = field(default_factory=list)

    @property
    def matrix_weights(self) -> int:
        return self.int8_weights + sum(entry[3] for entry in self.floats)

    @property
    def share(self) -> float:
        return self.int8_weights / self.matrix_weights if self.matrix_weights else 0.0

    @property
    def kept_float(self) -> list[dict[str, Any]]:
        """What stayed in floating point, grouped (see `_group`)."""
        return _group(self.floats)

    def add(self, other: Coverage) -> Coverage:
        self.int8_weights += other.int8_weights
        self.floats.extend(other.floats)
        return self

    def warnings(self, what: str) -> list[str]:
        """A sentence when under `LOW_INT8_SHARE` of the decoder's matrix weights are INT8; else none."""
        if self.share >= LOW_INT8_SHARE:
            return []
        return [
            f"{what}: only {self.share:.1%} of the decoder's matrix weights are stored as INT8; "
            f"in floating point: {describe_float(self.kept_float)}"
        ]

    def to_payload(self, what: str) -> dict[str, Any]:
        return {
            "int8_share": self.share,
            "int8_matrix_weights": self.int8_weights,
            "decoder_matrix_weights": self.matrix_weights,
            "kept_float": self.kept_float,
            "warnings": self.warnings(what),
        }


def measure(model, int8_names=None, held_float=None, unfit=()) -> Coverage:
    """Count the decoder's matrix weights of `model` by how they are stored (see `measure_block`)."""
    path, blocks = decoder_layers(model)
    total = Coverage()
    for index, block in enumerate(blocks):
        total.add(measure_block(block, f"{path}.{index}", int8_names, held_float, unfit))
    return total


def measure_block(block, prefix: str, int8_names=None, held_float=None, unfit=()) -> Coverage:
    """Count the matrix weights of one decoder layer called `prefix` by how they are stored.

    A Linear in floating point was skipped by the user (quantizing takes every other one),
    unless it is one of `unfit`, which the method cannot hold (q8_0: inputs not in whole blocks).
    int8_names: names of float Linears to count as INT8 (a model about to be quantized by name);
    held_float: module name -> layer type, for modules a format writes in floating point although
                the model holds them in INT8 (counted as floating point, reason "format").
    Names are full module paths.
    """
    int8_names, held_float, unfit = set(int8_names or ()), dict(held_float or {}), set(unfit)
    found = Coverage()
    for local, module in block.named_modules():
        name = f"{prefix}.{local}" if local else prefix
        holder = next((p for p in held_float if name == p or name.startswith(f"{p}.")), None)
        stored_int8 = getattr(module, "weight_int8", None)
        if stored_int8 is not None and holder is not None:
            found.floats.append((holder, held_float[holder], FLOAT_FORMAT, stored_int8.numel()))
        elif stored_int8 is not None or name in int8_names:
            found.int8_weights += (stored_int8 if stored_int8 is not None else module.weight).numel()
        else:
            weights = sum(p.numel() for key, p in module._parameters.items() if _is_matrix(key, p))
            if weights:
                reason = FLOAT_METHOD if name in unfit else _reason(block, local, module)
                found.floats.append((name, type(module).__name__, reason, weights))
    return found


def require_int8(coverage: Coverage, what: str) -> None:
    """BadInput when nothing of the decoder is INT8: the result would be the baseline under another name."""
    if coverage.int8_weights == 0:
        listed = describe_float(coverage.kept_float) or "the decoder has no matrix weights"
        raise BadInput(f"{what}: none of the decoder's matrix weights could be stored as INT8 ({listed})")


def describe_float(kept_float: list[dict[str, Any]]) -> str:
    """The groups kept in floating point, as one line: "model.layers.*.mlp.gate (x2): router: ..."."""
    return "; ".join(f"{g['modules']} (x{g['count']}, {g['weights']:,} weights): {g['why']}" for g in kept_float)


def _is_matrix(key: str, tensor) -> bool:
    """A floating-point weight of two dimensions or more; stacked biases (experts, out) are vectors, not weights."""
    return tensor is not None and tensor.dim() >= 2 and tensor.dtype.is_floating_point and "bias" not in key


def _reason(root, local: str, module) -> str:
    if local and is_router(root, local):
        return FLOAT_ROUTER
    return FLOAT_SKIPPED if is_linear(module) else FLOAT_UNSUPPORTED


def _group(entries: list[tuple[str, str, str, int]]) -> list[dict[str, Any]]:
    """Entries with the same reason, layer type and name pattern (layer and expert numbers as *) as one group."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    names: dict[tuple[str, str, str], set[str]] = {}
    for name, layer_type, reason, weights in entries:
        pattern = re.sub(r"(?<=\.)\d+(?=\.|$)", "*", name)
        key = (reason, layer_type, pattern)
        if key not in groups:
            why = FLOAT_REASONS[reason]
            if reason == FLOAT_UNSUPPORTED:
                why = f"{why}: {layer_type} in {pattern}"
            elif reason == FLOAT_FORMAT:
                why = f"{why} ({layer_type})"
            groups[key] = {"modules": pattern, "count": 0, "layer_type": layer_type, "reason": reason, "why": why}
            groups[key]["weights"] = 0
            names[key] = set()
        names[key].add(name)
        groups[key]["count"] = len(names[key])
        groups[key]["weights"] += weights
    return list(groups.values())
