"""Calibration scan: per Linear input and per feature dimension, how large the activations get.

The scan runs the calibration tokens through the model one decoder layer at a
time (engine.model.layerwise: all tokens through layer i, keep its outputs, then
layer i+1), so each layer's statistics are complete, and streamed to the GUI, as
soon as that layer is done. A model held in memory and one read from disk layer
by layer (engine.pipeline.layer_pass) run the same loop and the same hooks
(engine.quant.input_hooks).

Linears that read the same tensor (q/k/v, gate/up) are measured once: one set of
statistics per distinct input, carrying the names of the Linears it feeds.
For every distinct input x (tokens, features) the scan keeps:
- `absmax[d]`: max |x[:, d]| over all calibration tokens,
- `count_over[d]`: the number of tokens with |x[t, d]| > threshold,
- `hist`: a histogram of log10|x| over all values, on fixed edges `HIST_EDGES`,
- `tokens`: how many tokens reached it: all of them, except for an expert of a
  mixture-of-experts block, which sees only the tokens routed to it (an expert
  that saw few, or none, has unreliable statistics, and is reported all the same).

The token axis (engine.quant.token_axis) comes with it: per decoder layer, the residual stream's
largest |x| per token and per dimension (`ScanResult.residual`), each Linear input's largest |x| per
token (`InputStats.token_absmax`), the massive activations among them (`ScanResult.massive_activations`),
and the precision alarms of everything recorded (`ScanResult.precision_alarms`, engine.quant.precision).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from int8wb.engine.errors import BadInput, check_counts
from int8wb.engine.model.layers import decoder_layers, linear_layers
from int8wb.engine.quant import precision, smoothing, token_axis
from int8wb.engine.quant.input_hooks import InputStats, StatsHooks
from int8wb.engine.quant.layer_errors import DEFAULT_ERROR_TOKENS, LayerErrorProbe, check_error_methods, error_summary
from int8wb.engine.quant.schemes import scheme_of
from int8wb.engine.vocabulary import (
    DEFAULT_ALPHA,
    DEFAULT_THRESHOLD,
    EXPERT_KINDS,
    HIST_BINS,
    HIST_LOG10_MAX,
    HIST_LOG10_MIN,
    KIND_LABELS,
    check_alpha,
    check_threshold,
)

# log10 |x| histogram: 1e-4 .. 1e5 in 90 bins of 0.1 decades; values outside land in the end bins.
HIST_EDGES = np.logspace(HIST_LOG10_MIN, HIST_LOG10_MAX, HIST_BINS + 1)


@dataclass(frozen=True)
class ScanSettings:
    """What to scan with; validated from the request's params."""

    tokens: int = 4096  # calibration tokens in all
    seq_len: int = 512  # tokens per calibration sequence
    batch_size: int = 8  # sequences per forward call
    threshold: float = DEFAULT_THRESHOLD  # |x| over which a value counts as an outlier
    corpus: str | None = None  # None: the default text; else a UTF-8 file
    include_lm_head: bool = False
    error_methods: tuple[str, ...] = ()  # measure each method's per-Linear SQNR too (engine.quant.layer_errors)
    error_tokens: int = DEFAULT_ERROR_TOKENS  # calibration tokens per Linear that the error pass uses
    alpha: float = DEFAULT_ALPHA  # smoothquant's strength, for its errors
    token_axis: bool = True  # record the token axis; off only to measure its cost (bench/scan_token_axis.py)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ScanSettings:
        values = {k: params[k] for k in cls.__dataclass_fields__ if params.get(k) is not None}
        values["error_methods"] = check_error_methods(values.get("error_methods"))
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        check_threshold(self.threshold)
        check_alpha(self.alpha)
        check_counts(self, ("tokens", "seq_len", "batch_size", "error_tokens"))
        if self.seq_len < 2:
            raise BadInput("seq_len must be at least 2")
        if not isinstance(self.token_axis, bool):
            raise BadInput(f"token_axis must be true or false, got {self.token_axis!r}")


