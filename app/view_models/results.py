"""Results of quantization and evaluation, one row per method, ready for the table, the chart and files.

The table's columns are one declarative list (`COLUMNS`): each says its
header, what it means (the header's tooltip), how to read its value from a row
and how to show it. A column added there appears in the table, its tooltips,
the CSV and the Markdown copy. Columns marked `shown=False` stay out of the
table (so that it fits a small screen) and appear in each row's tooltip;
`saved=False` marks a column that only condenses others for the table.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from int8wb.app.view_models.decode import DecodeRun
from int8wb.app.view_models.token_divergence import TokenDivergence
from int8wb.engine.vocabulary import BASELINE, RESULT_GPUS

MB = 1e6
UNKNOWN = "—"
DOES_NOT_FIT = "does not fit"


@dataclass
class ResultRow:
    method: str
    perplexity: float | None = None
    relative_change: float | None = None
    int8_bytes: int | None = None
    float_bytes: int | None = None
    total_bytes: int | None = None
    outlier_dims: int | None = None
    seconds: float | None = None
    threshold: float | None = None  # the threshold the method was quantized at
    gpus: dict[str, int | None] = field(default_factory=dict)  # card -> GPUs needed (None: does not fit)
    int8_share: float | None = None  # of the decoder's matrix weights (engine.quant.coverage)
    kept_float: list[dict[str, Any]] = field(default_factory=list)  # what stayed in floating point, and why
    warnings: list[str] = field(default_factory=list)  # a decoder mostly left in floating point
    tokens_per_s: float | None = None  # measured greedy decoding, batch 1
    bound_tokens_per_s: float | None = None  # the machine's copy bandwidth / planned bytes per token
    # Against the floating-point model's predictions on the same tokens (engine.measure.divergence):
    kl_mean: float | None = None
    kl_median: float | None = None
    kl_p99: float | None = None
    kl_p999: float | None = None
    kl_max: float | None = None
    same_top: float | None = None  # share of positions whose most probable next token is the float model's
    rms_dp: float | None = None  # RMS change of the probability of the token that comes next
    change_low: float | None = None  # 95% interval of the perplexity change, from the per-token differences
    change_high: float | None = None

    def cells(self) -> list[str]:
        """The row as the table shows it, in `shown_columns()` order."""
        return [column.text(self) for column in shown_columns()]


@dataclass(frozen=True)
class Column:
    """One column of the results: header, meaning, value of a row, and that value as text."""

    header: str
    tooltip: str
    value: Callable[[ResultRow], Any]
    format: Callable[[Any], str] = str
    shown: bool = True  # False: in each row's tooltip, the CSV and the Markdown, not in the table
    saved: bool = True  # False: in the table only (it repeats other columns)

    def text(self, row: ResultRow) -> str:
        value = self.value(row)
        return UNKNOWN if value is None else self.format(value)


def _megabytes(read: Callable[[ResultRow], int | None]) -> Callable[[ResultRow], float | None]:
    """A byte count of the row in MB (10^6 bytes), the unit every MB column shows and saves."""
    return lambda row: None if read(row) is None else read(row) / MB


def _one_decimal(value: float) -> str:
    return f"{value:,.1f}"


def _kl(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"


def _signed_percent(value: float) -> str:
    return f"{value:+.2%}"


def _change_interval(row: ResultRow) -> tuple[float, float] | None:
    return None if row.change_low is None or row.change_high is None else (row.change_low, row.change_high)


KL_MEANING = (
    "KL divergence of this model's next-token distribution from the floating-point model's, in nats per token "
    "(0: the same predictions)"
)
DIVERGENCE_FIELDS = (
    "kl_mean",
    "kl_median",
    "kl_p99",
    "kl_p999",
    "kl_max",
    "same_top",
    "rms_dp",
    "change_low",
    "change_high",
)


def _gpus_needed(card: str) -> Callable[[ResultRow], Any]:
    def value(row: ResultRow) -> Any:
        if card not in row.gpus:
            return None
        return DOES_NOT_FIT if row.gpus[card] is None else row.gpus[card]

    return value


def _cards_header(cards: tuple[str, ...]) -> str:
    """ "A100s 40/80 GB" for cards of one family (the table's narrowest honest header), else every name."""
    families = {card.split("-")[0] for card in cards}
    if len(families) > 1 or not all(card.endswith("GB") for card in cards):
        return "GPUs " + " / ".join(cards)
    return f"{families.pop()}s " + "/".join(card.split("-")[-1].removesuffix("GB") for card in cards) + " GB"


def _gpus_on_each_card(row: ResultRow) -> str | None:
    """ "1 / 2" for the result cards in order; ✗ where the model does not fit."""
    if not row.gpus:
        return None
    return " / ".join(
        UNKNOWN if c not in row.gpus else "✗" if row.gpus[c] is None else str(row.gpus[c]) for c in RESULT_GPUS
    )


COLUMNS: tuple[Column, ...] = (
    Column("method", "The quantization method; hover a row for its other numbers.", lambda r: r.method),
    Column(
        "perplexity",
        "How surprised the model is by the evaluation text (exp of the mean loss per token): lower is better.",
        lambda r: r.perplexity,
        lambda v: f"{v:.3f}",
    ),
    Column(
        "change",
        "Perplexity against the floating-point baseline, on the same evaluation tokens.",
        lambda r: r.relative_change,
        lambda v: f"{v:+.2%}",
    ),
    Column(
        "change 95%",
        "The 95% interval of the perplexity change, from the per-token differences of log-likelihood against the "
        "floating-point model on the same tokens: paired, so much tighter than two separate perplexity intervals.",
        _change_interval,
        lambda v: f"{v[0]:+.2%}…{v[1]:+.2%}",
        saved=False,
    ),
    Column(
        "change low",
        "Lower end of the perplexity change's 95% interval.",
        lambda r: r.change_low,
        _signed_percent,
        shown=False,
    ),
    Column(
        "change high",
        "Upper end of the perplexity change's 95% interval.",
        lambda r: r.change_high,
        _signed_percent,
        shown=False,
    ),
    Column("mean KL", f"Mean {KL_MEANING}, over every evaluation token.", lambda r: r.kl_mean, _kl),
    Column("KL median", f"Median {KL_MEANING}.", lambda r: r.kl_median, _kl, shown=False),
    Column("KL 99%", f"99th percentile of the {KL_MEANING}.", lambda r: r.kl_p99, _kl, shown=False),
    Column(
        "KL 99.9%",
        f"99.9th percentile of the {KL_MEANING}: the rare tokens where quantization hurts most.",
        lambda r: r.kl_p999,
        _kl,
    ),
    Column("KL max", f"Largest {KL_MEANING}.", lambda r: r.kl_max, _kl, shown=False),
    Column(
        "same top",
        "Share of tokens where this model's most probable next token is the floating-point model's.",
        lambda r: r.same_top,
        lambda v: f"{v:.2%}",
    ),
    Column(
        "RMS Δp",
        "Root mean square of the change in the probability given to the token that actually comes next, against "
        "the floating-point model (percentage points).",
        lambda r: r.rms_dp,
        lambda v: f"{v:.2%}",
    ),
    Column(
        "int8 MB",
        "Bytes stored as INT8: the quantized weights.",
        _megabytes(lambda r: r.int8_bytes),
        _one_decimal,
        shown=False,
    ),
    Column(
        "float MB",
        "Bytes left in floating point: embeddings, norms, scales and, for LLM.int8(), the outlier weight columns.",
        _megabytes(lambda r: r.float_bytes),
        _one_decimal,
        shown=False,
    ),
    Column(
        "model MB",
        "Every tensor of the model: INT8 plus floating point.",
        _megabytes(lambda r: r.total_bytes),
        _one_decimal,
    ),
    Column(
        "outlier cols",
        "Linear input columns kept in floating point: for static LLM.int8(), those over the threshold in the scan.",
        lambda r: r.outlier_dims,
        lambda v: f"{v:,}",
    ),
    Column(
        "INT8 share",
        "The share of the decoder's matrix weights stored as INT8 (embeddings and output head are outside it); "
        "the note below the table says what stayed in floating point and why.",
        lambda r: r.int8_share,
        lambda v: f"{v:.1%}",
    ),
    Column(
        _cards_header(RESULT_GPUS),
        f"Cards needed for the weights, the KV cache and the activations: {' / '.join(RESULT_GPUS)}; ✗ where "
        "no count of them holds the model. The note below the table gives the plan's context and batch.",
        _gpus_on_each_card,
        saved=False,
    ),
    *(
        Column(
            card,
            f"{card} cards needed (does not fit: no count of them holds the model).",
            _gpus_needed(card),
            shown=False,
        )
        for card in RESULT_GPUS
    ),
    Column("eval s", "Seconds the evaluation of this method took.", lambda r: r.seconds, _one_decimal, shown=False),
    Column(
        "tokens/s",
        "Tokens per second of greedy decoding with the KV cache, measured on the engine's device.",
        lambda r: r.tokens_per_s,
        _one_decimal,
    ),
    Column(
        "bound",
        "The tokens/s a step would reach if it only read its planned bytes (weights as stored, KV cache) "
        "at the bandwidth of a large copy measured in the same run; the Generated text tab says more.",
        lambda r: r.bound_tokens_per_s,
        _one_decimal,
    ),
)


def shown_columns() -> list[Column]:
    return [column for column in COLUMNS if column.shown]


def saved_columns() -> list[Column]:
    return [column for column in COLUMNS if column.saved]


FOLDS_FIRST = ("bound", "RMS Δp", "KL 99.9%", "change 95%", "INT8 share")
"""Shown columns a table too narrow for all of them folds into the row's tooltip, first to last."""


def row_tooltip(row: ResultRow, folded: tuple[str, ...] = ()) -> str:
    """The columns the table leaves out (and those it `folded` for want of width), for the row's tooltip."""
    return "\n".join(
        f"{column.header}: {column.text(row)}" for column in COLUMNS if not column.shown or column.header in folded
    )


class ResultsModel:
    """Rows by method; baseline first. Quantize summaries, evaluation rows and memory plans merge in."""

    def __init__(self) -> None:
        self.rows: dict[str, ResultRow] = {}
        self.eval_tokens: int | None = None
        self.plan_note: str = ""
        self.decode: DecodeRun | None = None
        self.tokens: TokenDivergence | None = None  # the last evaluation's per-token divergence
        self.tasks: Any = None  # the last Run's task accuracy (app.view_models.task_accuracy.TaskAccuracy)
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()

    def clear(self) -> None:
        self.rows.clear()
        self.eval_tokens = None
        self.plan_note = ""
        self.decode = None
        self.tokens = None
        self.tasks = None
        self._changed()

    def _row(self, method: str) -> ResultRow:
        if method not in self.rows:
            self.rows[method] = ResultRow(method)
            ordered = sorted(self.rows.values(), key=lambda r: (r.method != BASELINE,))
            self.rows = {r.method: r for r in ordered}
        return self.rows[method]

    def add_quantized(self, result: dict[str, Any]) -> None:
        """The `quantize` job's reply: {"models": [summary, ...]}."""
        for summary in result.get("models", []):
            row = self._row(summary["method"])
            row.int8_bytes, row.float_bytes = summary.get("int8_bytes"), summary.get("float_bytes")
            row.total_bytes, row.outlier_dims = summary.get("total_bytes"), summary.get("outlier_dims")
            row.threshold = summary.get("threshold")
            row.perplexity = row.relative_change = row.seconds = None  # stale until evaluated again
            for name in DIVERGENCE_FIELDS:
                setattr(row, name, None)
            self._take_coverage(row, summary)
            row.tokens_per_s = row.bound_tokens_per_s = None
        self.tasks = None  # scored on the models this quantize replaced
        self._changed()

    def set_tasks(self, tasks: Any) -> None:
        """The `task_accuracy` job's reply, as an app.view_models.task_accuracy.TaskAccuracy."""
        self.tasks = tasks
        self._changed()

    def add_evaluation(self, result: dict[str, Any]) -> None:
        """The `evaluate` job's reply: {"settings", "corpus", "rows": [...]}."""
        self.eval_tokens = result.get("settings", {}).get("tokens")
        self.tokens = TokenDivergence.from_result(result)
        for entry in result.get("rows", []):
            row = self._row(entry["method"])
            for name in (
                "perplexity",
                "relative_change",
                "int8_bytes",
                "float_bytes",
                "total_bytes",
                "outlier_dims",
                "seconds",
                *DIVERGENCE_FIELDS,
            ):
                if entry.get(name) is not None:
                    setattr(row, name, entry[name])
            self._take_coverage(row, entry)
        self._changed()

    @staticmethod
    def _take_coverage(row: ResultRow, entry: dict[str, Any]) -> None:
        """The share of the decoder in INT8 and what stayed in floating point (engine.quant.coverage)."""
        if entry.get("int8_share") is not None:
            row.int8_share = float(entry["int8_share"])
            row.kept_float = list(entry.get("kept_float") or [])
            row.warnings = list(entry.get("warnings") or [])

    def coverage_note(self) -> str:
        """Under the table: what the INT8 share counts, warnings, and what each method kept in floating point."""
        quantized = [row for row in self.rows.values() if row.method != BASELINE and row.int8_share is not None]
        if not quantized:
            return ""
        lines = ["INT8 share: of the decoder's matrix weights (embeddings and output head are outside it)."]
        lines += [f"Warning: {warning}" for row in quantized for warning in row.warnings]
        lines += [
            f"{row.method}: {group['modules']} ({group['count']}x, {group['weights']:,} weights) in floating "
            f"point: {group['why']}"
            for row in quantized
            if not row.warnings
            for group in row.kept_float
        ]
        return "\n".join(lines)

    def add_plan(self, result: dict[str, Any]) -> None:
        """The `plan_memory` job's reply: GPUs needed per method and card."""
        for entry in result.get("methods", []):
            if entry.get("method") in self.rows:
                self.rows[entry["method"]].gpus = {
                    card["gpu"]: card.get("needed") for card in entry.get("gpus", []) if "gpu" in card
                }
        settings = result.get("settings", {})
        planned_for = (
            [f"GPUs for a context of {settings['context']:,} tokens, batch {settings['batch']}"]
            if isinstance(settings.get("context"), int) and isinstance(settings.get("batch"), int)
            else []
        )
        self.plan_note = "; ".join([*planned_for, *result.get("notes", [])])
        self._changed()

    def add_decode(self, result: dict[str, Any]) -> None:
        """The `bench_decode` job's reply: tokens/s and bound per method, and the generated text."""
        self.decode = DecodeRun.from_result(result)
        for measured in self.decode.rows:
            row = self._row(measured.method)
            row.tokens_per_s, row.bound_tokens_per_s = measured.tokens_per_s, measured.bound_tokens_per_s
        self._changed()

    def set_plan_unavailable(self, reason: str) -> None:
        self.plan_note = f"GPUs needed: not available ({reason})"
        self._changed()

    @property
    def has_evaluation(self) -> bool:
        """Some method (or the baseline) has a measured perplexity."""
        return any(row.perplexity is not None for row in self.rows.values())

    def chart_data(self) -> tuple[list[str], list[float], float | None]:
        """(methods, perplexities, baseline perplexity) of the evaluated rows."""
        evaluated = [r for r in self.rows.values() if r.perplexity is not None]
        baseline = self.rows.get(BASELINE)
        return (
            [r.method for r in evaluated],
            [float(r.perplexity) for r in evaluated],
            None if baseline is None else baseline.perplexity,
        )

    # --- files ---------------------------------------------------------------------------------------

    def to_csv(self) -> str:
        """Every column, values as measured (not rounded; empty when unknown), one row per method."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        columns = saved_columns()
        writer.writerow([column.header for column in columns])
        for row in self.rows.values():
            writer.writerow(["" if (v := column.value(row)) is None else v for column in columns])
        return out.getvalue()

    def to_markdown(self) -> str:
        """Every column as the table shows it, as a Markdown table."""
        columns = saved_columns()
        lines = [
            "| " + " | ".join(column.header for column in columns) + " |",
            "|" + "|".join("---" for _ in columns) + "|",
        ]
        lines += ["| " + " | ".join(column.text(row) for column in columns) + " |" for row in self.rows.values()]
        return "\n".join(lines) + "\n"
