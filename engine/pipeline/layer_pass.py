"""One layer-by-layer pass over a model on disk that does what a job asks: scan, quantize, evaluate, export.

The loop (engine.model.layerwise) places each decoder layer once; this module gives it the job's
streams and per-layer work:
- scan: the calibration stream, with the statistics hooks of engine.quant.scan; when a layer's
  statistics are complete, static llm-int8 takes that layer's outlier dimensions from them;
- quantize: each method's quantized copy of the placed layer (`LayerVariants`), made once per layer
  and shared by its evaluation stream and the export; its bytes are counted and it is released
  with the layer, so only the summaries outlive the pass;
- evaluate: one stream for the baseline and one per method over the same evaluation windows, the
  final norm and head applied a chunk of tokens at a time;
- export: the chosen method's tensors written as each layer is quantized (engine.pipeline.layer_export).

Every number is the one the in-memory path computes (tests/test_layerwise.py): the same layer calls
on the same batches, the same quantization, the same tensors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from int8wb.engine.measure import evaluate
from int8wb.engine.model.layers import decoder_layers, linear_layers
from int8wb.engine.model.layerwise import LayerWork, Stream, run_layers
from int8wb.engine.quant import coverage, scan, token_axis
from int8wb.engine.quant.quantize import (
    QuantizedModel,
    quantize_block,
    smoothing_summary,
    tensor_bytes,
    tensor_bytes_of,
)
from int8wb.engine.task import CancelOnly


@dataclass
class PassRequest:
    """What one pass does; empty parts are skipped."""

    scan: scan.ScanSettings | None = None
    variants: list[QuantizedModel] = field(default_factory=list)  # recipes: QuantizedModels without a model
    evaluate: evaluate.EvalSettings | None = None
    export: dict[str, Any] | None = None  # export params (out, overwrite, max_shard_size) of variants[0]
    scan_for_export: Any = None  # an earlier ScanResult the exported llm-int8 came from, for the sidecar


@dataclass
class PassResult:
    scan: scan.ScanResult | None = None
    variants: list[QuantizedModel] = field(default_factory=list)  # with their sizes, without a model
    evaluation: dict[str, Any] | None = None
    export: Any = None  # engine.checkpoint.export.ExportResult


class LayerVariants(LayerWork):
    """Each method's quantized copy of the placed decoder layer, made once, counted, released with the layer."""

    def __init__(self, recipes: list[QuantizedModel], model, task) -> None:
        self.recipes = {recipe.method: recipe for recipe in recipes}
        self.model = model
        self.task = CancelOnly(task)
        self.current: dict[str, Any] = {}
        self.smoothed: dict[str, dict[str, str]] = {method: {} for method in self.recipes}
        self.sizes = {method: outside_bytes(model) for method in self.recipes}
        self.coverage = {method: coverage.Coverage() for method in self.recipes}

    def block(self, method: str, index: int, prefix: str, block):
        """The quantized copy of decoder layer `index` for `method`."""
        if method not in self.current:
            module, _, smoothed = quantize_block(block, prefix, self.recipes[method], self.task)
            self.current[method] = module
            self.smoothed[method].update(smoothed)
        return self.current[method]

    def layer(self, index: int, prefix: str, block) -> None:
        for method, recipe in self.recipes.items():
            quantized = self.block(method, index, prefix, block)
            for kind, value in tensor_bytes(quantized).items():
                self.sizes[method][kind] += value
            self.coverage[method].add(coverage.measure_block(quantized, prefix, unfit=recipe.unfit))
        self.current.clear()

    def results(self) -> list[QuantizedModel]:
        """Each recipe with what the pass measured: its sizes, the outlier dimensions it used, its smoothing."""
        return [
            replace(
                recipe,
                outlier_dims={n: d for n, d in recipe.outlier_dims.items() if n not in recipe.skipped},
                sizes=self.sizes[method],
                coverage=self.coverage[method],
                smoothing=self._smoothing_summary(recipe),
            )
            for method, recipe in self.recipes.items()
        ]

    def _smoothing_summary(self, recipe: QuantizedModel) -> dict[str, Any] | None:
        """engine.quant.quantize.smoothing_summary of what the pass smoothed, layer by layer."""
        if recipe.alpha is None:
            return None
        smoothed = self.smoothed[recipe.method]
        unsmoothed = [name for name, _ in linear_layers(self.model) if name not in smoothed]
        return smoothing_summary({"alpha": recipe.alpha, "smoothed": smoothed, "unsmoothed": unsmoothed})

    def expected_smoothing(self, recipe: QuantizedModel) -> dict[str, Any] | None:
        """What the pass will smooth, known from the skeleton (for files whose metadata is written first)."""
        if recipe.alpha is None:
            return None
        from int8wb.engine.quant import smoothing

        found, _ = smoothing.groups(self.model)
        smoothed = {member: group.source for group in found for member in group.members}
        unsmoothed = [name for name, _ in linear_layers(self.model) if name not in smoothed]
        return smoothing_summary({"alpha": recipe.alpha, "smoothed": smoothed, "unsmoothed": unsmoothed})


