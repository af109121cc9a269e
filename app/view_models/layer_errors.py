"""Where the error is: each method's output SQNR on every Linear, laid out on the heatmap's rows.

A scan asked for `error_methods` sends, in each `scan_layer` event, `sqnr_db` = {Linear name: {method: dB,
or None where the method's output equals the floating-point one}} for the Linears that read that input,
measured with the Linear's true floating-point input (engine.quant.layer_errors). The grid here has the
outlier heatmap's rows (decoder layer x Linear input), so the two maps line up row for row; the Linears that
read one input (q, k, v; gate, up) sit side by side in one column group per method. A cell is one (Linear,
method).

Every record is kept by Linear name and the grid is rebuilt from them whenever the heatmap's layout
changes (it has a few hundred cells, so rebuilding costs nothing worth saving).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from int8wb.app.view_models.scan_stats import ScanStatistics
from int8wb.engine.vocabulary import METHOD_SHORT_LABELS, METHODS

TOP_DIMS_SHOWN = 8


@dataclass
class LinearError:
    """One Linear's output SQNR per method, and its input abs-max (for its outlier columns)."""

    name: str
    layer: int
    kind: str
    sqnr_db: dict[str, float | None]
    absmax: np.ndarray  # (in_features,) float32

    def outlier_dims(self, threshold: float) -> np.ndarray:
        """Input dimensions over `threshold`, the largest abs-max first."""
        with np.errstate(invalid="ignore"):
            dims = np.flatnonzero(self.absmax > threshold)
        return dims[np.argsort(-self.absmax[dims], kind="stable")]


def format_db(value: float | None) -> str:
    """An SQNR for people: None means the method reproduced the output exactly."""
    if value is None:
        return "exact (no error)"
    if not math.isfinite(value):
        return "all noise" if value < 0 else "exact (no error)"
    return f"{value:.1f} dB"


