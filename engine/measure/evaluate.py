"""Perplexity of the baseline and of each quantized model, on the same tokens.

Perplexity = exp(mean token NLL) over non-overlapping windows of the
evaluation text (never the calibration text). W8A8 results move by a few
percent on a single 512-token window, because rounding flips compound through
the layers; compare methods on 8,192 tokens or more.

In the same pass, each model's predictions are compared with the float model's
(engine.measure.divergence): the baseline's pass fills the reference, or a saved
reference file (engine.measure.reference) stands in for it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from int8wb.engine.errors import BadInput, check_counts
from int8wb.engine.measure import divergence


@dataclass(frozen=True)
class EvalSettings:
    tokens: int = 8192  # evaluation token budget
    window: int = 512  # tokens per window
    batch_size: int = 4  # windows per forward call
    corpus: str | None = None
    reference: str | None = None  # a saved reference file to compare against, in place of the baseline
    save_reference: str | None = None  # where to save the baseline's predictions

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> EvalSettings:
        settings = cls(**{k: params[k] for k in cls.__dataclass_fields__ if params.get(k) is not None})
        check_counts(settings, ("tokens", "window", "batch_size"))
        for name in ("reference", "save_reference"):
            if getattr(settings, name) is not None and not isinstance(getattr(settings, name), str):
                raise BadInput(f"{name} must be a file path, got {getattr(settings, name)!r}")
        if settings.reference and settings.save_reference:
            raise BadInput("give either a reference to compare against or one to save, not both")
        return settings


def evaluation_windows(settings: EvalSettings, tokenizer, task=None):
    """The (n, window) token ids every model is evaluated on; `task` is asked for cancellation while the text is read."""
    from int8wb.engine.model import corpus

    split = corpus.load_split(settings.corpus)
    ids = corpus.tokenize(tokenizer, split.evaluation, settings.tokens, task)
    return corpus.windows(ids, settings.window, settings.tokens), split.source


def batches_in_order(windows, batch_size: int, task):
    """The evaluation batches (batch_size windows each), with cancellation asked before and progress told after each."""
    batches = windows.split(batch_size)
    for i, batch in enumerate(batches):
        task.check_cancelled()
        yield batch
        task.progress((i + 1) / len(batches))


def perplexity(model, windows, batch_size: int, task) -> dict[str, float]:
    """exp(mean NLL) of `model` over `windows` (n, window); each window predicts window-1 tokens."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    started = time.perf_counter()
    with torch.no_grad():
        for batch in batches_in_order(windows, batch_size, task):
            batch = batch.to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1]  # (B, W-1, V)
            nll = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total_nll += float(nll)
            total_tokens += batch[:, 1:].numel()
    return perplexity_numbers(total_nll, total_tokens, time.perf_counter() - started)


SCORE_CHUNK = 1024  # positions whose log-softmax is computed at once (4 bytes x vocabulary each)


def log_softmax_chunks(logits):
    """The float32 log-softmax of logits (positions, V), `SCORE_CHUNK` positions at a time (one alive unless kept)."""
    import torch.nn.functional as F

    for start in range(0, logits.shape[0], SCORE_CHUNK):
        yield F.log_softmax(logits[start : start + SCORE_CHUNK].float(), dim=-1)


