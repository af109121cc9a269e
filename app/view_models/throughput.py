"""The planner dialog's throughput section, without Qt: decode tokens/s per method and card, and why.

A `plan_memory` result carries, per method, a `decode` section (engine/planning/throughput.py):
the bytes one decode step reads by term, the bandwidth-bound rate on each card, the batch where
compute takes over, and the comparison with the floating-point baseline term by term. This module
turns it into the table's cells and the terms under a selected cell. Bytes here are decimal GB,
as memory bandwidths are quoted, so that bytes ÷ bandwidth can be checked by hand.
"""

from __future__ import annotations

from typing import Any

from int8wb.app.view_models.plan import Term, method_label, ordered_terms, plan_entries
from int8wb.engine.errors import BadInput

READ_TERM_NOTES = {
    "float weight": "every Linear weight in the float dtype, once per step",
    "int8 weight": "1 byte per Linear weight, once per step",
    "scales": "float32 scale per output row (one per tensor for absmax)",
    "outlier indices": "int64 index of each outlier column",
    "outlier weight": "outlier weight columns kept in the float dtype",
    "bias": "Linear biases in the float dtype",
    "float (not quantized)": "norms, LM head (a tied embedding is the LM head)",
    "KV cache read": "K and V of every token so far, once per sequence",
    "input embedding rows": "one row of an untied embedding table per sequence",
}

OPS_NOTES = {
    "Linear weights": "2 operations per weight, at the method's peak",
    "LM head": "2 per weight, at the float peak",
    "attention": "4 × layers × context × heads × head_dim, at the float peak",
}


def format_gb(count: float) -> str:
    """Bytes in decimal units (GB = 10⁹ bytes), as bandwidths are quoted."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(count) >= size:
            return f"{count / size:,.2f} {unit}"
    return f"{count:,.0f} B"


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f} ms" if seconds >= 1e-4 else f"{seconds * 1e6:,.2f} µs"


class ThroughputViewModel:
    """The decode sections of a `plan_memory` result, as the dialog shows them."""

    def __init__(self, result: dict[str, Any]) -> None:
        self.result = result
        self._decode = {
            entry["method"]: entry["decode"] for entry in plan_entries(result, "decode", "decode throughput")
        }
        self.methods: list[str] = list(self._decode)
        self.gpus: list[str] = [card["gpu"] for card in next(iter(self._decode.values()))["gpus"]]
        self.dtype = result.get("settings", {}).get("dtype")

    def headline(self) -> str:
        decode = self._decode[self.methods[0]]
        return (
            f"Batch {decode['batch']:,}, context {decode['context']:,}: a step reads every weight once and each "
            "sequence's KV cache, so a card's bandwidth bounds tokens/s (cards in a row take turns: one card's "
            "bandwidth is the bound). GB = 10⁹ bytes."
        )

    def label(self, method: str) -> str:
        return method_label(method, self.dtype)

    def bytes_per_token(self, method: str) -> str:
        return format_gb(self._section(method)["bytes_per_token"])

    def cell(self, method: str, gpu: str) -> str:
        """tokens/s per sequence on a card, and for the batch when there is more than one sequence."""
        card = self._card(method, gpu)
        text = f"{card['tokens_per_s_per_sequence']:,.1f}"
        batch = self._section(method)["batch"]
        return text if batch == 1 else f"{text} (× {batch:,} = {card['tokens_per_s_batch']:,.0f})"

    def terms(self, method: str, gpu: str) -> list[Term]:
        """From the bytes a step reads to tokens/s on `gpu`, the batch where compute takes over, and the ratio."""
        decode, card = self._section(method), self._card(method, gpu)
        reads = tuple(
            Term(key, None, READ_TERM_NOTES.get(key, ""), 1, text=format_gb(value))
            for key, value in ordered_terms(decode["terms"], READ_TERM_NOTES)
        )
        batch = decode["batch"]
        lines = [
            Term(
                "Read per step",
                None,
                f"batch {batch:,} × context {decode['context']:,}",
                0,
                reads,
                text=format_gb(decode["bytes_per_step"]),
            ),
            Term(
                f"÷ {gpu} bandwidth",
                None,
                "published memory bandwidth",
                0,
                text=f"{card['bandwidth_bytes_per_s'] / 1e9:,.0f} GB/s",
            ),
            Term(
                "= step time",
                None,
                "the shortest a step takes: reading at full bandwidth",
                0,
                text=format_seconds(card["step_seconds"]),
            ),
            Term(
                "tokens/s",
                None,
                f"{card['tokens_per_s_batch']:,.1f} for the batch of {batch:,}",
                0,
                text=f"{card['tokens_per_s_per_sequence']:,.1f} per sequence",
            ),
            self._compute_term(decode, card),
        ]
        against = decode.get("against_baseline")
        if against:
            lines.append(self._ratio_term(against))
        return lines

    def _compute_term(self, decode: dict[str, Any], card: dict[str, Any]) -> Term:
        ops = tuple(
            Term(key, None, OPS_NOTES.get(key, ""), 1, text=f"{value / 1e9:,.2f} G")
            for key, value in ordered_terms(decode["ops_per_sequence"], OPS_NOTES)
        )
        peak = f"{card['linear_peak_ops_per_s'] / 1e12:,.0f} T/s for the Linears, {card['float_peak_ops_per_s'] / 1e12:,.1f} T/s float"
        bound, alone = card["bound_batch"], card["bound_batch_without_kv"]
        verdict = (
            f"compute takes over from batch {bound:,} (weights alone: {alone:,})"
            if bound
            else f"bandwidth-bound at any batch: a sequence's KV cache takes longer to read than its arithmetic "
            f"(weights alone: compute from batch {alone:,})"
        )
        state = "bandwidth-bound" if card["bandwidth_bound"] else "compute-bound"
        return Term(
            f"Compute per step: {state}",
            None,
            f"{verdict}; {peak}",
            0,
            ops,
            text=format_seconds(card["compute_seconds"]),
        )

    def _ratio_term(self, against: dict[str, Any]) -> Term:
        steps = tuple(
            Term(
                f"+ {step['term']}",
                None,
                f"{format_gb(step['baseline_bytes'])} against {format_gb(step['method_bytes'])}",
                1,
                text=f"{step['speedup_so_far']:.2f}×" if step["speedup_so_far"] else "",
            )
            for step in against["steps"]
        )
        return Term(
            f"Against {self.label('baseline')}",
            None,
            "fewer bytes per token, so as many times the tokens/s; adding the terms one at a time shows what keeps it below the Linear weights' ratio",
            0,
            steps,
            text=f"{against['speedup']:.2f}×",
        )

    def _section(self, method: str) -> dict[str, Any]:
        if method not in self._decode:
            raise BadInput(f"the plan has no decode throughput for {method!r}")
        return self._decode[method]

    def _card(self, method: str, gpu: str) -> dict[str, Any]:
        for card in self._section(method)["gpus"]:
            if card["gpu"] == gpu:
                return card
        raise BadInput(f"the plan has no card {gpu!r}")
