"""Calibration scan: per Linear layer and per input feature dimension, how large the activations get.

The scan runs the calibration tokens through the model one decoder layer at a
time (all tokens through layer i, keep its outputs, then layer i+1), so each
layer's statistics are complete, and streamed to the GUI, as soon as that layer
is done, and peak memory is one layer plus the cached hidden states. Inputs of
the first layer are captured by running the model until it reaches that layer
(the positional embeddings and masks come along as the layer's keyword
arguments), which keeps the scan independent of the architecture.

For every Linear input x (tokens, features) the scan keeps:
- `absmax[d]`: max |x[:, d]| over all calibration tokens,
- `count_over[d]`: the number of tokens with |x[t, d]| > threshold,
- `hist`: a histogram of log10|x| over all values, on fixed edges `HIST_EDGES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.errors import BadInput
from engine.model.layers import decoder_layers, linear_kind, linear_layers
from engine.quant import smoothing
from engine.quant.layer_errors import DEFAULT_ERROR_TOKENS, LayerErrorProbe, check_error_methods, error_summary
from engine.quant.schemes import scheme_of
from engine.vocabulary import (
    DEFAULT_ALPHA,
    DEFAULT_THRESHOLD,
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
        for name in ("tokens", "seq_len", "batch_size", "error_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BadInput(f"{name} must be a positive integer, got {value!r}")
        if self.seq_len < 2:
            raise BadInput("seq_len must be at least 2")


@dataclass
class LayerStats:
    """One Linear layer's input statistics."""

    index: int  # position in forward order
    name: str  # full module path
    layer: int  # decoder layer number (-1 outside the decoder stack)
    kind: str  # see engine.model.layers
    out_features: int  # the Linear's output size: what one floating-point input column costs in weights
    absmax: np.ndarray  # (in_features,) float32
    count_over: np.ndarray  # (in_features,) int64
    hist: np.ndarray  # (HIST_BINS,) int64
    sqnr_db: dict[str, float | None] | None = None  # method -> output SQNR, when the scan measured errors
    # max |W[:, j]| over the Linears that share this input when SmoothQuant can fold into its source
    # (engine.quant.smoothing), else over this Linear's own weight: what the GUI's "smoothed" view needs
    weight_absmax: np.ndarray | None = None  # (in_features,) float32
    smoothable: bool = False

    def to_payload(self, n_tokens: int) -> dict[str, Any]:
        errors = {"sqnr_db": self.sqnr_db} if self.sqnr_db is not None else {}
        return {
            "index": self.index,
            "name": self.name,
            "layer": self.layer,
            "kind": self.kind,
            "out_features": self.out_features,
            "absmax": self.absmax,
            "count_over": self.count_over,
            "hist": self.hist,
            "weight_absmax": self.weight_absmax,
            "smoothable": self.smoothable,
            "n_tokens": n_tokens,
            "final": True,
            **errors,
        }


@dataclass
class ScanResult:
    settings: ScanSettings
    n_tokens: int
    corpus_source: str
    layers: list[LayerStats] = field(default_factory=list)

    def outlier_dims(self, threshold: float) -> dict[str, np.ndarray]:
        """Per Linear name, the input dimensions whose abs-max exceeds `threshold`."""
        return {s.name: np.flatnonzero(s.absmax > threshold) for s in self.layers}

    def to_payload(self) -> dict[str, Any]:
        return {
            "threshold": self.settings.threshold,
            "tokens": self.n_tokens,
            "seq_len": self.settings.seq_len,
            "corpus": self.corpus_source,
            "hist_edges": HIST_EDGES,
            "layers": [s.to_payload(self.n_tokens) for s in self.layers],
            "report": dimension_report(self),
            **self.error_payload(),
        }

    def error_payload(self) -> dict[str, Any]:
        """The per-method error summary, when the scan measured errors."""
        if not self.settings.error_methods:
            return {}
        layers = [{"name": s.name, "absmax": s.absmax, "sqnr_db": s.sqnr_db} for s in self.layers]
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
        # q/k/v (and gate/up) read the same input: count each decoder layer once.
        by_layer = {s.layer: s for s in members}
        over = np.stack([s.absmax > threshold for s in by_layer.values()])  # (layers, dims)
        token_share = np.stack([s.count_over / max(scan.n_tokens, 1) for s in by_layer.values()])
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


class _StopForward(Exception):
    """Raised by the capture hook once the first decoder layer's inputs are known."""


