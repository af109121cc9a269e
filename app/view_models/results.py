"""Results of quantization and evaluation, one row per method, ready for the table and the chart."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.vocabulary import RESULT_GPUS

MB = 1e6

COLUMNS = (
    "method",
    "perplexity",
    "change",
    "int8 MB",
    "float MB",
    "model MB",
    "outlier cols",
    *RESULT_GPUS,
    "eval s",
)


@dataclass
class ResultRow:
    method: str
    perplexity: float | None = None
    relative_change: float | None = None
    int8_bytes: int | None = None
    float_bytes: int | None = None
    total_bytes: int | None = None
    outlier_dims: int | None = None
    seconds: float | None = None
    gpus: dict[str, int | None] = field(default_factory=dict)  # card -> GPUs needed

    def cells(self) -> list[str]:
        """The row as text, in COLUMNS order; unknown values are an em dash."""

        def mb(value: int | None) -> str:
            return "—" if value is None else f"{value / MB:,.1f}"

        def gpus(card: str) -> str:
            if card not in self.gpus:
                return "—"
            needed = self.gpus[card]
            return "does not fit" if needed is None else str(needed)

        return [
            self.method,
            "—" if self.perplexity is None else f"{self.perplexity:.3f}",
            "—" if self.relative_change is None else f"{self.relative_change:+.2%}",
            mb(self.int8_bytes),
            mb(self.float_bytes),
            mb(self.total_bytes),
            "—" if self.outlier_dims is None else f"{self.outlier_dims:,}",
            *(gpus(card) for card in RESULT_GPUS),
            "—" if self.seconds is None else f"{self.seconds:.1f}",
        ]


class ResultsModel:
    """Rows by method; baseline first. Quantize summaries, evaluation rows and memory plans merge in."""

    def __init__(self) -> None:
        self.rows: dict[str, ResultRow] = {}
        self.eval_tokens: int | None = None
        self.plan_note: str = ""
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()

    def clear(self) -> None:
        self.rows.clear()
        self.eval_tokens = None
        self.plan_note = ""
        self._changed()

    def _row(self, method: str) -> ResultRow:
        if method not in self.rows:
            self.rows[method] = ResultRow(method)
            ordered = sorted(self.rows.values(), key=lambda r: (r.method != "baseline",))
            self.rows = {r.method: r for r in ordered}
        return self.rows[method]

    def add_quantized(self, result: dict[str, Any]) -> None:
        """The `quantize` job's reply: {"models": [summary, ...]}."""
        for summary in result.get("models", []):
            row = self._row(summary["method"])
            row.int8_bytes, row.float_bytes = summary.get("int8_bytes"), summary.get("float_bytes")
            row.total_bytes, row.outlier_dims = summary.get("total_bytes"), summary.get("outlier_dims")
            row.perplexity = row.relative_change = row.seconds = None  # stale until evaluated again
        self._changed()

    def add_evaluation(self, result: dict[str, Any]) -> None:
        """The `evaluate` job's reply: {"settings", "corpus", "rows": [...]}."""
        self.eval_tokens = result.get("settings", {}).get("tokens")
        for entry in result.get("rows", []):
            row = self._row(entry["method"])
            for name in (
                "perplexity",
                "relative_change",
                "int8_bytes",
                "float_bytes",
                "total_bytes",
                "outlier_dims",
                "seconds",
            ):
                if entry.get(name) is not None:
                    setattr(row, name, entry[name])
        self._changed()

    def add_plan(self, result: dict[str, Any]) -> None:
        """The `plan_memory` job's reply: GPUs needed per method and card."""
        for entry in result.get("methods", []):
            if entry.get("method") in self.rows:
                self.rows[entry["method"]].gpus = {
                    card["gpu"]: card.get("needed") for card in entry.get("gpus", []) if "gpu" in card
                }
        self.plan_note = "; ".join(result.get("notes", []))
        self._changed()

    def set_plan_unavailable(self, reason: str) -> None:
        self.plan_note = f"GPUs needed: not available ({reason})"
        self._changed()

    @property
    def has_evaluation(self) -> bool:
        """Some method (or the baseline) has a measured perplexity."""
        return any(row.perplexity is not None for row in self.rows.values())

    def chart_data(self) -> tuple[list[str], list[float], float | None]:
        """(methods, perplexities, baseline perplexity) of the evaluated rows."""
        evaluated = [r for r in self.rows.values() if r.perplexity is not None]
        baseline = self.rows.get("baseline")
        return (
            [r.method for r in evaluated],
            [float(r.perplexity) for r in evaluated],
            None if baseline is None else baseline.perplexity,
        )
