"""Decode throughput: the bytes one generation step reads, and the rate a card's bandwidth allows.

Generating the next token of B sequences runs every layer once over B new positions: each weight
is read once, shared by the B sequences, and each sequence reads its whole KV cache. At a small
batch a step therefore costs its bytes, not its arithmetic:

    bytes per step   = weights read + batch x (KV cache of one sequence at the context + its embedding row)
    weights read     = the method's stored weights (planner.weight_terms: INT8 weights, scales, outlier
                       columns, biases, everything kept in floating point), less an untied input
                       embedding table, of which a step reads only the batch's rows
    step time       >= bytes per step / the card's bandwidth
    tokens/s         = 1 / step time per sequence, batch / step time for the batch
    bytes per token  = bytes per step / batch

The arithmetic of one sequence's step is 2 x the Linear weights (at the method's peak: INT8 for the
W8A8 methods, the float dtype otherwise), 2 x the LM head and 4 x layers x context x heads x
head_dim for attention (both at the float peak). Compute grows with the batch at that rate, bytes
only by each added sequence's KV cache and embedding row, so decoding stops being bandwidth-bound at

    bound batch = (weights read / bandwidth) / (compute per sequence - bytes per sequence / bandwidth)

and never when an added sequence reads longer than it computes (long contexts: attention reads
its whole KV cache for a few operations per byte). "Without the KV cache" is the same batch with
only the weights' arithmetic against the weights' bytes, the figure usually quoted: the card's
peak over its bandwidth, times the bytes per weight over 2.

Cards in a row (accelerate's sequential device_map, as the memory plan places whole layers) work
one after another, so one card's bandwidth bounds the rate however many cards hold the model;
tensor parallelism would divide the step time by up to the number of cards. The activations a step
reads and writes (batch x hidden per Linear) are left out: kilobytes against gigabytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from int8wb.engine.planning import gpus, planner
from int8wb.engine.planning.planner import Architecture, Settings, WeightInventory
from int8wb.engine.vocabulary import BASELINE, GPU_BANDWIDTH, GPU_PEAK_OPS, W8A8_METHODS

KV_READ = "KV cache read"
EMBEDDING_ROWS = "input embedding rows"
FLOAT_TERM = "float (not quantized)"

RATIO_GROUPS = (
    ("Linear weights", ("float weight", "int8 weight")),
    ("scales", ("scales",)),
    ("outlier columns", ("outlier indices", "outlier weight")),
    ("biases", ("bias",)),
    ("kept in floating point", (FLOAT_TERM, EMBEDDING_ROWS)),
    ("KV cache", (KV_READ,)),
)
"""How the bytes of a method against the baseline's are explained, in order; a term of the stored
layout that no group names (a new method's tensors) is explained after these under its own name."""


@dataclass(frozen=True)
class DecodeRead:
    """The bytes one decode step reads, by term: once per step, and once per sequence in the batch."""

    shared: dict[str, int]
    per_sequence: dict[str, int]

    def step_bytes(self, batch: int) -> int:
        return sum(self.shared.values()) + batch * sum(self.per_sequence.values())

    def terms(self, batch: int) -> dict[str, int]:
        """Every term of a step at `batch`, the per-sequence ones multiplied by it."""
        return {**self.shared, **{key: batch * value for key, value in self.per_sequence.items()}}


def decode_read(arch: Architecture, inventory: WeightInventory, method: str, settings: Settings) -> DecodeRead:
    """What a step reads in `method`'s stored layout at the settings' context (see the module docstring)."""
    shared = planner.weight_terms(inventory, method, settings)
    per_sequence = {KV_READ: planner.kv_cache_bytes(arch, replace(settings, batch=1))}
    if not arch.tie_word_embeddings and inventory.float_elements_first:
        shared[FLOAT_TERM] = shared.get(FLOAT_TERM, 0) - inventory.float_elements_first * settings.float_bytes
        per_sequence[EMBEDDING_ROWS] = arch.hidden_size * settings.float_bytes
    return DecodeRead({key: value for key, value in shared.items() if value}, per_sequence)


def decode_ops(arch: Architecture, inventory: WeightInventory, settings: Settings) -> dict[str, int]:
    """Operations (a multiply and an add count two) of one sequence's decode step, by part."""
    return {
        "Linear weights": 2 * sum(shape.out_features * shape.in_features for shape in inventory.linears),
        "LM head": 2 * arch.vocab_size * arch.hidden_size,
        "attention": 4 * arch.num_layers * settings.context * arch.num_heads * arch.head_dim,
    }


def linear_peak(method: str, dtype: str, gpu: str) -> float:
    """The peak the method's Linear products run at: INT8 for W8A8 methods, else the float dtype."""
    peaks = GPU_PEAK_OPS[gpu]
    return peaks["int8"] if method in W8A8_METHODS else peaks[dtype]


def card_rate(read: DecodeRead, ops: dict[str, int], method: str, settings: Settings, gpu: str) -> dict[str, Any]:
    """The bandwidth-bound decode rate of one card, its compute time, and the batch where compute takes over."""
    gpus.check_gpu(gpu)
    bandwidth, float_peak = GPU_BANDWIDTH[gpu], GPU_PEAK_OPS[gpu][settings.dtype]
    peak = linear_peak(method, settings.dtype, gpu)
    weight_compute = ops["Linear weights"] / peak + ops["LM head"] / float_peak
    compute_per_sequence = weight_compute + ops["attention"] / float_peak
    step_seconds = read.step_bytes(settings.batch) / bandwidth
    compute_seconds = settings.batch * compute_per_sequence
    shared_seconds = sum(read.shared.values()) / bandwidth
    per_sequence_seconds = sum(read.per_sequence.values()) / bandwidth
    return {
        "gpu": gpu,
        "bandwidth_bytes_per_s": bandwidth,
        "linear_peak_ops_per_s": peak,
        "float_peak_ops_per_s": float_peak,
        "step_seconds": step_seconds,
        "compute_seconds": compute_seconds,
        "tokens_per_s_per_sequence": 1.0 / step_seconds,
        "tokens_per_s_batch": settings.batch / step_seconds,
        "bandwidth_bound": step_seconds >= compute_seconds,
        "bound_batch": meeting_batch(shared_seconds, compute_per_sequence - per_sequence_seconds),
        "bound_batch_without_kv": meeting_batch(shared_seconds, weight_compute),
    }


def meeting_batch(shared_seconds: float, net_seconds_per_sequence: float) -> int | None:
    """The smallest batch whose compute outlasts its reads; None when each added sequence reads longer."""
    if net_seconds_per_sequence <= 0:
        return None
    return max(1, math.ceil(shared_seconds / net_seconds_per_sequence))


def ratio_steps(baseline_terms: dict[str, int], method_terms: dict[str, int]) -> list[dict[str, Any]]:
    """Why a method reads 1/x of the baseline's bytes: the terms added one group at a time.

    Each step adds a group's bytes to both sides and gives the speed-up so far; the first is the
    Linear weights alone (2.00 against FP16, 4.00 against FP32), the last the whole step.
    """
    known = {key for _, keys in RATIO_GROUPS for key in keys}
    extra = sorted((set(baseline_terms) | set(method_terms)) - known)
    groups = [*RATIO_GROUPS, *((key, (key,)) for key in extra)]
    steps, baseline_total, method_total = [], 0, 0
    for label, keys in groups:
        baseline_bytes = sum(baseline_terms.get(key, 0) for key in keys)
        method_bytes = sum(method_terms.get(key, 0) for key in keys)
        if not baseline_bytes and not method_bytes:
            continue
        baseline_total, method_total = baseline_total + baseline_bytes, method_total + method_bytes
        steps.append(
            {
                "term": label,
                "baseline_bytes": baseline_bytes,
                "method_bytes": method_bytes,
                "speedup_so_far": baseline_total / method_total if method_total else None,
            }
        )
    return steps


def decode_plan(
    arch: Architecture, inventory: WeightInventory, method: str, settings: Settings, gpus: tuple[str, ...]
) -> dict[str, Any]:
    """Bytes per step and per token by term, the rate on each card, and the comparison with the baseline."""
    read = decode_read(arch, inventory, method, settings)
    ops = decode_ops(arch, inventory, settings)
    step = read.step_bytes(settings.batch)
    section: dict[str, Any] = {
        "batch": settings.batch,
        "context": settings.context,
        "bytes_per_step": step,
        "bytes_per_token": step / settings.batch,
        "terms": read.terms(settings.batch),
        "ops_per_sequence": ops,
        "gpus": [card_rate(read, ops, method, settings, gpu) for gpu in gpus],
    }
    if method != BASELINE:
        baseline = decode_read(arch, inventory, BASELINE, settings)
        section["against_baseline"] = {
            "speedup": baseline.step_bytes(settings.batch) / step,
            "steps": ratio_steps(baseline.terms(settings.batch), read.terms(settings.batch)),
        }
    return section


def add_decode(
    result: dict[str, Any], arch: Architecture, inventory: WeightInventory, settings: Settings, gpus: tuple[str, ...]
) -> dict[str, Any]:
    """A planner result with a `decode` section in each of its methods."""
    for entry in result["methods"]:
        entry["decode"] = decode_plan(arch, inventory, entry["method"], settings, gpus)
    return result