@dataclass
class ScanResult:
    settings: ScanSettings
    n_tokens: int
    corpus_source: str
    layers: list[InputStats] = field(default_factory=list)  # one per distinct Linear input
    token_text: list[str] = field(default_factory=list)  # every calibration token's text, sequence-major
    # the residual stream entering each decoder layer, then leaving the last (engine.quant.token_axis)
    residual: list[token_axis.ResidualStats] = field(default_factory=list)

    def massive_activations(self) -> list[dict[str, Any]]:
        """The residual stream's massive activations (token_axis.MASSIVE_CRITERION): per layer, each token
        over the criterion with its sequence, position, text, dimension, value and ratio to the layer's
        median |x|, in layer order, largest first within a layer."""
        return token_axis.massive_activations(self.residual, self.token_text, self.seq_len)

    @property
    def seq_len(self) -> int:
        """Tokens per calibration sequence (the corpus may have held fewer than settings.seq_len)."""
        return int(self.residual[0].token_absmax.shape[1]) if self.residual else self.settings.seq_len

    def precision_readings(self) -> list[precision.Reading]:
        """The largest |x| of every recorded place: the residual stream per layer, each Linear's input and output."""
        readings = [precision.Reading("residual", r.layer, "", r.peak) for r in self.residual]
        for stats in self.layers:
            peak = float(stats.absmax.max()) if stats.absmax.size else 0.0
            readings += [precision.Reading("input", stats.layer, name, peak) for name in stats.names]
            readings += [
                precision.Reading("output", stats.layer, name, value)
                for name, value in (stats.output_absmax or {}).items()
            ]
        return readings

    def precision_alarms(self) -> list[dict[str, Any]]:
        """Where FP16 overflows or bfloat16 rounds coarsely (engine.quant.precision), from every recorded place."""
        return precision.precision_alarms(self.precision_readings())

    def token_axis_payload(self) -> dict[str, Any]:
        """The token axis for the GUI and the CLI: the residual stream per layer, the first sequence's token
        texts, the massive activations with their criterion, and the precision alarms."""
        return {
            "seq_len": self.seq_len,
            "tokens": self.token_text[: self.seq_len],
            "residual": [r.to_payload() for r in self.residual],
            "massive_activations": self.massive_activations(),
            "massive_criterion": token_axis.MASSIVE_CRITERION,
            "precision_alarms": self.precision_alarms(),
        }

    def outlier_dims(self, threshold: float) -> dict[str, np.ndarray]:
        """Per Linear name, the input dimensions whose abs-max exceeds `threshold`."""
        return {name: np.flatnonzero(s.absmax > threshold) for s in self.layers for name in s.names}

    def absmax_of(self) -> dict[str, np.ndarray]:
        """Per Linear name, its input's per-dimension abs-max."""
        return {name: s.absmax for s in self.layers for name in s.names}

    def to_payload(self) -> dict[str, Any]:
        return {
            "threshold": self.settings.threshold,
            "tokens": self.n_tokens,
            "seq_len": self.settings.seq_len,
            "corpus": self.corpus_source,
            "hist_edges": HIST_EDGES,
            "layers": [s.to_payload(self.n_tokens) for s in self.layers],
            "report": dimension_report(self),
            "token_axis": self.token_axis_payload(),
            **self.error_payload(),
        }

    def error_payload(self) -> dict[str, Any]:
        """The per-method error summary, when the scan measured errors."""
        if not self.settings.error_methods:
            return {}
        layers = [
            {"name": name, "absmax": s.absmax, "sqnr_db": (s.sqnr_db or {}).get(name)}
            for s in self.layers
            for name in s.names
        ]
        return {
            "error_methods": list(self.settings.error_methods),
            "errors": error_summary(layers, self.settings.threshold),
        }


