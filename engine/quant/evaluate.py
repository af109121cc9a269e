"""Perplexity of the baseline and of each quantized model, on the same tokens.

Perplexity = exp(mean token NLL) over non-overlapping windows of the
evaluation text (never the calibration text). W8A8 results move by a few
percent on a single 512-token window, because rounding flips compound through
the layers; compare methods on 8,192 tokens or more.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from int8wb.engine.errors import BadInput


@dataclass(frozen=True)
class EvalSettings:
    tokens: int = 8192  # evaluation token budget
    window: int = 512  # tokens per window
    batch_size: int = 4  # windows per forward call
    corpus: str | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> EvalSettings:
        settings = cls(**{k: params[k] for k in cls.__dataclass_fields__ if params.get(k) is not None})
        for name in ("tokens", "window", "batch_size"):
            value = getattr(settings, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BadInput(f"{name} must be a positive integer, got {value!r}")
        return settings


def evaluation_windows(settings: EvalSettings, tokenizer, task=None):
    """The (n, window) token ids every model is evaluated on; `task` is asked for cancellation while the text is read."""
    from int8wb.engine.model import corpus

    split = corpus.load_split(settings.corpus)
    ids = corpus.tokenize(tokenizer, split.evaluation, settings.tokens, task)
    return corpus.windows(ids, settings.window, settings.tokens), split.source


def perplexity(model, windows, batch_size: int, task) -> dict[str, float]:
    """exp(mean NLL) of `model` over `windows` (n, window); each window predicts window-1 tokens."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    started = time.perf_counter()
    batches = windows.split(batch_size)
    with torch.no_grad():
        for i, batch in enumerate(batches):
            task.check_cancelled()
            batch = batch.to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1]  # (B, W-1, V)
            nll = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total_nll += float(nll)
            total_tokens += batch[:, 1:].numel()
            task.progress((i + 1) / len(batches))
    return perplexity_numbers(total_nll, total_tokens, time.perf_counter() - started)


def perplexity_numbers(total_nll: float, total_tokens: int, seconds: float) -> dict[str, float]:
    """The perplexity row's measured part from a summed NLL (infinite when the NLL is not finite)."""
    mean_nll = total_nll / total_tokens
    ppl = math.exp(mean_nll) if math.isfinite(mean_nll) else float("inf")
    return {"perplexity": ppl, "mean_nll": mean_nll, "tokens": total_tokens, "seconds": seconds}


def head_nll(hidden, batch, norm, head, chunk_tokens: int) -> tuple[float, int]:
    """(summed NLL, tokens) of one batch from the last layer's hidden states (B, W, hidden).

    The final norm and the head run on `chunk_tokens` positions at a time, so the logits of a
    long evaluation over a large vocabulary are never whole in memory.
    """
    import torch.nn.functional as F

    states = hidden[:, :-1].reshape(-1, hidden.shape[-1])  # (B * (W-1), hidden)
    targets = batch[:, 1:].reshape(-1).to(states.device)
    total = 0.0
    for start in range(0, states.shape[0], chunk_tokens):
        logits = head(norm(states[start : start + chunk_tokens]))  # (chunk, V)
        total += float(F.cross_entropy(logits.float(), targets[start : start + chunk_tokens], reduction="sum"))
    return total, int(targets.numel())


def model_row(name: str, sizes: dict[str, int], quantized=None) -> dict[str, Any]:
    """The sizes part of a results row: a quantized model's summary, or the floating-point model's bytes."""
    if quantized is not None:
        return {**quantized.summary(), "method": name}
    return {
        "method": name,
        "threshold": None,
        "int8_bytes": sizes["int8"],
        "float_bytes": sizes["float"],
        "total_bytes": sum(sizes.values()),
        "outlier_dims": 0,
        "skipped_modules": [],
        "int8_share": 0.0,
        "kept_float": [],
        "warnings": [],
    }


def comparison(rows: list[dict[str, Any]], windows, settings: EvalSettings, source: str, device) -> dict[str, Any]:
    """The evaluation result: every row with its change against the first (the baseline)."""
    from int8wb.kernels.ops import int8_product_path

    baseline = rows[0]["perplexity"]
    for row in rows:
        row["relative_change"] = row["perplexity"] / baseline - 1.0
    return {
        "settings": {"tokens": int(windows.numel()), "window": settings.window, "batch_size": settings.batch_size},
        "corpus": source,
        "int8_path": int8_product_path(device),
        "rows": rows,
    }


