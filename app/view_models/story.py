"""LLM.int8()'s story told with this model's own numbers: the result sentence and the explanation panel.

Every number here is computed from what the window holds (the loaded model's
description, the scan statistics, the threshold, the results); a part whose
numbers are not there yet says which step brings them. Qt-free: the views
show the text these functions return.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from int8wb.app.view_models.results import ResultRow, ResultsModel
from int8wb.app.view_models.scan_stats import ScanStatistics
from int8wb.app.view_models.threshold import ThresholdModel
from int8wb.engine.vocabulary import BASELINE, DEFAULT_THRESHOLD, KIND_ATTN_IN, KIND_LABELS, METHOD_SHORT_LABELS

INTRO = (
    "A language model's Linear layers multiply activations by weights. INT8 stores each number as one of 255 "
    "levels, scaled to the largest value of its group. LLM.int8() (Dettmers et al. 2022) found that a handful "
    "of <b>feature dimensions</b> carry activations far larger than the rest, in the same dimensions on every "
    "token and in most layers. One scale for a whole tensor is stretched by those few values and rounds all the "
    "others to a few levels, so perplexity rises. Keeping just those <b>outlier dimensions</b> in floating point, "
    "and quantizing the rest with one scale per row and per token (<b>vector-wise</b>), keeps the model's quality."
)
WORDS = (
    (
        "threshold",
        "A Linear input dimension whose largest |activation| in the calibration scan exceeds it is an "
        f"outlier and stays in floating point ({DEFAULT_THRESHOLD:g} is LLM.int8()'s choice).",
    ),
    ("top %", "The same choice, put as the share of (Linear, dimension) pairs with the largest activations."),
    ("vector-wise", "One INT8 scale per weight row and one per token, instead of one per tensor."),
    (
        "perplexity",
        "exp of the mean loss per token on text the scan never saw: lower is better; the change "
        "against the floating-point baseline is what quantization cost.",
    ),
    (
        "outlier column",
        "One input dimension of one Linear kept in floating point: its weight column is stored "
        "in floating point, with its index.",
    ),
)


def _outlier_clause(row: ResultRow, stats: ScanStatistics, threshold: ThresholdModel) -> str:
    """What static LLM.int8() kept in floating point, from its row and the scan at the row's threshold."""
    if not row.outlier_dims or not stats.linears:  # only what keeps outlier columns in floating point
        return ""
    summary = threshold.summary(row.threshold or threshold.threshold)
    text = f", keeping {row.outlier_dims:,} of {summary.total_columns:,} input columns"
    if summary.total_columns:
        text += f" ({row.outlier_dims / summary.total_columns:.2%})"
    text += " in floating point"
    if summary.float_bytes is not None:
        text += f", {summary.float_bytes / 1e6:,.2f} MB"
    return text


def result_sentence(results: ResultsModel, stats: ScanStatistics, threshold: ThresholdModel) -> str:
    """The Run's outcome in words ("Naive INT8 raised perplexity by 130.49%; LLM.int8() by ..."); "" before one.

    The percentages are the table's "change" column without its sign; a verb is
    said again only when the direction changes.
    """
    clauses, last_verb = [], None
    for row in results.rows.values():
        if row.method == BASELINE or row.relative_change is None:
            continue
        name = METHOD_SHORT_LABELS.get(row.method, row.method)
        verb = "raised" if row.relative_change >= 0 else "lowered"
        said = "by" if verb == last_verb else f"{verb} perplexity by" if last_verb is None else f"{verb} it by"
        clause = f"{name} {said} {abs(row.relative_change):.2%}" + _outlier_clause(row, stats, threshold)
        clauses.append(clause)
        last_verb = verb
    if not clauses:
        return ""
    sentence = "; ".join(clauses) + "."
    return sentence[:1].upper() + sentence[1:]


def _model_part(info: dict[str, Any] | None) -> str:
    if info is None:
        return "Load a model (step 1) to see its numbers here."
    parameters = info.get("parameters")
    size = f"{parameters / 1e6:,.1f} M parameters, " if parameters else ""
    notes = "".join(f" {html.escape(note[:1].upper() + note[1:])}." for note in info.get("notes", []))
    return (
        f"<b>{html.escape(str(info.get('name', '?')))}</b>: {size}{info.get('layers', '?')} decoder layers, "
        f"{info.get('hidden_size', '?')} feature dimensions, computed in {info.get('dtype', '?')} on "
        f"{info.get('device', '?')}.{notes}"
    )


def recurring_dimension(stats: ScanStatistics, threshold: float) -> tuple[int, int, int] | None:
    """(dimension, layers it is over the threshold in, layers) for the attention input's most frequent outlier."""
    for kind, start, stop in stats.kind_spans():
        filled = stats.row_filled[start:stop]
        if kind != KIND_ATTN_IN or not filled.any():
            continue
        with np.errstate(invalid="ignore"):
            counts = (stats.absmax_grid[start:stop][filled] > threshold).sum(axis=0)
        dim = int(np.argmax(counts))
        return (dim, int(counts[dim]), int(filled.sum())) if counts[dim] else None
    return None


