"""The heatmap after SmoothQuant: what the INT8 quantizer sees at a given alpha, computed in the window.

For every heatmap row whose input SmoothQuant smooths (the scan says which, and sends
max |W[:, j]| over the Linears that share the input), the factors
s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) are those of engine.vocabulary.smoothing_factors,
the very function the engine smooths with. The "activations" view shows max|X_j| / s_j,
the abs-max the per-token quantizer meets; the "weights" view shows max|W_j| * s_j, where
the outlier dimensions reappear. Rows SmoothQuant leaves alone show their values as they are.
Moving alpha needs no engine round trip: the scan already holds both abs-maxes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from int8wb.app.view_models.scan_stats import ScanStatistics
from int8wb.engine.vocabulary import DEFAULT_ALPHA, check_alpha, smoothing_factors

VIEW_ACTIVATIONS = "activations"
VIEW_WEIGHTS = "weights"
VIEW_LABELS = {
    VIEW_ACTIVATIONS: "activation abs-max as INT8 sees it",
    VIEW_WEIGHTS: "weight abs-max per input column",
}


class SmoothingViewModel:
    """alpha, whether to smooth, and which side to show; `grid()` is the heatmap's grid for them."""

    def __init__(self, stats: ScanStatistics) -> None:
        self.stats = stats
        self.alpha = DEFAULT_ALPHA
        self.smoothed = False
        self.view = VIEW_ACTIVATIONS
        self._listeners: list[Callable[[], None]] = []
        self._cache: tuple[Any, np.ndarray] | None = None

    def subscribe(self, listener: Callable[[], None]) -> None:
        """`listener()` after every change of alpha, of the toggle or of the view."""
        self._listeners.append(listener)

    def set_alpha(self, alpha: float) -> None:
        self.alpha = check_alpha(alpha)
        self._changed()

    def set_smoothed(self, smoothed: bool) -> None:
        self.smoothed = bool(smoothed)
        self._changed()

    def set_view(self, view: str) -> None:
        if view not in VIEW_LABELS:
            raise ValueError(f"unknown view {view!r}")
        self.view = view
        self._changed()

    @property
    def active(self) -> bool:
        """Whether the heatmap shows something else than the scan's activation abs-max."""
        return self.smoothed or self.view == VIEW_WEIGHTS

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()

    def grid(self) -> np.ndarray:
        """(rows, width) float32, the shape of the scan's grid; recomputed only when something changed."""
        key = (self.alpha, self.smoothed, self.view, self.stats.absmax_grid.shape, self.stats.rows_filled)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._compute())
        return self._cache[1]

    def weights_of_row(self, row: int) -> np.ndarray | None:
        """max |W[:, j]| of the Linears that read row `row`'s input, if the scan sent it."""
        stats = self._linear_of_row(row)
        if stats is None or stats.weight_absmax is None or stats.weight_absmax.shape != stats.absmax.shape:
            return None
        return stats.weight_absmax

    def _linear_of_row(self, row: int):
        name = self.stats.row_names[row] if row < len(self.stats.row_names) else ""
        return next((s for s in self.stats.linears if s.name == name), None)

    def _compute(self) -> np.ndarray:
        source = self.stats.absmax_grid
        grid = np.full(source.shape, np.nan, dtype=np.float32)
        for row in np.flatnonzero(self.stats.row_filled):
            stats = self._linear_of_row(row)
            weights = self.weights_of_row(row)
            if stats is None or weights is None:
                continue
            width = stats.absmax.size
            factors = (
                smoothing_factors(stats.absmax, weights, self.alpha) if self.smoothed and stats.smoothable else 1.0
            )
            if self.view == VIEW_WEIGHTS:
                grid[row, :width] = weights * factors
            else:
                grid[row, :width] = stats.absmax / factors
        return grid