def run(params: dict[str, Any], task, loaded, quantized: dict[str, Any]) -> dict[str, Any]:
    """Baseline plus every model in `quantized` (name -> engine.quant.quantize.QuantizedModel), side by side.

    Returns {"settings", "corpus", "rows": [...]}, one row per model with
    perplexity, relative change against the baseline, and byte counts.
    """
    from int8wb.engine.model.limits import check_evaluation, check_sequence_length
    from int8wb.engine.planning.memory import MemoryRecorder
    from int8wb.engine.quant.quantize import tensor_bytes

    settings = EvalSettings.from_params(params)
    check_sequence_length(loaded.model, settings.window, "an evaluation window")
    windows, source = evaluation_windows(settings, loaded.tokenizer, task)
    check_evaluation(loaded.model, settings.window, min(settings.batch_size, windows.shape[0]), loaded.device)
    # A re-opened export has no floating-point model: its own quantized model is the first row.
    reopened = getattr(loaded, "quantized", None)
    first = (f"{reopened.method} (exported)", loaded.model, reopened) if reopened else ("baseline", loaded.model, None)
    models = [first] + [(name, q.model, q) for name, q in quantized.items()]
    rows = []
    recorder = MemoryRecorder()
    for i, (name, model, q) in enumerate(models):
        step = task.slice(i / len(models), (i + 1) / len(models))
        step.log(f"evaluating {name} on {windows.numel()} tokens")
        with recorder.phase(f"evaluate {name}", loaded.device) as phase:
            measured = perplexity(model, windows, settings.batch_size, step)
        row = model_row(name, tensor_bytes(model) if q is None else {}, q)
        row.update(measured)
        row["memory"] = asdict(phase)
        rows.append(row)
    return comparison(rows, windows, settings, source, loaded.device)


def format_table(result: dict[str, Any]) -> str:
    """The comparison table as text, for the CLI, and below it what each method kept in floating point."""
    header = (
        f"{'method':<18}{'perplexity':>12}{'change':>9}{'INT8 MB':>10}{'float MB':>10}{'outlier dims':>14}"
        f"{'INT8 share':>12}"
    )
    lines = [
        f"perplexity on {result['settings']['tokens']:,} tokens of {result['corpus']} "
        f"(windows of {result['settings']['window']})",
        header,
        "-" * len(header),
    ]
    for row in result["rows"]:
        lines.append(
            f"{row['method']:<18}{row['perplexity']:>12.3f}{row['relative_change']:>+9.2%}"
            f"{row['int8_bytes'] / 1e6:>10.1f}{row['float_bytes'] / 1e6:>10.1f}{row['outlier_dims']:>14,}"
            f"{row['int8_share']:>12.1%}"
        )
    lines += [smoothing_note(row["method"], row["smoothing"]) for row in result["rows"] if row.get("smoothing")]
    lines.append("INT8 share: of the decoder's matrix weights (embeddings and output head are outside it)")
    lines += coverage_lines(result["rows"])
    return "\n".join(lines)


def smoothing_note(method: str, smoothing: dict[str, Any]) -> str:
    """One line on what SmoothQuant smoothed, and which Linears it had to leave as they were."""
    kinds = sorted({name.rsplit(".", 1)[-1] for name in smoothing["unsmoothed"]})
    left = f"{len(smoothing['unsmoothed'])} unsmoothed ({', '.join(kinds)})" if kinds else "none unsmoothed"
    return f"{method}: alpha {smoothing['alpha']:g}, {smoothing['smoothed']} Linears smoothed, {left}"


def coverage_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Per quantized row, what stayed in floating point and why (one line per group), for the CLI."""
    lines = []
    for row in rows:
        for group in row.get("kept_float", []):
            lines.append(
                f"  {row['method']}: {group['modules']} (x{group['count']}, {group['weights']:,} weights) "
                f"in floating point: {group['why']}"
            )
    return lines