def dimension_report(scan: ScanResult, top: int = 5) -> dict[str, Any]:
    """Per layer type: which dimensions exceed the threshold, in what fraction of layers and of tokens.

    This is the evidence for "outliers are dimension-specific": the same few
    dimensions over the threshold in most layers, on a large share of tokens.
    """
    threshold = scan.settings.threshold
    report: dict[str, Any] = {}
    for kind, label in KIND_LABELS.items():
        members = [s for s in scan.layers if s.kind == kind]
        if not members:
            continue
        by_layer = _per_layer(members, kind in EXPERT_KINDS)
        over = np.stack([absmax > threshold for absmax, _ in by_layer.values()])  # (layers, dims)
        token_share = np.stack([share for _, share in by_layer.values()])
        layer_share = over.mean(axis=0)
        ranked = np.argsort(-layer_share, kind="stable")[:top]
        report[kind] = {
            "label": label,
            "layers": len(by_layer),
            "outlier_dims_any_layer": int(over.any(axis=0).sum()),
            "mean_outlier_dims_per_layer": float(over.sum(axis=1).mean()),
            "top_dims": [
                {
                    "dim": int(d),
                    "layer_fraction": float(layer_share[d]),
                    "token_fraction_where_over": float(token_share[over[:, d], d].mean()) if over[:, d].any() else 0.0,
                }
                for d in ranked
                if layer_share[d] > 0
            ],
        }
    return report


def _per_layer(members: list[InputStats], experts: bool) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per decoder layer, (abs-max, share of tokens over the threshold) of one input kind.

    The experts of a layer read different tokens: their abs-max is the largest, their share is over
    the tokens routed to them all. Any other kind has one input per layer.
    """
    groups: dict[int, list[InputStats]] = {}
    for stats in members:
        groups.setdefault(stats.layer, []).append(stats)
    result = {}
    for layer, group in groups.items():
        if not experts:
            group = group[-1:]
        width = max(s.absmax.size for s in group)
        absmax, count = np.zeros(width, np.float32), np.zeros(width, np.int64)
        for s in group:
            np.maximum(absmax[: s.absmax.size], s.absmax, out=absmax[: s.absmax.size])
            count[: s.count_over.size] += s.count_over
        result[layer] = (absmax, count / max(sum(s.tokens for s in group), 1))
    return result


def calibration_batches(settings: ScanSettings, model, tokenizer, device: str, task=None) -> tuple[list, int, str]:
    """(batches of (B, seq_len) token ids, tokens in all, corpus source), checked against what the model holds;
    `task` is asked for cancellation while the text is read."""
    from int8wb.engine.model import corpus as corpus_mod
    from int8wb.engine.model.limits import check_scan, check_sequence_length

    check_sequence_length(model, settings.seq_len, "a calibration sequence")
    split = corpus_mod.load_split(settings.corpus)
    ids = corpus_mod.tokenize(tokenizer, split.calibration, settings.tokens, task)
    sequences = corpus_mod.windows(ids, min(settings.seq_len, len(ids)), settings.tokens)  # (n, seq)
    batch = min(settings.batch_size, sequences.shape[0])
    check_scan(model, sequences.shape[1], batch, int(sequences.numel()), device)
    return list(sequences.split(settings.batch_size)), int(sequences.numel()), split.source


def run(params: dict[str, Any], task, loaded) -> ScanResult:
    """Scan `loaded` (an engine.model.loaded.LoadedModel held in memory) on calibration text.

    The model runs the layer-by-layer loop (engine.model.layerwise) with its weights where they
    are; a model whose weights stay on disk is scanned by engine.pipeline.layer_pass, with this same stream.
    """
    from int8wb.engine.model.disk_weights import ResidentWeights
    from int8wb.engine.model.layerwise import run_layers

    settings = ScanSettings.from_params(params)
    model = loaded.model
    batches, n_tokens, source = calibration_batches(settings, model, loaded.tokenizer, loaded.device, task)
    result = ScanResult(settings, n_tokens, source, token_text=token_axis.token_texts(loaded.tokenizer, batches))
    device = str(next(model.parameters()).device)
    run_layers(model, ResidentWeights(), [scan_stream(settings, model, batches, result, task)], [], task, device, None)
    _, blocks = decoder_layers(model)
    inside = {id(m) for block in blocks for m in block.modules()}
    outside = [(n, m) for n, m in linear_layers(model, settings.include_lm_head) if id(m) not in inside]
    if outside:
        _scan_outside_blocks(model, outside, batches, settings.threshold, result, task)
    task.progress(1.0, "scan complete")
    return result


def scan_stream(settings: ScanSettings, model, batches: list, result: ScanResult, task, on_layer=None):
    """The calibration stream of the layer-by-layer loop: statistics of every Linear input, layer by layer.

    Each layer's statistics are complete when the stream leaves it: its residual stream's joins
    `result.residual`, its errors are measured (with
    `error_methods`), its weights' column abs-max read, and the statistics appended to `result`, sent
    as `scan_layer` events and handed to `on_layer(index, stats)` (static llm-int8 and smoothquant
    quantize that layer from them in the same pass).
    """
    from int8wb.engine.model.layerwise import Stream

    smooth_groups = _smooth_groups(model, settings)
    hooks: dict[int, StatsHooks] = {}
    residual_hooks: dict[int, token_axis.ResidualHooks] = {}
    prefixes: dict[int, str] = {}
    n_blocks = len(decoder_layers(model)[1])

    def enter(index: int, prefix: str, block):
        prefixes[index] = prefix
        members = [(f"{prefix}.{name}", module) for name, module in linear_layers(block)]
        probe = _error_probe(settings, smooth_groups)
        if probe is not None:
            probe.spread_over(len(batches))
        hooks[index] = StatsHooks(members, settings.threshold, task, probe, settings.token_axis).attach()
        if settings.token_axis:
            residual_hooks[index] = token_axis.ResidualHooks(block, index, last=index == n_blocks - 1)
        return block

    def leave(index: int, block) -> None:
        layer_hooks, residual = hooks.pop(index), residual_hooks.pop(index, None)
        layer_hooks.detach()
        if residual is not None:
            residual.detach()
            result.residual += residual.collect()
        collected = layer_hooks.collect(index, start_index=len(result.layers))
        weights = smoothing.block_weight_view(block, prefixes.pop(index))
        if layer_hooks.probe is not None:
            errors = layer_hooks.probe.measure(result_absmax(collected))
            for stats in collected:
                stats.sqnr_db = {name: errors.get(name) for name in stats.names}
        for stats in collected:
            views = [weights.get(name, (None, False)) for name in stats.names]
            stats.smoothable = all(smoothable for _, smoothable in views)
            arrays = [view for view, _ in views if view is not None]
            stats.weight_absmax = np.max(arrays, axis=0) if arrays else None
            result.layers.append(stats)
            task.partial("scan_layer", stats.to_payload(result.n_tokens))
        if on_layer is not None:
            on_layer(index, collected)

    def abandon(index: int, block) -> None:
        hooks.pop(index).detach()
        if index in residual_hooks:
            residual_hooks.pop(index).detach()

    return Stream("calibration", batches, enter, leave, abandon)


def result_absmax(stats: list[InputStats]) -> dict[str, np.ndarray]:
    """Per Linear name, the abs-max of its input, from one layer's statistics."""
    return {name: s.absmax for s in stats for name in s.names}