def outside_bytes(model) -> dict[str, int]:
    """tensor_bytes of the tensors outside the decoder layers (embeddings, final norm, head, rotary tables)."""
    _, stack = decoder_layers(model)
    inside = {id(t) for t in list(stack.parameters()) + list(stack.buffers())}
    return tensor_bytes_of([t for t in list(model.parameters()) + list(model.buffers()) if id(t) not in inside])


class _Evaluation:
    """The evaluation streams: the baseline and each method over the same windows, and their perplexity rows."""

    def __init__(self, settings: evaluate.EvalSettings, loaded, variants: LayerVariants, task) -> None:
        from int8wb.engine.model.limits import check_sequence_length
        from int8wb.engine.planning.layer_by_layer import head_chunk_tokens

        check_sequence_length(loaded.model, settings.window, "an evaluation window")
        self.settings = settings
        self.windows, self.source = evaluate.evaluation_windows(settings, loaded.tokenizer, task)
        batches = list(self.windows.split(settings.batch_size))
        self.chunk = head_chunk_tokens(loaded.model.config.vocab_size)
        self.reference = evaluate.starting_reference(settings, loaded, self.windows, self.source)
        self.scorings: dict[str, evaluate.Scoring] = {}  # filled in stream order: the baseline's first
        self.baseline_hidden: list | None = None  # its last hidden states, when it fills the reference
        self.streams = [
            Stream("baseline", batches, lambda index, prefix, block: block, finish=self._finish("baseline"))
        ]
        for method in variants.recipes:
            self.streams.append(Stream(method, batches, _variant_entry(variants, method), finish=self._finish(method)))

    def _finish(self, name: str):
        def finish(hidden: list, norm, head) -> None:
            scoring = evaluate.new_scoring(self.reference, self.settings, fills=name == "baseline")
            # The baseline finishes first; the others' exact KL runs its head again beside theirs.
            baseline = [None] * len(hidden) if scoring.fills or self.baseline_hidden is None else self.baseline_hidden
            for h, batch, reference in zip(hidden, self.streams[0].batches, baseline):
                evaluate.head_scores(h, batch, norm, head, self.chunk, scoring, reference)
            if scoring.fills:
                self.baseline_hidden = hidden
            self.scorings[name] = scoring

        return finish

    def result(self, loaded, variants: list[QuantizedModel], memory: dict[str, Any]) -> dict[str, Any]:
        quantized = {q.method: q for q in variants}
        rows = []
        for stream in self.streams:
            q = quantized.get(stream.name)
            row = evaluate.model_row(stream.name, tensor_bytes(loaded.model) if q is None else {}, q)
            row.update(self.scorings[stream.name].numbers(stream.seconds))
            row["memory"] = memory
            rows.append(row)
        result = evaluate.comparison(rows, self.windows, self.settings, self.source, loaded.device)
        details = {name: s.comparison.detail() for name, s in self.scorings.items() if s.comparison is not None}
        return evaluate.with_reference(result, self.reference, details, self.settings, loaded)


def _variant_entry(variants: LayerVariants, method: str):
    def enter(index: int, prefix: str, block):
        return variants.block(method, index, prefix, block)

    return enter


