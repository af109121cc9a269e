"""How many GPUs of each kind a model needs in each format: whole decoder layers placed card after card.

The bytes of each term come from engine.planning.planner; this module places them: embeddings, each decoder
layer with its share of the KV cache, then the head, filled into cards in order the way accelerate's sequential
`device_map` does, against a per-card budget (usable memory less runtime overhead and activation workspace).
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from typing import Any

from int8wb.engine.errors import BadInput
from int8wb.engine.planning.planner import (
    MAX_CONTEXT,
    PLAN_METHODS,
    Architecture,
    Settings,
    WeightInventory,
    active_parameters,
    check_settings,
    kv_cache_bytes,
    layer_weight_bytes,
    linear_terms,
    weight_terms,
    workspace_terms,
)
from int8wb.engine.vocabulary import GIB, GPUS


def check_gpu(gpu: str) -> int:
    if gpu not in GPUS:
        raise BadInput(f"unknown GPU {gpu!r}; use one of {', '.join(GPUS)}")
    return GPUS[gpu]


def place_on_gpus(units: list[int], budget: int) -> list[int] | None:
    """Fill cards in order with whole units (embeddings, each layer, head); None if a unit never fits."""
    if budget <= 0 or any(unit > budget for unit in units):
        return None
    cards = [0]
    for unit in units:
        if cards[-1] + unit > budget:
            cards.append(0)
        cards[-1] += unit
    return cards


def weight_units(inventory: WeightInventory, method: str, settings: Settings) -> list[int]:
    """Weight bytes of each unit placed on a card: first (embeddings), each decoder layer, last (head)."""
    fb = settings.float_bytes
    outside = [s for s in inventory.linears if s.layer is None]
    first = inventory.float_elements_first * fb
    first += sum(sum(linear_terms(s, method, fb, settings.outlier_fraction).values()) for s in outside)
    return [first, *layer_weight_bytes(inventory, method, settings), inventory.float_elements_last * fb]


def gpu_plan(
    arch: Architecture,
    inventory: WeightInventory,
    method: str,
    settings: Settings,
    gpu: str,
    units: list[int] | None = None,
) -> dict[str, Any]:
    """How many cards of one kind the model needs in a format, with the per-card budget spelled out.

    Each decoder layer is placed with its share of the KV cache; `units` (from `weight_units`)
    may be passed in when the same weights are planned for many contexts.
    """
    capacity = check_gpu(gpu)
    usable = int(capacity * settings.usable_fraction)
    workspace = sum(workspace_terms(arch, inventory, method, settings).values())
    budget = usable - settings.overhead_bytes - workspace
    kv_per_layer = kv_cache_bytes(arch, settings) // arch.num_layers
    units = list(units if units is not None else weight_units(inventory, method, settings))
    units[1:-1] = [weight + kv_per_layer for weight in units[1:-1]]
    cards = place_on_gpus(units, budget)
    state = sum(units)
    return {
        "gpu": gpu,
        "capacity_bytes": capacity,
        "usable_bytes": usable,
        "overhead_bytes": settings.overhead_bytes,
        "workspace_bytes": workspace,
        "budget_per_gpu_bytes": budget,
        "state_bytes": state,
        "needed": len(cards) if cards else None,
        "needed_if_divisible": math.ceil(state / budget) if budget > 0 else None,
        "per_gpu_bytes": cards,
        "why_not": None if cards else _why_not(budget, units),
    }


def _why_not(budget: int, units: list[int]) -> str:
    if budget <= 0:
        return "runtime overhead and activation workspace alone exceed the usable memory of one card"
    return f"one layer with its KV cache ({max(units) / GIB:.2f} GiB) exceeds a card's budget ({budget / GIB:.2f} GiB)"


def fits_on(
    arch: Architecture, inventory: WeightInventory, method: str, settings: Settings, gpu: str, count: int
) -> bool:
    """True when the model in `method` fits on `count` cards of kind `gpu`."""
    _check_count(count)
    needed = gpu_plan(arch, inventory, method, settings, gpu)["needed"]
    return needed is not None and needed <= count


def _check_count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise BadInput(f"the number of GPUs must be a whole number of at least 1, got {count!r}")


def largest_context(
    arch: Architecture,
    inventory: WeightInventory,
    method: str,
    settings: Settings,
    gpu: str,
    count: int,
    limit: int = MAX_CONTEXT,
) -> int:
    """The longest context (at the settings' batch) that still fits on `count` cards; 0 if none does."""
    _check_count(count)
    units = weight_units(inventory, method, settings)

    def fits(context: int) -> bool:
        needed = gpu_plan(arch, inventory, method, replace(settings, context=context), gpu, units)["needed"]
        return needed is not None and needed <= count

    if not fits(1):
        return 0
    low, high = 1, limit
    if fits(high):
        return high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


# --- the whole plan -------------------------------------------------------------------------------


def plan(
    arch: Architecture, inventory: WeightInventory, settings: Settings, methods=PLAN_METHODS, gpus=tuple(GPUS)
) -> dict[str, Any]:
    """Every term for every method and card kind, as JSON-able data."""
    check_settings(settings)
    result_methods = []
    for method in methods:
        weights = weight_terms(inventory, method, settings)
        kv = kv_cache_bytes(arch, settings)
        workspace = workspace_terms(arch, inventory, method, settings)
        cards = []
        for gpu in gpus:
            card = gpu_plan(arch, inventory, method, settings, gpu)
            if card["needed"] is not None:
                card["largest_context_on_needed"] = largest_context(
                    arch, inventory, method, settings, gpu, card["needed"]
                )
            cards.append(card)
        result_methods.append(
            {
                "method": method,
                "weights": {"bytes": sum(weights.values()), "terms": weights},
                "kv_cache": {"bytes": kv},
                "workspace": {"bytes": sum(workspace.values()), "terms": workspace},
                "total_bytes": sum(weights.values()) + kv + sum(workspace.values()),
                "gpus": cards,
            }
        )
    notes = []
    if arch.max_positions and settings.context > arch.max_positions:
        notes.append(
            f"context {settings.context} is longer than the {arch.max_positions} positions the model was trained for"
        )
    return {
        "architecture": {
            **asdict(arch),
            "parameters": inventory.parameters,
            "active_parameters": active_parameters(arch, inventory),
            "quantizable_linears": len(inventory.linears),
        },
        "settings": {k: v for k, v in asdict(settings).items() if k != "extra"} | {"float_bytes": settings.float_bytes},
        "methods": result_methods,
        "notes": notes,
    }


def largest_fitting(
    candidates: list[tuple[Architecture, WeightInventory]], method: str, settings: Settings, gpu: str, count: int
) -> Architecture | None:
    """The candidate with the most parameters that fits on `count` cards of kind `gpu`, or None."""
    fitting = [(inv.parameters, arch) for arch, inv in candidates if fits_on(arch, inv, method, settings, gpu, count)]
    return max(fitting, key=lambda pair: pair[0])[1] if fitting else None