def _error_probe(settings: ScanSettings, smooth_groups: dict[str, tuple[str, ...]]) -> LayerErrorProbe | None:
    if not settings.error_methods:
        return None
    return LayerErrorProbe(
        settings.error_methods, settings.threshold, settings.error_tokens, settings.alpha, smooth_groups
    )


def _smooth_groups(model, settings: ScanSettings) -> dict[str, tuple[str, ...]]:
    """For the error pass of smoothquant: each smoothable Linear -> the Linears that share its factors."""
    if not any(scheme_of(m).smoothed for m in settings.error_methods):
        return {}
    return {member: group.members for group in smoothing.groups(model)[0] for member in group.members}


def _scan_outside_blocks(model, members, batches, threshold, result, task) -> None:
    """Linears outside the decoder stack (the LM head when asked for): one full forward per batch."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad(), StatsHooks(members, threshold, task) as hooks:
        for batch in batches:
            task.check_cancelled()
            model(input_ids=batch.to(device), use_cache=False)
    weights = smoothing.weight_view(model)
    for stats in hooks.collect(-1, start_index=len(result.layers)):
        stats.weight_absmax, stats.smoothable = weights.get(stats.names[0], (None, False))
        result.layers.append(stats)
        task.partial("scan_layer", stats.to_payload(result.n_tokens))