def _take_from_scan(recipes: list[QuantizedModel]):
    """The scan's per-layer callback: static llm-int8 takes the layer's outlier dimensions at its threshold,
    smoothquant the layer's activation abs-max, before the layer is quantized."""
    from int8wb.engine.quant.schemes import scheme_of

    def on_layer(index: int, stats: list) -> None:
        for recipe in recipes:
            scheme = scheme_of(recipe.method)
            for input_stats in stats:  # one array per Linear, as ScanResult.outlier_dims gives them
                if scheme.outliers == "static":
                    over = input_stats.absmax > recipe.threshold
                    recipe.outlier_dims.update({name: np.flatnonzero(over) for name in input_stats.names})
                if scheme.smoothed:
                    recipe.activation_absmax.update({name: input_stats.absmax for name in input_stats.names})

    return on_layer


def run(loaded, request: PassRequest, task) -> PassResult:
    """Run `request` over `loaded` (an engine.pipeline.on_disk.LayerwiseModel) in one layer-by-layer pass."""
    from int8wb.engine.planning.memory import MemoryRecorder

    model = loaded.model
    result = PassResult()
    streams: list[Stream] = []
    variants = LayerVariants(request.variants, model, task)
    if request.scan is not None:
        batches, n_tokens, source = scan.calibration_batches(request.scan, model, loaded.tokenizer, loaded.device, task)
        result.scan = scan.ScanResult(
            request.scan, n_tokens, source, token_text=token_axis.token_texts(loaded.tokenizer, batches)
        )
        on_layer = _take_from_scan(request.variants)
        streams.append(scan.scan_stream(request.scan, model, batches, result.scan, task, on_layer))
    evaluation = _Evaluation(request.evaluate, loaded, variants, task) if request.evaluate is not None else None
    streams += evaluation.streams if evaluation else []
    exporter = _exporter(loaded, request, variants, result)
    work = ([exporter] if exporter else []) + [variants]
    dtype = next(model.parameters()).dtype

    def body(staging=None) -> None:
        if exporter is not None:
            exporter.start(staging)
        run_layers(model, loaded.weights, streams, work, task.slice(0.0, 0.98), loaded.device, dtype)
        if exporter is not None:
            exporter.finish(task)

    with MemoryRecorder().phase("layer-by-layer pass", loaded.device) as phase:
        if exporter is None:
            body()
        else:
            from int8wb.engine.checkpoint.export import write_staged

            write_staged(exporter.target, exporter.needed, body, task, exporter.overwrite)
    result.variants = variants.results()
    if evaluation is not None:
        result.evaluation = evaluation.result(loaded, result.variants, asdict(phase))
    if exporter is not None:
        result.export = exporter.result()
    task.progress(1.0, "pass complete")
    return result


def _exporter(loaded, request: PassRequest, variants: LayerVariants, result: PassResult):
    """The export work of the pass, planned and checked (target, free space) before any layer is read."""
    if request.export is None:
        return None
    from int8wb.engine.checkpoint import contents
    from int8wb.engine.pipeline.layer_export import LayerExport

    recipe = request.variants[0]
    sidecar = replace(recipe, smoothing=variants.expected_smoothing(recipe))
    settings = contents.quantized_settings(sidecar, result.scan or request.scan_for_export)
    return LayerExport(request.export, loaded, recipe, variants, settings)


def request_from_params(params: dict[str, Any], model, earlier_scan=None) -> PassRequest:
    """A PassRequest from a job's params: scan ({...} or None), methods, threshold, alpha, skip_modules,
    evaluate ({...} or None), export ({out, overwrite, max_shard_size, format} or None, for the first method).

    Static llm-int8 and smoothquant take their numbers from this pass's scan when there is one, else
    from `earlier_scan`.
    """
    from int8wb.engine.quant.quantize import check_methods, recipe_from_params

    scan_settings = scan.ScanSettings.from_params(params["scan"]) if params.get("scan") is not None else None
    methods = check_methods(params["methods"]) if params.get("methods") else []
    shared = {k: params[k] for k in ("threshold", "alpha", "skip_modules") if params.get(k) is not None}
    scan_for_recipes = None if scan_settings else earlier_scan
    recipes = [
        recipe_from_params({**shared, "method": m}, model, scan_for_recipes, scan_settings is not None) for m in methods
    ]
    eval_settings = (
        evaluate.EvalSettings.from_params(params["evaluate"]) if params.get("evaluate") is not None else None
    )
    return PassRequest(scan_settings, recipes, eval_settings, params.get("export"), earlier_scan)
