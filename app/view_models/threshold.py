"""The threshold choice: an abs-max magnitude, or equally "the top fraction of feature dimensions".

Both views are one choice. A Linear's input dimension is an outlier when its
calibration abs-max exceeds the threshold; it then stays in floating point
(static LLM.int8()): the Linear keeps that weight column (out_features values)
in floating point plus its int64 index. The fraction counts (Linear, dimension)
pairs, because that is what memory is paid for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from int8wb.app.view_models.scan_stats import ScanStatistics
from int8wb.engine.vocabulary import DEFAULT_THRESHOLD, KIND_LABELS, KIND_ORDER, check_threshold

INDEX_BYTES = 8  # int64 column index per outlier column


@dataclass
class KindSummary:
    """Outliers of one input kind (attention input, ...)."""

    kind: str
    label: str
    rows: int  # decoder layers with this input scanned
    dims_any_layer: int  # distinct dimensions over the threshold in at least one layer
    mean_dims_per_layer: float
    max_dims_in_a_layer: int


@dataclass
class ThresholdSummary:
    """What a threshold means for the scanned model."""

    threshold: float
    outlier_columns: int  # (Linear, dimension) pairs over the threshold
    total_columns: int  # (Linear, dimension) pairs scanned
    kinds: list[KindSummary] = field(default_factory=list)
    float_bytes: int | None = None  # extra bytes the fp columns cost; None when out_features is unknown
    float_bytes_missing: list[str] = field(default_factory=list)  # Linears without out_features

    @property
    def fraction(self) -> float:
        return self.outlier_columns / self.total_columns if self.total_columns else 0.0


class ThresholdModel:
    """The current threshold over a `ScanStatistics`, with its summary; notifies on every change."""

    def __init__(self, stats: ScanStatistics, threshold: float = DEFAULT_THRESHOLD, float_bytes: int = 2) -> None:
        self.stats = stats
        self.float_bytes = float_bytes  # bytes per weight of the float columns (2: fp16, 4: fp32)
        self._threshold = check_threshold(threshold)
        self._listeners: list[Callable[[float], None]] = []

    def subscribe(self, listener: Callable[[float], None]) -> None:
        self._listeners.append(listener)

    @property
    def threshold(self) -> float:
        return self._threshold

    def set_threshold(self, threshold: float) -> None:
        threshold = check_threshold(threshold)
        if threshold != self._threshold:
            self._threshold = threshold
            for listener in list(self._listeners):
                listener(threshold)

    def set_fraction(self, fraction: float) -> float:
        """Choose the threshold that keeps the top `fraction` of dimensions in floating point; returns it."""
        threshold = self.threshold_for_fraction(fraction)
        self.set_threshold(threshold)
        return threshold

    # --- conversions -----------------------------------------------------------------------------

    def fraction_for_threshold(self, threshold: float) -> float:
        """Share of (Linear, dimension) pairs whose abs-max exceeds `threshold`.

        One vectorized pass, no sort: it runs on every threshold move and, while
        a scan streams in, after new layers, so nothing sorted would stay valid.
        """
        over, total = self.stats.count_finite_over(threshold)
        return over / total if total else 0.0

    def threshold_for_fraction(self, fraction: float) -> float:
        """The threshold over which exactly the top `fraction` of pairs lie (as near as ties allow).

        It is the abs-max of the first pair left out, so that "over the threshold"
        picks the top k = round(fraction x pairs).
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
        values = self.stats.all_absmax()
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ValueError("no scan statistics yet: scan the model first")
        k = int(round(fraction * values.size))
        tiny = np.finfo(np.float32).tiny
        if k >= values.size:
            return float(max(values.min() * 0.5, tiny))
        position = values.size - 1 - k  # the (k + 1)-th largest, found in O(n) rather than by a sort
        return float(max(np.partition(values, position)[position], tiny))

    # --- the summary -----------------------------------------------------------------------------

    def outlier_mask(self, threshold: float | None = None) -> np.ndarray:
        """(rows, width) bool: heatmap cells over the threshold (the current one unless given)."""
        grid = self.stats.absmax_grid
        with np.errstate(invalid="ignore"):
            return grid > (self._threshold if threshold is None else threshold)

    def summary(self, threshold: float | None = None) -> ThresholdSummary:
        """What the current threshold (or `threshold`) keeps in floating point."""
        threshold = self._threshold if threshold is None else threshold
        stats = self.stats
        over_rows = self.outlier_mask(threshold)
        kinds = []
        for kind, start, stop in stats.kind_spans():
            filled = stats.row_filled[start:stop]
            if not filled.any():
                continue
            block = over_rows[start:stop][filled]
            per_row = block.sum(axis=1)
            kinds.append(
                KindSummary(
                    kind,
                    KIND_LABELS[kind],
                    int(filled.sum()),
                    int(block.any(axis=0).sum()),
                    float(per_row.mean()),
                    int(per_row.max()),
                )
            )
        kinds.sort(key=lambda k: KIND_ORDER.index(k.kind))
        over = stats.over_per_linear(threshold)  # (Linears,)
        missing = [linear.name for linear in stats.linears if linear.out_features is None]
        extra = None
        if not missing:
            out_features = np.array([int(linear.out_features) for linear in stats.linears], dtype=np.int64)
            extra = int(over @ (out_features * self.float_bytes + INDEX_BYTES)) if over.size else 0
        return ThresholdSummary(threshold, int(over.sum()), stats.all_absmax().size, kinds, extra, missing)