def run(params: dict[str, Any], task, loaded) -> ScanResult:
    """Scan `loaded` (an engine.model.loaded.LoadedModel) on calibration text; see the module docstring."""
    import torch

    from engine.model import corpus as corpus_mod
    from engine.model.limits import check_scan, check_sequence_length

    settings = ScanSettings.from_params(params)
    check_sequence_length(loaded.model, settings.seq_len, "a calibration sequence")
    split = corpus_mod.load_split(settings.corpus)
    ids = corpus_mod.tokenize(loaded.tokenizer, split.calibration, settings.tokens)
    sequences = corpus_mod.windows(ids, min(settings.seq_len, len(ids)), settings.tokens)  # (n, seq)
    batch = min(settings.batch_size, sequences.shape[0])
    check_scan(loaded.model, sequences.shape[1], batch, int(sequences.numel()), loaded.device)
    model = loaded.model
    result = ScanResult(settings, int(sequences.numel()), split.source)

    _, blocks = decoder_layers(model)
    linears = linear_layers(model, settings.include_lm_head)
    block_of = {id(m): i for i, block in enumerate(blocks) for m in block.modules()}
    batches = list(sequences.split(settings.batch_size))

    smooth_groups = _smooth_groups(model, settings)
    with torch.no_grad():
        weights = smoothing.weight_view(model)
        captured = _capture_first_layer_inputs(model, blocks[0], batches, task.slice(0.0, 0.05))
        for block_index, block in enumerate(blocks):
            members = [(n, m) for n, m in linears if block_of.get(id(m)) == block_index]
            probe = _error_probe(settings, smooth_groups)
            if probe is not None:
                probe.spread_over(len(captured))
            with _StatsHooks(members, settings.threshold, task, probe) as hooks:
                for b, (args, kwargs) in enumerate(captured):
                    task.check_cancelled()
                    output = block(*args, **kwargs)
                    hidden = output[0] if isinstance(output, tuple) else output
                    captured[b] = _with_hidden_states(args, kwargs, hidden)
            layer_stats = hooks.collect(block_index, start_index=len(result.layers))
            if probe is not None:
                errors = probe.measure({s.name: s.absmax for s in layer_stats})
                for stats in layer_stats:
                    stats.sqnr_db = errors.get(stats.name)
            for stats in layer_stats:
                stats.weight_absmax, stats.smoothable = weights.get(stats.name, (None, False))
                result.layers.append(stats)
                task.partial("scan_layer", stats.to_payload(result.n_tokens))
            task.progress(0.05 + 0.95 * (block_index + 1) / len(blocks), f"layer {block_index + 1}/{len(blocks)}")
        outside = [(n, m) for n, m in linears if id(m) not in block_of]
        if outside:
            _scan_outside_blocks(model, outside, batches, settings.threshold, result, task)
    task.progress(1.0, "scan complete")
    return result


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
    from engine.quant.smoothing import groups

    return {member: group.members for group in groups(model)[0] for member in group.members}


def _with_hidden_states(args: tuple, kwargs: dict, hidden) -> tuple[tuple, dict]:
    """The next layer's call: the same arguments with the hidden states replaced (positional or keyword)."""
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _capture_first_layer_inputs(model, first_block, batches, task) -> list[tuple[tuple, dict]]:
    """Run the model up to its first decoder layer for every batch; keep that layer's (args, kwargs)."""
    captured: list[tuple[tuple, dict]] = []

    def grab(module, args, kwargs):
        captured.append((args, kwargs))
        raise _StopForward

    handle = first_block.register_forward_pre_hook(grab, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for i, batch in enumerate(batches):
            task.check_cancelled()
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _StopForward:
                pass
            task.progress((i + 1) / len(batches))
    finally:
        handle.remove()
    return captured


def _scan_outside_blocks(model, members, batches, threshold, result, task) -> None:
    """Linears outside the decoder stack (the LM head when asked for): one full forward per batch."""
    device = next(model.parameters()).device
    with _StatsHooks(members, threshold, task) as hooks:
        for batch in batches:
            task.check_cancelled()
            model(input_ids=batch.to(device), use_cache=False)
    for stats in hooks.collect(-1, start_index=len(result.layers)):
        result.layers.append(stats)
        task.partial("scan_layer", stats.to_payload(result.n_tokens))


class _StatsHooks:
    """Forward pre-hooks that fold every input of the given Linears into running statistics.

    Each hook also asks the task whether to stop, so a cancel lands within one
    Linear's work rather than one decoder layer's.
    """

    def __init__(self, members, threshold: float, task, probe: LayerErrorProbe | None = None) -> None:
        self.members, self.threshold, self.task, self.probe = members, threshold, task, probe
        self.handles: list = []
        self.state: dict[str, tuple] = {}
        self.out_features = {name: module.out_features for name, module in members}

    def __enter__(self) -> _StatsHooks:
        import torch

        from kernels import ops

        name_of = {id(module): name for name, module in self.members}
        log10_range = (HIST_LOG10_MIN, HIST_LOG10_MAX)
        for name, module in self.members:
            device = module.weight.device
            absmax = torch.zeros(module.in_features, dtype=torch.float32, device=device)
            count = torch.zeros(module.in_features, dtype=torch.int64, device=device)
            hist = torch.zeros(HIST_BINS, dtype=torch.int64, device=device)
            self.state[name] = (absmax, count, hist)

            def hook(mod, args, absmax=absmax, count=count, hist=hist):
                self.task.check_cancelled()
                x = args[0].reshape(-1, mod.in_features)  # (tokens, in_features)
                ops.input_stats(x, self.threshold, absmax, count, hist, log10_range)
                if self.probe is not None:
                    self.probe.observe(name_of[id(mod)], mod, x)

            self.handles.append(module.register_forward_pre_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def collect(self, block_index: int, start_index: int) -> list[LayerStats]:
        return [
            LayerStats(
                index=start_index + i,
                name=name,
                layer=block_index,
                kind=linear_kind(name),
                out_features=self.out_features[name],
                absmax=absmax.cpu().numpy(),
                count_over=count.cpu().numpy(),
                hist=hist.cpu().numpy(),
            )
            for i, (name, (absmax, count, hist)) in enumerate(self.state.items())
        ]