class Scoring:
    """One model's pass: its summed NLL and, when given, its comparison with the float model's reference.

    `fills` says that this model is the float model whose pass writes the reference (its comparison with
    itself is exact, and so is that of every model given its log-softmax, see `add`).
    """

    def __init__(self, comparison: divergence.Comparison | None = None, fills: bool = False) -> None:
        self.comparison, self.fills = comparison, fills
        self.nll, self.tokens = 0.0, 0

    def add(self, logits, targets, reference: list | None = None, keep: bool = False) -> list | None:
        """Logits (positions, V) and the tokens that come next (positions,), in position order.

        `reference`: the float model's `log_softmax_chunks` at the same positions, for the exact KL.
        With `keep`, returns this model's log-softmax chunks (the float model's, for the others to compare).
        """
        targets = targets.to(logits.device)
        kept = []
        for i, logprobs in enumerate(log_softmax_chunks(logits)):
            chunk_targets = targets[i * SCORE_CHUNK : (i + 1) * SCORE_CHUNK]
            self.nll -= float(logprobs.gather(1, chunk_targets[:, None]).sum())
            if self.fills:
                self.comparison.reference.fill(self.tokens, logprobs, chunk_targets)
                self.comparison.add_itself(int(chunk_targets.numel()))
            elif self.comparison is not None:
                self.comparison.add(logprobs, chunk_targets, None if reference is None else reference[i])
            self.tokens += int(chunk_targets.numel())
            if keep:
                kept.append(logprobs)
        return kept if keep else None

    def numbers(self, seconds: float) -> dict[str, Any]:
        """The row's measured part: perplexity, and the divergence when there is a reference."""
        numbers = perplexity_numbers(self.nll, self.tokens, seconds)
        if self.comparison is not None:
            numbers.update(self.comparison.summary())
        return numbers


def measure(models: list, windows, batch_size: int, task, scorings: list[Scoring]) -> list[float]:
    """Every model's perplexity (and divergence) into its scoring, batch by batch; the seconds of each model.

    Window-major: on each batch the first model (the float model when it fills the reference) runs first,
    and its log-softmax is kept for the others' exact KL on the same positions, then dropped; so at most the
    float model's log-softmax and one other model's logits of one batch are held at once.
    """
    import torch

    device = next(models[0].parameters()).device
    seconds = [0.0] * len(models)
    with torch.no_grad():
        for batch in batches_in_order(windows, batch_size, task):
            batch = batch.to(device)
            reference: list | None = None
            for i, (model, scoring) in enumerate(zip(models, scorings)):
                started = time.perf_counter()
                logits = model(input_ids=batch, use_cache=False).logits  # (B, W, V)
                per_window = [
                    scoring.add(
                        logits[b, :-1], batch[b, 1:], None if reference is None else reference[b], scoring.fills
                    )
                    for b in range(batch.shape[0])
                ]
                del logits
                if scoring.fills:
                    reference = per_window
                seconds[i] += time.perf_counter() - started
    return seconds


def perplexity_numbers(total_nll: float, total_tokens: int, seconds: float) -> dict[str, float]:
    """The perplexity row's measured part from a summed NLL (infinite when the NLL is not finite)."""
    mean_nll = total_nll / total_tokens
    ppl = math.exp(mean_nll) if math.isfinite(mean_nll) else float("inf")
    return {"perplexity": ppl, "mean_nll": mean_nll, "tokens": total_tokens, "seconds": seconds}


def head_scores(hidden, batch, norm, head, chunk_tokens: int, scoring: Scoring, reference_hidden=None) -> None:
    """Score one batch from the last layer's hidden states (B, W, hidden) into `scoring`.

    The final norm and the head run on `chunk_tokens` positions at a time, so the logits of a
    long evaluation over a large vocabulary are never whole in memory. `reference_hidden`: the float
    model's on the same batch, whose logits are made beside each chunk for the exact KL.
    """

    def positions(states):
        return states[:, :-1].reshape(-1, states.shape[-1])  # (B * (W-1), hidden)

    states = positions(hidden)
    targets = batch[:, 1:].reshape(-1).to(states.device)
    for start in range(0, states.shape[0], chunk_tokens):
        reference = None
        if reference_hidden is not None:
            reference = list(log_softmax_chunks(head(norm(positions(reference_hidden)[start : start + chunk_tokens]))))
        scoring.add(head(norm(states[start : start + chunk_tokens])), targets[start : start + chunk_tokens], reference)


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
    """The evaluation result: every row with its change against the first (the baseline).

    A row compared with the float model's reference already has its change, from the per-token differences.
    """
    from int8wb.kernels.ops import int8_product_path

    baseline = rows[0]["perplexity"]
    for row in rows:
        if row.get("relative_change") is None:
            row["relative_change"] = row["perplexity"] / baseline - 1.0
    return {
        "settings": {"tokens": int(windows.numel()), "window": settings.window, "batch_size": settings.batch_size},
        "corpus": source,
        "int8_path": int8_product_path(device),
        "rows": rows,
    }


