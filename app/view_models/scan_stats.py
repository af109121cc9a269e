"""The scan statistics the GUI holds: one heatmap row per (decoder layer, Linear input).

The engine streams one `scan_layer` event per distinct Linear input, with the
names of the Linears that read it (q/k/v share one input, gate/up another). The
heatmap shows one row per decoder layer and input kind, grouped by kind
(attention input, attention output, MLP input, MLP down input). Every Linear is
still kept, because the memory cost of an outlier column is paid once per Linear
that reads it.

The experts of a mixture-of-experts layer each see only the tokens routed to
them, so their inputs differ: one heatmap row per layer aggregates them (the
largest abs-max of any expert, the share of routed tokens over the threshold),
and `experts_at(row)` gives the drill-down, one row per expert with the tokens
it saw; an expert that saw fewer than FEW_EXPERT_TOKENS has unreliable
statistics.

A scan streams a few hundred Linears into the window while it must stay
responsive, so everything the views read per event is kept incrementally:
every abs-max value in one growing buffer (no concatenation per read), the
abs-max histogram, the largest abs-max. Reading them costs O(1) or O(bins),
and counting outliers at a threshold is one vectorized pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from int8wb.engine.vocabulary import (
    EXPERT_KINDS,
    FEW_EXPERT_TOKENS,
    HIST_LOG10_MAX,
    HIST_LOG10_MIN,
    KIND_LABELS,
    KIND_ORDER,
)


@dataclass
class LinearStats:
    """One Linear layer's input statistics, as the engine sent them."""

    index: int
    name: str
    layer: int  # decoder layer, -1 outside the stack
    kind: str
    absmax: np.ndarray  # (in_features,) float32
    count_over: np.ndarray  # (in_features,) int64, tokens with |x| over the scan threshold
    hist: np.ndarray  # (bins,) int64, log10|x| histogram
    n_tokens: int
    out_features: int | None = None
    weight_absmax: np.ndarray | None = None  # (in_features,) max |W[:, j]| of the Linears smoothed together
    smoothable: bool = False  # whether SmoothQuant folds this input's factors exactly
    tokens: int | None = None  # calibration tokens that reached it (fewer than n_tokens for an expert)
    expert: int | None = None  # its expert in a mixture-of-experts layer

    @classmethod
    def from_payload(cls, payload: dict[str, Any], name: str, out_features: int | None) -> LinearStats:
        """The statistics of the Linear `name`, one of those that read the payload's input."""
        absmax = np.asarray(payload["absmax"], dtype=np.float32)
        count = np.asarray(payload.get("count_over", np.zeros(absmax.shape, np.int64)), dtype=np.int64)
        if absmax.ndim != 1 or count.shape != absmax.shape:
            raise ValueError(f"scan_layer {name!r}: absmax and count_over must be 1-D of one length")
        kind = payload.get("kind", "other")
        return cls(
            index=int(payload["index"]),
            name=str(name),
            layer=int(payload.get("layer", -1)),
            kind=kind if kind in KIND_LABELS else "other",
            absmax=absmax,
            count_over=count,
            hist=np.asarray(payload.get("hist", ()), dtype=np.int64),
            n_tokens=int(payload.get("n_tokens", 0)),
            out_features=out_features,
            weight_absmax=None
            if payload.get("weight_absmax") is None
            else np.asarray(payload["weight_absmax"], np.float32),
            smoothable=bool(payload.get("smoothable", False)),
            tokens=payload.get("tokens"),
            expert=payload.get("expert"),
        )


@dataclass
class ExpertRows:
    """The drill-down of one aggregated heatmap row: one row per expert of that layer and input kind."""

    kind: str
    layer: int
    experts: np.ndarray  # (n,) expert numbers
    tokens: np.ndarray  # (n,) calibration tokens each saw
    absmax: np.ndarray  # (n, width) float32, NaN past an expert's width
    share: np.ndarray  # (n, width) share of its tokens over the scan threshold

    @property
    def few(self) -> np.ndarray:
        """(n,) bool: experts whose statistics are unreliable, for too few tokens."""
        return self.tokens < FEW_EXPERT_TOKENS


