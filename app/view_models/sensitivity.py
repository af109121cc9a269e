"""A sensitivity sweep's result (engine.measure.sensitivity) as the panel shows it, without Qt.

The sweep ranks groups (the Linears that read one input, each Linear, or a decoder layer's Linears) by the divergence from the baseline
each causes when it alone is quantized, per megabyte it would keep in floating point, walks that ranking
re-measuring the growing list as a whole (the curve "float MB kept -> perplexity": the perplexity measured
on the sweep's tokens, the one each point's divergence gives, and that one's upper confidence bound),
stops once the bound is within the target, and checks the chosen list on held-out tokens it never
measured on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MB = 1e6


def change_pct(value: float, baseline: float) -> float:
    return 100.0 * (value / baseline - 1.0)


def short_name(group: str) -> str:
    """A group's name as a table cell shows it: its decoder layer, then its Linears
    (`model.layers.18.self_attn.q_proj+k_proj+v_proj` -> `18: q/k/v_proj`, `model.layers.18` -> `layer 18`,
    an expert's `...experts.5.w1+w3` -> `3: experts.5.w1+w3`); a name outside the decoder layers as it is."""
    parts = group.split(".")
    layer = next((i for i, part in enumerate(parts) if part.isdigit()), None)
    if layer is None:
        return group
    rest = parts[layer + 1 :]
    if not rest:
        return f"layer {parts[layer]}"
    kept = [
        part
        for i, part in enumerate(rest)
        if i == len(rest) - 1 or part.isdigit() or (i + 1 < len(rest) and rest[i + 1].isdigit())
    ]
    kept[-1] = _joined(kept[-1].split("+"))
    return f"{parts[layer]}: {'.'.join(kept)}"


def _joined(names: list[str]) -> str:
    """`q_proj`, `k_proj`, `v_proj` -> `q/k/v_proj`: Linears that share a suffix, written once."""
    suffixes = {name.rpartition("_")[2] for name in names}
    if len(names) == 1 or len(suffixes) > 1 or not all("_" in name for name in names):
        return "+".join(names)
    return "/".join(name.rpartition("_")[0] for name in names) + "_" + suffixes.pop()


@dataclass
class RankedGroup:
    """One group of the ranking: what keeping it in floating point costs, and the damage it does quantized alone."""

    rank: int
    group: str
    linears: int
    float_mb: float
    kl_divergence: float  # of the floating-point model with only this group quantized, from the baseline, per token
    perplexity: float  # of that model
    change_pct: float  # against the baseline


def ranking(result: dict[str, Any]) -> list[RankedGroup]:
    """Every group, by the divergence it causes alone per megabyte, worst first (the order the list takes them in)."""
    by_group = {entry["group"]: entry for entry in result["groups"]}
    rows = []
    for rank, name in enumerate(result["ranking"], start=1):
        entry = by_group[name]
        rows.append(
            RankedGroup(
                rank,
                name,
                len(entry["modules"]),
                entry["float_bytes"] / MB,
                entry["kl_divergence"],
                entry["perplexity"],
                change_pct(entry["perplexity"], result["baseline"]),
            )
        )
    return rows


@dataclass
class Curve:
    """The greedy list's measured steps, nothing kept first."""

    megabytes: np.ndarray  # float MB kept
    perplexity: np.ndarray  # measured on the sweep's tokens
    expected: np.ndarray  # what the divergence from the baseline gives
    bound: np.ndarray  # the upper confidence bound of `expected` for other text: the sweep stops under the target


def curve(result: dict[str, Any]) -> Curve:
    points, base = result["curve"], result["baseline"]

    def series(values) -> np.ndarray:
        return np.array(list(values), dtype=np.float64)

    return Curve(
        series(p["float_bytes"] / MB for p in points),
        series(p["perplexity"] for p in points),
        series(base * (1 + p["expected_pct"] / 100) for p in points),
        series(base * (1 + p["upper_pct"] / 100) for p in points),
    )


def goal(result: dict[str, Any]) -> float:
    """The perplexity the target allows."""
    return result["baseline"] * (1.0 + result["target_pct"] / 100.0)


def verdict(result: dict[str, Any]) -> str:
    """One sentence: whether the list reaches the target, and at what floating-point cost."""
    base, method = result["baseline"], result["method"]
    everything = f"{method} alone: {change_pct(result['quantized'], base):+.2f}% perplexity"
    count, megabytes = len(result["skip_modules"]), result["float_bytes"] / MB
    last = result["curve"][-1]
    if not result["reached"]:
        return (
            f"{everything}. The target {result['target_pct']:+g}% is not reached: the best the ranking reaches is "
            f"{result['best_reachable_pct']:+.2f}% (with {count} Linears, {megabytes:.1f} MB in floating point)."
        )
    if not count:
        return f"{everything}: already within the target {result['target_pct']:+g}%, nothing to keep in float."
    return (
        f"{everything}. Keeping {count} Linear{'' if count == 1 else 's'} ({megabytes:.1f} MB) in floating point "
        f"meets the target {result['target_pct']:+g}% with {result['confidence']:.0%} confidence: on the sweep's "
        f"{result['sweep_tokens']:,} tokens {last['change_pct']:+.2f}%, its divergence gives {last['expected_pct']:+.2f}%, "
        f"at most {last['upper_pct']:+.2f}% on other text."
    )


def held_out(result: dict[str, Any]) -> str:
    """The check of the chosen list on tokens the sweep never saw."""
    checked = result["holdout"]
    within = checked["change_pct"] <= result["target_pct"]
    return (
        f"Held-out check on {result['holdout_tokens']:,} other tokens: baseline {checked['baseline']:.3f}, "
        f"{result['method']} {checked['quantized']:.3f}, with the list {checked['with_skip_list']:.3f} "
        f"({checked['change_pct']:+.2f}%: {'within' if within else 'outside'} the target)."
        + "".join(f"\nNote: {note}." for note in result["notes"])
    )


def source_of(result: dict[str, Any]) -> str:
    """Where a skip list came from, for the window's note."""
    return f"the {result['method']} sweep's list for {result['target_pct']:+g}%"