def starting_reference(settings: EvalSettings, loaded, windows, source: str) -> divergence.Reference | None:
    """The reference the models are compared with: the file given, checked against these tokens, or an
    empty one that the float model's pass fills (its top `TOP_K` when it is saved, else the token view's
    top `SHOWN_TOP`: the KL is then exact, from the float model's whole log-softmax); None for a re-opened
    export with no file (no float model)."""
    from int8wb.engine.measure import reference

    identity = reference.tokenizer_identity(loaded.tokenizer)
    if settings.reference:
        saved = reference.load(settings.reference)
        reference.check_matches(saved, windows.numpy(), identity, int(loaded.model.config.vocab_size))
        return saved
    if getattr(loaded, "quantized", None) is not None:
        if settings.save_reference:
            raise BadInput("a reference holds the floating-point model's predictions: this is a quantized export")
        return None
    if settings.save_reference:
        reference.check_writable(settings.save_reference)
    k = divergence.TOP_K if settings.save_reference else divergence.SHOWN_TOP
    k = min(k, int(loaded.model.config.vocab_size))
    return divergence.Reference.empty(windows.numpy(), k, identity, loaded.name, source)


def run(params: dict[str, Any], task, loaded, quantized: dict[str, Any]) -> dict[str, Any]:
    """Baseline plus every model in `quantized` (name -> engine.quant.quantize.QuantizedModel), side by side.

    Returns {"settings", "corpus", "rows": [...], "token_detail"}, one row per model with perplexity,
    relative change and divergence against the float model, and byte counts; `token_detail` holds the
    per-token divergence for the window's token view (token_view_data).
    """
    from int8wb.engine.model.limits import check_evaluation, check_sequence_length
    from int8wb.engine.planning.memory import MemoryRecorder
    from int8wb.engine.quant.quantize import tensor_bytes

    settings = EvalSettings.from_params(params)
    check_sequence_length(loaded.model, settings.window, "an evaluation window")
    windows, source = evaluation_windows(settings, loaded.tokenizer)
    ref = starting_reference(settings, loaded, windows, source)
    check_evaluation(loaded.model, settings.window, min(settings.batch_size, windows.shape[0]), loaded.device)
    # A re-opened export has no floating-point model: its own quantized model is the first row.
    reopened = getattr(loaded, "quantized", None)
    first = (f"{reopened.method} (exported)", loaded.model, reopened) if reopened else ("baseline", loaded.model, None)
    models = [first] + [(name, q.model, q) for name, q in quantized.items()]
    scorings = [new_scoring(ref, settings, fills=i == 0) for i in range(len(models))]
    task.log(f"evaluating {', '.join(name for name, _, _ in models)} on {windows.numel()} tokens, batch by batch")
    with MemoryRecorder().phase("evaluate", loaded.device) as phase:
        seconds = measure([model for _, model, _ in models], windows, settings.batch_size, task, scorings)
    rows = []
    for (name, model, q), scoring, spent in zip(models, scorings, seconds):
        row = model_row(name, tensor_bytes(model) if q is None else {}, q)
        row.update(scoring.numbers(spent))
        row["memory"] = asdict(phase)
        rows.append(row)
    details = {name: s.comparison.detail() for (name, _, _), s in zip(models, scorings) if s.comparison is not None}
    result = comparison(rows, windows, settings, source, loaded.device)
    return with_reference(result, ref, details, settings, loaded)


def new_scoring(ref: divergence.Reference | None, settings: EvalSettings, fills: bool) -> Scoring:
    """A model's scoring: against the saved file's top k, or (filled by the float model in the same pass) exact."""
    if ref is None:
        return Scoring()
    in_pass = not settings.reference
    return Scoring(divergence.Comparison(ref, exact=in_pass), fills=fills and in_pass)


