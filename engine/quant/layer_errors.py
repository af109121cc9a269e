"""Where the error is: each method's output error on every Linear, measured with that Linear's true input.

The scan runs the floating-point model one decoder layer at a time; with `error_methods` it also keeps
`error_tokens` rows of every Linear's input in that layer, spread evenly over the calibration batches
and over the positions within each (so the first token's massive activations are no more frequent than
in the text). Once the layer's statistics are
complete (so static `llm-int8` knows its outlier columns), each method quantizes the Linear and runs it
on those same inputs, and the signal-to-quantization-noise ratio of its output is recorded:

    SQNR = 10 log10(||y||^2 / ||y - y_q||^2)  dB,   y = the floating-point Linear's output.

Because every Linear sees the floating-point model's input, one Linear's figure is that Linear's own
error, not what earlier layers passed on. `smoothquant` is measured as it runs: the input divided by
the smoothing factors of the Linear's group (engine.quant.smoothing), the weight's columns multiplied
by them; a Linear whose input cannot be smoothed exactly is measured unsmoothed, as it is quantized. A
method that leaves a Linear in floating point (q8_0 where the input is not whole blocks) has no figure. The model-level consequence (perplexity) is `evaluate`'s
and `sensitivity`'s job.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from int8wb.engine.errors import BadInput
from int8wb.engine.vocabulary import DEFAULT_ALPHA, METHODS

DEFAULT_ERROR_TOKENS = 256


def check_error_methods(methods: Any) -> tuple[str, ...]:
    """The methods to measure (a comma-separated string is accepted); empty means no error pass."""
    if methods is None or methods == "" or methods == []:
        return ()
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    if not isinstance(methods, (list, tuple)) or not all(isinstance(m, str) for m in methods):
        raise BadInput(f"error_methods must be a list of method names from: {', '.join(METHODS)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise BadInput(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    return tuple(dict.fromkeys(methods))


def sqnr_db(reference, quantized) -> float | None:
    """10 log10(signal / noise) of `quantized` against `reference`; None when they are identical.

    In float32: its sums are pairwise, exact to a few parts in a million, far below what a dB figure shows.
    """
    signal = float(reference.float().square().sum())
    noise = float((reference.float() - quantized.float()).square().sum())
    if noise == 0.0:
        return None
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


class LayerErrorProbe:
    """Keeps a bounded sample of each Linear's input and output in one decoder layer, then measures every method on it.

    `observe` runs before the Linear's forward (a pre-hook), `observe_output` after it (a forward hook).
    """

    def __init__(
        self,
        methods: tuple[str, ...],
        threshold: float,
        token_budget: int = DEFAULT_ERROR_TOKENS,
        alpha: float = DEFAULT_ALPHA,
        smooth_groups: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        """`smooth_groups`: each smoothable Linear's name -> the names of the Linears that share its input."""
        if not isinstance(token_budget, int) or isinstance(token_budget, bool) or token_budget < 1:
            raise BadInput(f"error_tokens must be a positive integer, got {token_budget!r}")
        self.methods, self.threshold, self.token_budget = methods, threshold, token_budget
        self.alpha, self.smooth_groups = alpha, smooth_groups or {}
        self.per_call = token_budget  # rows kept from one input: set by `spread_over`
        self.inputs: dict[str, list] = {}
        self.outputs: dict[str, list] = {}  # the floating-point Linear's output on the same rows
        self.modules: dict[str, Any] = {}
        self._rows: dict[str, tuple[int, int]] = {}  # (stride, count) of the call in progress

    def spread_over(self, calls: int) -> None:
        """Each Linear will be called `calls` times: keep an equal share of the budget from each call."""
        self.per_call = max(1, -(-self.token_budget // max(calls, 1)))

    def observe(self, name: str, module, x) -> None:
        """Keep evenly strided rows of `x` (tokens, in_features) until this Linear has `token_budget` of them."""
        kept = sum(part.shape[0] for part in self.inputs.get(name, []))
        take = min(self.per_call, self.token_budget - kept, x.shape[0])
        if take > 0:
            stride = max(1, x.shape[0] // take)
            self.inputs.setdefault(name, []).append(x[::stride][:take].detach().clone())
            self.modules[name] = module
            self._rows[name] = (stride, take)

    def observe_output(self, name: str, y) -> None:
        """The same rows of the Linear's output in the call `observe` saw: the reference, without recomputing it."""
        if name in self._rows:
            stride, take = self._rows.pop(name)
            self.outputs.setdefault(name, []).append(y.reshape(-1, y.shape[-1])[::stride][:take].detach().clone())

    def measure(self, absmax: dict[str, np.ndarray]) -> dict[str, dict[str, float | None]]:
        """Per Linear name, per method: the SQNR in dB of its output on the kept inputs; the inputs are released.

        `absmax`: each Linear's complete per-channel input abs-max from the scan (outlier columns, smoothing).
        """
        import torch

        errors: dict[str, dict[str, float | None]] = {}
        with torch.no_grad():
            for name, parts in self.inputs.items():
                linear, x = self.modules[name], torch.cat(parts)
                reference = torch.cat(self.outputs[name])
                errors[name], weights = {}, {}
                for method in self.methods:
                    output = self._quantized_output(name, linear, x, method, absmax, weights)
                    if output is not None:
                        errors[name][method] = sqnr_db(reference, output)
        self.inputs.clear()
        self.outputs.clear()
        self.modules.clear()
        return errors

    def _quantized_output(self, name: str, linear, x, method: str, absmax: dict[str, np.ndarray], weights: dict):
        """`method`'s output of this Linear on `x`, or None where the method leaves it in floating point.

        `weights` keeps this Linear's quantized weight per weight scale, so that the methods that store
        the same INT8 weight (vectorwise and both llm-int8) quantize it once.
        """
        import torch

        from int8wb.engine.model.layers import features, weight_matrix
        from int8wb.engine.quant import smoothing
        from int8wb.engine.quant.int8_linear import Int8Linear
        from int8wb.engine.quant.schemes import scheme_of

        scheme = scheme_of(method)
        if not scheme.fits(features(linear)[0]):
            return None
        weight, cols = weight_matrix(linear).detach(), None  # (out, in), a Conv1D's transposed
        if scheme.outliers == "static":
            dims = np.flatnonzero(absmax[name] > self.threshold)
            cols = torch.as_tensor(dims, dtype=torch.long, device=weight.device)
        members = self.smooth_groups.get(name) if scheme.smoothed else None
        if members and all(m in self.modules for m in members):
            activation = torch.as_tensor(np.max([absmax[m] for m in members], axis=0), device=weight.device)
            columns = torch.stack([self.modules[m].weight.detach().abs().amax(dim=0).float() for m in members])
            scale = smoothing.factors(activation.float(), columns.amax(dim=0), self.alpha)  # (in,)
            weight, x = (weight.float() * scale[None, :]).to(weight.dtype), (x.float() / scale).to(x.dtype)
        bias = None if linear.bias is None else linear.bias.detach()
        if members:
            return Int8Linear.from_weight(weight, bias, method, self.threshold, cols)(x)
        if scheme.weight_scale not in weights:
            weights[scheme.weight_scale] = scheme.quantize_weight(weight)
        return Int8Linear.from_weight(weight, bias, method, self.threshold, cols, weights[scheme.weight_scale])(x)


def rank_correlation(first: np.ndarray, second: np.ndarray) -> float | None:
    """Spearman's rank correlation of two equally long series (ties get their mean rank); None if undefined."""
    if len(first) < 3:
        return None
    ranks = [_ranks(np.asarray(series, dtype=np.float64)) for series in (first, second)]
    if any(r.std() == 0 for r in ranks):
        return None
    return float(np.corrcoef(*ranks)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def error_summary(layers: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """Per method: median SQNR over the Linears, and how its loss follows the outlier columns.

    `loss_vs_outliers` is the rank correlation, over Linears, between the method's loss (minus its SQNR)
    and the number of input columns over the threshold: LLM.int8()'s finding is that W8A8 error lives
    where the outlier columns are.
    """
    methods = sorted({m for layer in layers for m in (layer.get("sqnr_db") or {})}, key=METHODS.index)
    summary: dict[str, Any] = {}
    outliers = np.array([int((np.asarray(layer["absmax"]) > threshold).sum()) for layer in layers], dtype=np.float64)
    for method in methods:
        values = np.array(
            [_finite_or_nan((layer.get("sqnr_db") or {}).get(method)) for layer in layers], dtype=np.float64
        )
        known = np.isfinite(values)
        summary[method] = {
            "median_sqnr_db": float(np.median(values[known])) if known.any() else None,
            "worst_linear": layers[int(np.nanargmin(np.where(known, values, np.nan)))]["name"] if known.any() else None,
            "loss_vs_outliers": rank_correlation(-values[known], outliers[known]),
        }
    return summary


def _finite_or_nan(value: float | None) -> float:
    return float(value) if value is not None and math.isfinite(value) else math.nan