class ScanStatistics:
    """Every Linear's statistics and the heatmap grid built from them.

    The grid has a fixed shape once the layer count and widths are known
    (`configure`), so a new layer fills one row in place; without `configure`
    rows are appended as they come (the grid grows, the views redraw once).
    """

    def __init__(self) -> None:
        self._listeners: list[Callable[[str, Any], None]] = []
        self.clear()

    # --- observing -------------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[str, Any], None]) -> None:
        """`listener(event, data)`: ("row", row index), ("reset", None), ("finished", None)."""
        self._listeners.append(listener)

    def _emit(self, event: str, data: Any = None) -> None:
        for listener in list(self._listeners):
            listener(event, data)

    # --- filling ---------------------------------------------------------------------------------

    def clear(self) -> None:
        """Forget everything (one "reset" event)."""
        self._clear_state()
        self._emit("reset")

    def _clear_state(self) -> None:
        self.linears: list[LinearStats] = []
        self.row_keys: list[tuple[str, int]] = []  # (kind, layer) per heatmap row
        self.row_names: list[str] = []  # the first Linear that filled each row
        self._row_of: dict[tuple[str, int], int] = {}
        self._routed: dict[tuple[str, int], tuple[np.ndarray, int]] = {}  # experts' (count over, tokens) per row
        self.absmax_grid = np.full((0, 0), np.nan, dtype=np.float32)  # (rows, max in_features)
        self.share_grid = np.full((0, 0), np.nan, dtype=np.float32)  # fraction of tokens over scan threshold
        self.row_filled = np.zeros(0, dtype=bool)
        self.hist_edges: np.ndarray | None = None
        self.hist_total: np.ndarray | None = None
        self.scan_threshold: float | None = None
        self.n_tokens = 0
        self.finished = False
        self._values = np.zeros(0, dtype=np.float32)  # every Linear's abs-max back to back, capacity-doubled
        self._n_values = 0
        self._bounds: list[int] = [0]  # Linear i's values are _values[_bounds[i]:_bounds[i + 1]]
        self._n_finite = self._n_posinf = 0
        self.absmax_max = 0.0  # largest finite abs-max seen (0 before any)
        self.absmax_hist: np.ndarray | None = None  # (bins,) int64 per-dimension abs-max counts on absmax_hist_edges
        self.absmax_hist_edges: np.ndarray | None = None

    def configure(self, layers: int, widths: dict[str, int]) -> None:
        """Lay out the grid for `layers` decoder layers and the input width of each kind (one "reset" event)."""
        self._clear_state()
        self.row_keys = sorted(
            ((kind, layer) for kind in KIND_ORDER if kind in widths for layer in range(layers)),
            key=lambda k: (KIND_ORDER.index(k[0]), k[1]),
        )
        self._row_of = {key: row for row, key in enumerate(self.row_keys)}
        self._resize(len(self.row_keys), max(widths.values(), default=0))
        self._emit("reset")

    def set_scan_info(self, threshold: float | None, hist_edges: np.ndarray | None) -> None:
        self.scan_threshold = threshold
        if hist_edges is not None:
            self.hist_edges = np.asarray(hist_edges, dtype=np.float64)
            if self.absmax_hist_edges is not None and not np.array_equal(self.hist_edges, self.absmax_hist_edges):
                self._rebin_absmax()

    def add_layer(self, payload: dict[str, Any]) -> int | None:
        """Take one `scan_layer` payload; returns the heatmap row it filled (None if its row was full).

        Emits "row"; a "reset" before it when the grid had to change its layout
        (a row not laid out, or a Linear wider than the grid).
        """
        names = list(payload["names"])
        out_features = payload.get("out_features") or [None] * len(names)
        readers = [LinearStats.from_payload(payload, name, out) for name, out in zip(names, out_features)]
        stats = readers[0]
        self.n_tokens = max(self.n_tokens, stats.n_tokens)
        if stats.hist.size:
            self.hist_total = stats.hist.copy() if self.hist_total is None else self.hist_total + stats.hist
        for reader in readers:  # each Linear that reads the input pays for its outlier columns
            self.linears.append(reader)
            self._append_values(reader.absmax)
        key = (stats.kind, stats.layer)
        row = self._row_of.get(key)
        relaid = False
        if row is None:
            row = self._add_row_key(key)
            relaid = True
        elif self.row_filled[row] and stats.kind not in EXPERT_KINDS:
            return None  # this layer's row of this kind is already filled (experts add to theirs)
        relaid = self._resize(len(self.row_keys), max(self.absmax_grid.shape[1], stats.absmax.size)) or relaid
        if relaid:
            self._emit("reset")
        width = stats.absmax.size
        if stats.kind in EXPERT_KINDS:
            self._merge_expert(row, key, stats)
        else:
            self.absmax_grid[row, :width] = stats.absmax
            self.share_grid[row, :width] = stats.count_over / max(stats.n_tokens, 1)
        self.row_filled[row] = True
        while len(self.row_names) < len(self.row_keys):
            self.row_names.append("")
        self.row_names[row] = stats.name
        self._emit("row", row)
        return row

    def _merge_expert(self, row: int, key: tuple[str, int], stats: LinearStats) -> None:
        """Fold one expert into its layer's row: the largest abs-max, the share over all routed tokens."""
        width = stats.absmax.size
        counts, tokens = self._routed.get(key, (np.zeros(0, np.int64), 0))
        if counts.size < width:
            counts = np.concatenate([counts, np.zeros(width - counts.size, np.int64)])
        counts[:width] += stats.count_over
        tokens += stats.n_tokens if stats.tokens is None else int(stats.tokens)
        self._routed[key] = (counts, tokens)
        self.absmax_grid[row, :width] = np.fmax(self.absmax_grid[row, :width], stats.absmax)
        self.share_grid[row, : counts.size] = counts / max(tokens, 1)

    def load_result(self, result: dict[str, Any]) -> None:
        """A whole scan result (the `scan` job's reply): fills whatever rows did not stream in."""
        self.set_scan_info(result.get("threshold"), result.get("hist_edges"))
        seen = {s.name for s in self.linears}
        for payload in result.get("layers", []):
            if not seen.issuperset(payload["names"]):
                self.add_layer(payload)
        self.finished = True
        self._emit("finished")

    def _append_values(self, absmax: np.ndarray) -> None:
        """Keep one Linear's abs-max in the flat buffer, the histogram and the running maximum."""
        needed = self._n_values + absmax.size
        if needed > self._values.size:
            grown = np.empty(max(needed, 2 * self._values.size, 4096), dtype=np.float32)
            grown[: self._n_values] = self._values[: self._n_values]
            self._values = grown
        self._values[self._n_values : needed] = absmax
        self._n_values = needed
        self._bounds.append(needed)
        finite = absmax[np.isfinite(absmax)]
        self._n_finite += finite.size
        self._n_posinf += int(np.count_nonzero(absmax == np.inf))
        if finite.size:
            self.absmax_max = max(self.absmax_max, float(finite.max()))
        if self.absmax_hist_edges is None:
            self._rebin_absmax()  # the first Linear with a histogram fixes the bins
        else:
            self.absmax_hist += _bin_counts(finite, self.absmax_hist_edges)

    def _rebin_absmax(self) -> None:
        """Histogram every abs-max from scratch: the bins became known or the scan named other edges."""
        if self.hist_edges is not None:
            edges = self.hist_edges
        elif self.hist_total is not None:
            edges = np.logspace(HIST_LOG10_MIN, HIST_LOG10_MAX, self.hist_total.size + 1)
        else:
            return
        values = self.all_absmax()
        self.absmax_hist_edges = edges
        self.absmax_hist = _bin_counts(values[np.isfinite(values)], edges)

    def _add_row_key(self, key: tuple[str, int]) -> int:
        """Insert a row keeping rows grouped by kind in KIND_ORDER, then by layer."""
        self.row_keys.append(key)
        self.row_keys.sort(key=lambda k: (KIND_ORDER.index(k[0]), k[1]))
        old_of = self._row_of
        self._row_of = {k: i for i, k in enumerate(self.row_keys)}
        if old_of and len(self.row_keys) > 1:
            self._reorder(old_of)
        return self._row_of[key]

    def _reorder(self, old_of: dict[tuple[str, int], int]) -> None:
        rows, width = len(self.row_keys), self.absmax_grid.shape[1]
        absmax = np.full((rows, width), np.nan, dtype=np.float32)
        share = np.full((rows, width), np.nan, dtype=np.float32)
        filled = np.zeros(rows, dtype=bool)
        names = [""] * rows
        for key, old in old_of.items():
            if old < self.absmax_grid.shape[0]:
                new = self._row_of[key]
                absmax[new], share[new], filled[new] = self.absmax_grid[old], self.share_grid[old], self.row_filled[old]
                names[new] = self.row_names[old] if old < len(self.row_names) else ""
        self.absmax_grid, self.share_grid, self.row_filled, self.row_names = absmax, share, filled, names

    def _resize(self, rows: int, width: int) -> bool:
        """Grow or shrink the grid keeping what fits; False when it already had that shape."""
        old_rows, old_width = self.absmax_grid.shape
        if (rows, width) == (old_rows, old_width):
            return False
        absmax = np.full((rows, width), np.nan, dtype=np.float32)
        share = np.full((rows, width), np.nan, dtype=np.float32)
        filled = np.zeros(rows, dtype=bool)
        keep_rows, keep_width = min(rows, old_rows), min(width, old_width)
        absmax[:keep_rows, :keep_width] = self.absmax_grid[:keep_rows, :keep_width]
        share[:keep_rows, :keep_width] = self.share_grid[:keep_rows, :keep_width]
        filled[:keep_rows] = self.row_filled[:keep_rows]
        self.absmax_grid, self.share_grid, self.row_filled = absmax, share, filled
        self.row_names += [""] * (rows - len(self.row_names))
        return True

    # --- reading ---------------------------------------------------------------------------------

    @property
    def rows_filled(self) -> int:
        return int(self.row_filled.sum())

    def row_of(self, key: tuple[str, int]) -> int | None:
        """The heatmap row of (kind, decoder layer), or None when the grid has no such row."""
        return self._row_of.get(key)

    def row_label(self, row: int) -> str:
        kind, layer = self.row_keys[row]
        if kind in EXPERT_KINDS:
            return f"layer {layer} · {KIND_LABELS[kind]} · largest of its experts (click for each)"
        return f"layer {layer} · {KIND_LABELS[kind]}"

    def experts_at(self, row: int) -> ExpertRows | None:
        """The experts behind an aggregated row, in expert order; None for a row that is not one."""
        kind, layer = self.row_keys[row]
        by_expert = {s.expert: s for s in self.linears if s.kind == kind and s.layer == layer and s.expert is not None}
        members = [by_expert[e] for e in sorted(by_expert)]  # one per expert (w1 and w3 read the same input)
        if kind not in EXPERT_KINDS or not members:
            return None
        width = max(s.absmax.size for s in members)
        absmax = np.full((len(members), width), np.nan, dtype=np.float32)
        share = np.full((len(members), width), np.nan, dtype=np.float32)
        tokens = np.array([s.n_tokens if s.tokens is None else s.tokens for s in members], dtype=np.int64)
        for i, s in enumerate(members):
            absmax[i, : s.absmax.size] = s.absmax
            share[i, : s.absmax.size] = s.count_over / max(tokens[i], 1)
        experts = np.array([s.expert for s in members], dtype=np.int64)
        return ExpertRows(kind, layer, experts, tokens, absmax, share)

    def kind_spans(self) -> list[tuple[str, int, int]]:
        """(kind, first row, last row + 1) for each kind present, in heatmap order."""
        spans: list[tuple[str, int, int]] = []
        for row, (kind, _) in enumerate(self.row_keys):
            if spans and spans[-1][0] == kind:
                spans[-1] = (kind, spans[-1][1], row + 1)
            else:
                spans.append((kind, row, row + 1))
        return spans

    def dimension_profile(self, dim: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per kind: (decoder layers, abs-max of `dim` in each), for the rows that have that dimension."""
        profile: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for kind, start, stop in self.kind_spans():
            layers = np.array([self.row_keys[r][1] for r in range(start, stop)])
            values = (
                self.absmax_grid[start:stop, dim] if dim < self.absmax_grid.shape[1] else np.full(stop - start, np.nan)
            )
            keep = self.row_filled[start:stop] & np.isfinite(values)
            if keep.any():
                profile[kind] = (layers[keep], values[keep].astype(np.float64))
        return profile

    def all_absmax(self) -> np.ndarray:
        """Every Linear's per-dimension abs-max, back to back (each Linear counts: memory is per Linear).

        A read-only view of the buffer, no copy: valid until the next Linear arrives.
        """
        view = self._values[: self._n_values]
        view.flags.writeable = False
        return view

    def count_finite_over(self, threshold: float) -> tuple[int, int]:
        """(finite abs-max values over `threshold`, finite values in all): the fraction without sorting."""
        with np.errstate(invalid="ignore"):
            over = int(np.count_nonzero(self.all_absmax() > threshold)) - self._n_posinf
        return over, self._n_finite

    def over_per_linear(self, threshold: float) -> np.ndarray:
        """(Linears,) int64: each Linear's dimensions with abs-max over `threshold`, in arrival order."""
        with np.errstate(invalid="ignore"):
            positions = np.flatnonzero(self.all_absmax() > threshold)  # few: outliers are rare
        owners = np.searchsorted(self._bounds, positions, side="right") - 1
        return np.bincount(owners, minlength=len(self.linears)).astype(np.int64)


def _bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(bins,) int64: positive `values` on `edges` as np.histogram counts them, values outside in the end bins."""
    values = values[values > 0]
    bins = np.searchsorted(edges, values, side="right") - 1
    np.clip(bins, 0, edges.size - 2, out=bins)
    return np.bincount(bins, minlength=edges.size - 1).astype(np.int64)