def with_reference(result: dict[str, Any], ref, details: dict[str, dict], settings: EvalSettings, loaded):
    """The result with what its reference says (and its token detail), the reference saved when asked."""
    from int8wb.engine.measure import reference as reference_file

    if ref is None:
        return result
    in_pass = not settings.reference  # the KL exact, from the float model in the same pass
    result["reference"] = {
        "model": ref.model,
        "exact": in_pass,
        "k": None if in_pass and not settings.save_reference else ref.k,  # of the file read or saved
        "perplexity": ref.perplexity(),
        "file": settings.reference,
    }
    result["token_detail"] = token_view_data(ref, details, loaded.tokenizer)
    if settings.save_reference:
        saved = reference_file.save(ref, settings.save_reference)
        result["reference"].update(
            file=str(saved), bytes=saved.stat().st_size, full_logits_bytes=full_logits_bytes(ref, loaded)
        )
    return result


def full_logits_bytes(ref: divergence.Reference, loaded) -> int:
    """What the same file would take with the float model's whole float32 logits at every position."""
    return ref.positions * int(loaded.model.config.vocab_size) * 4


def token_view_data(ref: divergence.Reference, details: dict[str, dict], tokenizer) -> dict[str, Any]:
    """Per position: the tokens, the reference's and each model's top next tokens and KL, and the text of
    every token id they name (the window has no tokenizer)."""
    import numpy as np

    shown = divergence.SHOWN_TOP
    named = [ref.token_ids.reshape(-1), ref.top_ids[:, :shown].reshape(-1)]
    named += [detail["top_ids"].reshape(-1) for detail in details.values()]
    piece_ids = np.unique(np.concatenate([np.asarray(ids, dtype=np.int64) for ids in named]))
    return {
        "token_ids": ref.token_ids.astype(np.int32),
        "piece_ids": piece_ids.astype(np.int32),
        "pieces": [tokenizer.decode([int(i)]) for i in piece_ids],
        "reference_top_ids": np.ascontiguousarray(ref.top_ids[:, :shown]),
        "reference_top_probs": np.exp(ref.top_logprobs[:, :shown]),
        "methods": details,
    }


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
    if result.get("reference"):
        lines += ["", *divergence_table(result)]
    return "\n".join(lines)


def divergence_table(result: dict[str, Any]) -> list[str]:
    """Each row against the float model's predictions: KL divergence, same top token, RMS Δp, perplexity change."""
    reference = result["reference"]
    if reference.get("exact", False):
        against = f"{reference['model']}, exact KL over the whole vocabulary"
    else:
        against = f"the reference file {reference['file']}, top {reference['k']} per token"
    header = (
        f"{'method':<18}{'mean KL':>10}{'median':>10}{'99%':>9}{'99.9%':>9}{'max':>9}{'same top':>10}"
        f"{'RMS Δp':>9}{'PPL change (95%)':>27}"
    )
    lines = [
        f"divergence from the floating-point model's predictions ({against})",
        header,
        "-" * len(header),
    ]
    for row in result["rows"]:
        interval = f"{row['change_low']:+.2%} … {row['change_high']:+.2%}"
        lines.append(
            f"{row['method']:<18}{row['kl_mean']:>10.5f}{row['kl_median']:>10.5f}{row['kl_p99']:>9.4f}"
            f"{row['kl_p999']:>9.4f}{row['kl_max']:>9.3f}{row['same_top']:>10.2%}{row['rms_dp']:>9.2%}"
            f"{row['relative_change']:>+9.2%} ({interval})"
        )
    if reference.get("bytes"):
        lines.append(
            f"reference saved: {reference['file']}, top {reference['k']} per token, {reference['bytes'] / 1e6:,.1f} MB "
            f"(the full float32 logits would take {reference['full_logits_bytes'] / 1e6:,.0f} MB)"
        )
    return lines


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