def _outlier_part(stats: ScanStatistics, threshold: ThresholdModel) -> str:
    if not stats.linears:
        return (
            "Scan the model (step 2): the heatmap then shows the largest |activation| of every feature dimension "
            "(columns) in every layer (rows), and the outlier dimensions light up."
        )
    values = stats.all_absmax()
    values = values[np.isfinite(values)]
    grid = np.where(np.isfinite(stats.absmax_grid), stats.absmax_grid, -np.inf)
    row, dim = np.unravel_index(int(np.argmax(grid)), grid.shape)
    median = float(np.median(values))
    summary = threshold.summary()
    text = (
        f"The scan ran {stats.linears[0].n_tokens:,} calibration tokens through every Linear. The median "
        f"feature dimension's largest |activation| is {median:.2g}; the largest is {grid[row, dim]:,.1f} "
        f"(dimension {dim}, {html.escape(stats.row_label(int(row)))}), {grid[row, dim] / median:,.0f}x the median. "
        f"At the threshold {summary.threshold:g}, {summary.outlier_columns:,} of {summary.total_columns:,} "
        f"Linear input columns ({summary.fraction:.2%}) are outliers"
    )
    recurring = recurring_dimension(stats, summary.threshold)
    if recurring is not None:
        text += (
            f"; in the {KIND_LABELS[KIND_ATTN_IN]}, dimension {recurring[0]} is over it in {recurring[1]} of "
            f"{recurring[2]} layers"
        )
    if summary.float_bytes is not None:
        text += f". Keeping them in floating point costs {summary.float_bytes / 1e6:,.2f} MB"
    return text + "."


def _quality_part(results: ResultsModel, stats: ScanStatistics, threshold: ThresholdModel) -> str:
    sentence = result_sentence(results, stats, threshold)
    if not sentence:
        return (
            "Run (step 4) to quantize with the ticked methods and measure perplexity on text the scan never saw; "
            "tick naive INT8 next to LLM.int8() to see the difference."
        )
    baseline = results.rows.get(BASELINE)
    if baseline is not None and baseline.perplexity is not None:
        sentence += f" The floating-point baseline's perplexity is {baseline.perplexity:.3f}."
    return html.escape(sentence)


def _super_weight_part(experiment: dict[str, Any] | None, threshold: float) -> str:
    """The massive activation and the super weight that writes it, from the super weight experiment."""
    if experiment is None:
        return (
            "Beyond outlier dimensions, a few models hold <b>massive activations</b>: single values on one token, "
            "thousands of times the median, written by one <b>super weight</b> of a down projection (Yu et al. "
            "2024). Run the super weight experiment (Workbench menu) to find this model's."
        )
    candidates = {(c["module"], c["row"], c["col"]): c for c in experiment["candidates"]}
    found = [candidates[(f["module"], f["row"], f["col"])] for f in experiment["super_weights"]]
    if not found:
        tried = len(experiment["candidates"])
        return (
            f"The super weight experiment zeroed the {tried} weights that write the most at their down projection's "
            f"largest input spike: {html.escape(experiment['verdict'])} ({html.escape(experiment['criterion'])})."
        )
    parts = []
    for c in found:
        keeps = "keeps" if abs(c["input_spike"]) > threshold else "would keep (at a lower threshold)"
        parts.append(
            f"{html.escape(c['module'])} reads an input spike of {c['input_spike']:,.0f} "
            f"({c['input_ratio']:,.0f}x the median of its input) in dimension {c['col']} at token {c['token']} and "
            f"writes {c['output_spike']:,.0f} into dimension {c['row']} of the residual stream: a <b>massive "
            f"activation</b> later layers use as a fixed bias. One weight makes it, the <b>super weight</b> "
            f"weight[{c['row']}, {c['col']}] = {c['weight']:.4g}: zeroing it took perplexity from "
            f"{experiment['baseline']:.2f} to {c['zeroed']:.2f}, while zeroing the largest other weight of that "
            f"Linear gave {c['control']:.2f}. Static LLM.int8() {keeps} that input column, the super weight "
            f"with it, in floating point (the spike is over the threshold {threshold:g}); naive INT8 and "
            "vector-wise round both to their scales unless the Run keeps the super weight in floating point."
        )
    return " ".join(parts)


def explanation_html(
    model_info: dict[str, Any] | None,
    stats: ScanStatistics,
    threshold: ThresholdModel,
    results: ResultsModel,
    super_weights: dict[str, Any] | None = None,
) -> str:
    """The "What am I looking at?" panel: the finding, then this model's numbers as far as they exist.

    `super_weights`: the super weight experiment's result (engine.measure.super_weight), once it ran."""
    words = "".join(f"<dt><b>{word}</b></dt><dd>{meaning}</dd>" for word, meaning in WORDS)
    return (
        f"<h3>What am I looking at?</h3><p>{INTRO}</p>"
        f"<h4>This model</h4><p>{_model_part(model_info)}</p>"
        f"<h4>Its outliers</h4><p>{_outlier_part(stats, threshold)}</p>"
        f"<h4>Its super weight</h4><p>{_super_weight_part(super_weights, threshold.threshold)}</p>"
        f"<h4>What quantization does to it</h4><p>{_quality_part(results, stats, threshold)}</p>"
        f"<h4>Words</h4><dl>{words}</dl>"
    )