class LayerErrors:
    """The error grid over a `ScanStatistics`' rows; listeners get ("reset" | "row" | "finished", data)."""

    def __init__(self, stats: ScanStatistics) -> None:
        self.stats = stats
        self._listeners: list[Callable[[str, Any], None]] = []
        self.begin(())
        stats.subscribe(lambda event, _: self._rebuild() if event == "reset" else None)

    def subscribe(self, listener: Callable[[str, Any], None]) -> None:
        self._listeners.append(listener)

    def _emit(self, event: str, data: Any = None) -> None:
        for listener in list(self._listeners):
            listener(event, data)

    # --- filling ---------------------------------------------------------------------------------

    def begin(self, methods: list[str] | tuple[str, ...]) -> None:
        """A new scan that measures `methods` (none: no error pass); forgets the last one's figures."""
        self.methods: list[str] = [m for m in METHODS if m in methods]
        self.linears: dict[str, LinearError] = {}
        self.summary: dict[str, dict[str, Any]] = {}
        self.finished = False
        self._rebuild()

    def add_layer(self, payload: dict[str, Any]) -> int | None:
        """Take one `scan_layer` payload (one input, read by the Linears it names); returns the grid row it
        filled (None when it carries no errors)."""
        per_linear = payload.get("sqnr_db")
        if not isinstance(per_linear, dict):
            return None
        absmax = np.asarray(payload["absmax"], dtype=np.float32)
        layer, kind = int(payload.get("layer", -1)), str(payload.get("kind", "other"))
        records = [
            LinearError(name, layer, kind, {m: (None if v is None else float(v)) for m, v in sqnr.items()}, absmax)
            for name, sqnr in per_linear.items()
            if isinstance(sqnr, dict)
        ]
        new_methods = {m for record in records for m in record.sqnr_db if m not in self.methods}
        row = self.stats.row_of((kind, layer))
        placed = row is not None and not new_methods
        for record in records:
            self.linears[record.name] = record
            placed = placed and self._place(record, row)
        if not placed:
            self.methods = [m for m in METHODS if m in self.methods or m in new_methods]
            self._rebuild()
            return self.stats.row_of((kind, layer))
        self._emit("row", row)
        return row

    def load_result(self, result: dict[str, Any]) -> None:
        """The scan's reply: the per-method summary, and any Linear that did not stream in."""
        for payload in result.get("layers", []):
            if not set(self.linears).issuperset(payload.get("names", ())):
                self.add_layer(payload)
        self.summary = dict(result.get("errors") or {})
        self.finished = True
        self._emit("finished")

    def _rebuild(self) -> None:
        """Lay every record out again on the statistics' current rows (one "reset")."""
        self.row_linears: list[list[str]] = [[] for _ in self.stats.row_keys]
        for record in self.linears.values():
            row = self.stats.row_of((record.kind, record.layer))
            if row is not None:
                self.row_linears[row].append(record.name)
        self.slots = max([1, *(len(names) for names in self.row_linears)])
        self.grid = np.full((len(self.row_linears), self.slots * len(self.methods)), np.nan, dtype=np.float32)
        for row, names in enumerate(self.row_linears):
            for slot, name in enumerate(names):
                self._fill(row, slot, self.linears[name])
        self._emit("reset")

    def _place(self, record: LinearError, row: int) -> bool:
        """Put a record into its row in place; False when the row has no free slot (the grid must widen)."""
        names = self.row_linears[row]
        if record.name not in names:
            if len(names) >= self.slots:
                return False
            names.append(record.name)
        self._fill(row, names.index(record.name), record)
        return True

    def _fill(self, row: int, slot: int, record: LinearError) -> None:
        for group, method in enumerate(self.methods):
            if method in record.sqnr_db:
                value = record.sqnr_db[method]
                self.grid[row, group * self.slots + slot] = math.inf if value is None else value

    # --- reading ---------------------------------------------------------------------------------

    @property
    def has_errors(self) -> bool:
        return bool(self.linears)

    def cell(self, row: int, column: int) -> tuple[LinearError, str] | None:
        """(the Linear, the method) a grid cell shows, or None for an empty cell."""
        if not (0 <= row < len(self.row_linears) and 0 <= column < self.grid.shape[1]):
            return None
        group, slot = divmod(column, self.slots)
        names = self.row_linears[row]
        if slot >= len(names):
            return None
        record = self.linears[names[slot]]
        method = self.methods[group]
        return (record, method) if method in record.sqnr_db else None

    def describe_cell(self, row: int, column: int, threshold: float) -> str:
        """The hover text: Linear, method, SQNR and the Linear's outlier columns at `threshold`."""
        found = self.cell(row, column)
        if found is None:
            return ""
        record, method = found
        over = len(record.outlier_dims(threshold))
        return (
            f"{record.name} · {METHOD_SHORT_LABELS[method]} ({method}) · SQNR {format_db(record.sqnr_db[method])} · "
            f"{over} outlier column{'' if over == 1 else 's'} over {threshold:g}"
        )

    def describe_linear(self, name: str, threshold: float) -> str:
        """A Linear's error under every method next to its outlier dimensions (what a click shows)."""
        record = self.linears[name]
        errors = ", ".join(f"{METHOD_SHORT_LABELS[m]} {format_db(record.sqnr_db[m])}" for m in record.sqnr_db)
        dims = record.outlier_dims(threshold)
        if dims.size:
            shown = ", ".join(f"{d} ({record.absmax[d]:.3g})" for d in dims[:TOP_DIMS_SHOWN])
            more = f" and {dims.size - TOP_DIMS_SHOWN} more" if dims.size > TOP_DIMS_SHOWN else ""
            outliers = f"{dims.size} outlier dimensions over {threshold:g} (abs-max): {shown}{more}"
        else:
            outliers = f"no input dimension over {threshold:g}"
        return f"{name}\nSQNR: {errors}\n{outliers}"

    def summary_lines(self) -> list[str]:
        """Per method: median SQNR and how its loss follows the outlier columns (rank correlation)."""
        lines = []
        for method in self.methods:
            entry = self.summary.get(method) or {}
            median, correlation = entry.get("median_sqnr_db"), entry.get("loss_vs_outliers")
            if median is None:
                continue
            follows = f", loss vs outlier columns ρ {correlation:+.2f}" if correlation is not None else ""
            lines.append(f"{METHOD_SHORT_LABELS[method]}: median {median:.1f} dB{follows}")
        return lines

    def worst_lines(self) -> list[str]:
        """Per method: the Linear where it loses most."""
        return [
            f"{METHOD_SHORT_LABELS[m]}: worst {self.summary[m]['worst_linear']}"
            for m in self.methods
            if (self.summary.get(m) or {}).get("worst_linear")
        ]

    def column_key(self) -> str:
        """Which method each numbered column group is."""
        return " · ".join(f"{i} {METHOD_SHORT_LABELS[m]}" for i, m in enumerate(self.methods, start=1))

    def finite_range(self) -> tuple[float, float] | None:
        """(lowest, highest) finite SQNR in the grid, or None before any."""
        finite = self.grid[np.isfinite(self.grid)]
        return (float(finite.min()), float(finite.max())) if finite.size else None
