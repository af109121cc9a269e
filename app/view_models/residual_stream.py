"""The residual stream on the token axis, without Qt: what the residual map (app.views.residual_map) shows.

A scan's result carries `token_axis` (engine.quant.token_axis, engine.quant.scan.ScanResult.token_axis_payload):
per residual-stream layer, each calibration token's largest |x| and its dimension, and for the first calibration
sequence each token's largest dimensions. This model keeps the first sequence (the one whose token text is known
position by position): a grid of layers x positions, the massive activations found in it, the precision alarms
of the whole scan, and the readouts the view shows on hover and on click. Listeners hear "reset" when a result
arrives or the model is cleared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TokenProfile:
    """One token's largest dimensions at one layer, against that layer's median |x|."""

    layer: int
    position: int
    token: str
    dims: np.ndarray  # int, largest first
    values: np.ndarray  # their |x|
    median: float


class ResidualStream:
    """Layers x token positions of the first calibration sequence; see the module docstring."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[str, Any], None]] = []
        self.clear(notify=False)

    def subscribe(self, listener: Callable[[str, Any], None]) -> None:
        self._listeners.append(listener)

    def clear(self, notify: bool = True) -> None:
        self.layers: list[int] = []
        self.tokens: list[str] = []
        self.grid = np.zeros((0, 0), np.float32)  # (layers, positions) largest |x|
        self.argmax = np.zeros((0, 0), np.int32)  # (layers, positions) the dimension that holds it
        self.medians: list[float] = []
        self.profile_dims: list[np.ndarray] = []
        self.profile_values: list[np.ndarray] = []
        self.massive: list[dict[str, Any]] = []  # those of the first sequence
        self.massive_total = 0  # over every calibration sequence
        self.criterion = ""
        self.alarms: list[dict[str, Any]] = []
        if notify:
            self._emit("reset")

    def load_result(self, result: dict[str, Any]) -> None:
        """Take a scan's result; a result without a token axis (an older engine) clears the view."""
        axis = result.get("token_axis")
        if not axis or not axis["residual"]:
            self.clear()
            return
        residual = axis["residual"]
        self.layers = [int(r["layer"]) for r in residual]
        self.tokens = list(axis["tokens"])
        self.grid = np.stack([np.asarray(r["token_absmax"], np.float32)[0] for r in residual])
        self.argmax = np.stack([np.asarray(r["token_argmax"], np.int32)[0] for r in residual])
        self.medians = [float(r["median_abs"]) for r in residual]
        self.profile_dims = [np.asarray(r["profile_dims"]) for r in residual]
        self.profile_values = [np.asarray(r["profile_values"]) for r in residual]
        self.massive = [m for m in axis["massive_activations"] if m["sequence"] == 0]
        self.massive_total = len(axis["massive_activations"])
        self.criterion = axis["massive_criterion"]
        self.alarms = list(axis["precision_alarms"])
        self._emit("reset")

    @property
    def empty(self) -> bool:
        return self.grid.size == 0

    def massive_at(self, row: int, position: int) -> dict[str, Any] | None:
        layer = self.layers[row]
        return next((m for m in self.massive if m["layer"] == layer and m["position"] == position), None)

    def describe(self, row: int, position: int) -> str:
        """The hover readout of a cell: token text, layer, dimension and value (and the ratio when massive)."""
        value, dim = float(self.grid[row, position]), int(self.argmax[row, position])
        median = self.medians[row]
        ratio = f" = {value / median:,.0f}x the layer's median |x|" if median > 0 else ""
        flag = "  ▲ massive activation" if self.massive_at(row, position) else ""
        return (
            f"token {self.tokens[position]!r} (position {position}) · {self.layer_label(row)} · dim {dim:,} · "
            f"|x| {value:,.4g}{ratio}{flag}"
        )

    def layer_label(self, row: int) -> str:
        layer = self.layers[row]
        return f"after layer {layer - 1}" if row == len(self.layers) - 1 and row > 0 else f"entering layer {layer}"

    def profile(self, row: int, position: int) -> TokenProfile:
        """That token's largest dimensions at that layer (what a click shows)."""
        return TokenProfile(
            self.layers[row],
            position,
            self.tokens[position],
            self.profile_dims[row][position],
            self.profile_values[row][position],
            self.medians[row],
        )

    def summary(self) -> str:
        """One line under the map: the massive activations and the precision alarms, in words."""
        if self.empty:
            return ""
        if self.massive:
            first = self.massive[0]
            massive = (
                f"{self.massive_total} massive activations ({self.criterion.split(' (')[0]}); "
                f"first in layer {first['layer']}: dim {first['dim']} = {first['value']:,.0f} on {first['token']!r}"
            )
        else:
            massive = f"no massive activation ({self.criterion.split(' (')[0]})"
        alarms = "; ".join(a["message"] for a in self.alarms) or "no precision alarm"
        return f"{massive}. Precision: {alarms}."

    def _emit(self, event: str, data: Any = None) -> None:
        for listener in list(self._listeners):
            listener(event, data)
