"""Greedy decoding with the KV cache, timed: tokens/s of the baseline and of each method, against its bound.

At a small batch one decode step reads every weight once (engine.planning.throughput), so memory
bandwidth sets its time. One run on the loaded model's device measures:

- a large copy (read + write bytes per second, as STREAM's Copy counts them): the bandwidth this
  machine's memory allows, taken between the models' runs so that it sees the same load;
- per model, tokens/s over the decode steps (the prompt's prefill is timed apart and left out),
  the median over `repeats` runs that take turns with the other models';
- the bytes each step reads as planned for the model's stored layout, at each step's context,
  and so the bandwidth the model achieved and its bound (copy bandwidth / bytes per token);
- the generated tokens (greedy: the argmax at every step), the first `SHOWN_TOKENS` as text, and
  the first position at which each method's tokens leave the baseline's.

Where a model's achieved bandwidth falls short of the copy's, the step is not spending its time
reading weights: Python and dispatch overhead per layer (hundreds of small operations per token:
norms, rotary embeddings, attention over the cache, the same in every method), and the arithmetic
of the products themselves. On the CPU the INT8 Linears of a decode step each take one pass over
their stored weights (kernels.cpu_gemv), so what remains is mostly the model's own per-layer work.
docs/throughput.md gives the measured figures (bench/decode_peers.py, bench/decode_step.py).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

from int8wb.engine.errors import BadInput, check_counts
from int8wb.engine.vocabulary import BASELINE, MIB

SHOWN_TOKENS = 16
"""Generated tokens shown as text per method, next to the baseline's."""


@dataclass(frozen=True)
class DecodeSettings:
    new_tokens: int = 32  # tokens generated per run; all but the first are timed decode steps
    prompt_tokens: int = 32  # the prompt: the first tokens of the evaluation text
    repeats: int = 3  # timed runs per model; medians are reported
    batch: int = 1  # sequences decoded together, each with the same prompt
    copy_mib: int = 256  # size of the copy that measures the machine's memory bandwidth
    corpus: str | None = None
    prompt: str | None = None  # a prompt text instead of the evaluation text's first tokens

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> DecodeSettings:
        settings = cls(**{k: params[k] for k in cls.__dataclass_fields__ if params.get(k) is not None})
        check_counts(settings, ("new_tokens", "prompt_tokens", "repeats", "batch", "copy_mib"))
        if settings.new_tokens < 2:
            raise BadInput(
                f"new_tokens must be at least 2 (the first comes from the prompt), got {settings.new_tokens}"
            )
        if settings.prompt is not None and (not isinstance(settings.prompt, str) or not settings.prompt.strip()):
            raise BadInput("prompt must be a non-empty text")
        return settings


@dataclass
class Generation:
    """One greedy run: the tokens of the first sequence and how long the two phases took."""

    tokens: list[int]
    prefill_seconds: float
    decode_seconds: float


def prompt_ids(settings: DecodeSettings, tokenizer, task=None):
    """(batch, prompt) token ids: the given prompt, or the evaluation text's first tokens; and the text's source."""
    import torch

    from int8wb.engine.model import corpus

    if settings.prompt is not None:
        ids = tokenizer(settings.prompt, add_special_tokens=False)["input_ids"][: settings.prompt_tokens]
        if not ids:
            raise BadInput("the prompt has no tokens")
        ids, source = torch.tensor(ids, dtype=torch.long), "prompt"
    else:
        split = corpus.load_split(settings.corpus)
        ids, source = corpus.tokenize(tokenizer, split.evaluation, settings.prompt_tokens, task), split.source
    return ids.reshape(1, -1).repeat(settings.batch, 1), source


def cache_keyword(model) -> str:
    """The name of the KV cache argument and output: `cache` in transformers 5, `past_key_values` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def synchronize(device: str) -> None:
    """Wait for the queued work of every GPU the device stands for, so that a clock reading covers it."""
    import torch

    from int8wb.engine.model.loaded import cuda_indices

    if device.startswith("cuda"):
        for index in cuda_indices(device):
            torch.cuda.synchronize(index)


def copy_bandwidth(device: str, nbytes: int) -> float:
    """Bytes read + written per second by one copy of `nbytes` (after a first copy that touches every page)."""
    import torch

    source = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    synchronize(device)
    started = time.perf_counter()
    target.copy_(source)
    synchronize(device)
    return 2 * source.numel() * 4 / (time.perf_counter() - started)


def greedy(model, ids, new_tokens: int, device: str, task) -> Generation:
    """Generate `new_tokens` by argmax with the KV cache: one prefill, then one step per token."""
    import torch

    ids, keyword = ids.to(next(model.parameters()).device), cache_keyword(model)  # the embedding's device
    with torch.inference_mode():
        synchronize(device)
        started = time.perf_counter()
        output = model(input_ids=ids, use_cache=True)
        token = output.logits[:, -1].argmax(dim=-1)  # (B,)
        synchronize(device)
        prefilled = time.perf_counter()
        generated = [token]
        for step in range(new_tokens - 1):
            task.check_cancelled()
            output = model(input_ids=token[:, None], use_cache=True, **{keyword: getattr(output, keyword)})
            token = output.logits[:, -1].argmax(dim=-1)
            generated.append(token)
            task.progress((step + 1) / (new_tokens - 1))
        synchronize(device)
        finished = time.perf_counter()
    tokens = torch.stack(generated, dim=1)[0].tolist()
    return Generation(tokens, prefilled - started, finished - prefilled)


def planned_read(model, method: str, dtype: str, batch: int, prompt_length: int, new_tokens: int) -> dict[str, Any]:
    """Bytes a timed step reads as planned for the model's stored layout, averaged over the steps' contexts."""
    from int8wb.engine.planning import presets, throughput
    from int8wb.engine.planning.planner import Settings

    arch, inventory = presets.from_model(model)
    contexts = [prompt_length + step for step in range(1, new_tokens)]  # positions each step attends to
    reads = [
        throughput.decode_read(arch, inventory, method, Settings(context=c, batch=batch, dtype=dtype)) for c in contexts
    ]
    terms: dict[str, float] = {}
    for read in reads:
        for key, value in read.terms(batch).items():
            terms[key] = terms.get(key, 0) + value / len(reads)
    return {"bytes_per_step": sum(terms.values()), "terms": terms}


def first_difference(tokens: list[int], reference: list[int]) -> int | None:
    """The first position where two generations differ; None when they agree throughout."""
    for position, (token, expected) in enumerate(zip(tokens, reference)):
        if token != expected:
            return position
    return None


def run(params: dict[str, Any], task, loaded, quantized: dict[str, Any]) -> dict[str, Any]:
    """Baseline plus every model in `quantized` (name -> engine.quant.quantize.QuantizedModel), decoded greedily.

    Returns {"settings", "source", "prompt", "copy_bandwidth", "rows": [...]}, one row per model
    (the baseline, or a re-opened export, first) with tokens/s, bytes per step as planned,
    achieved bandwidth, its bound and the generated tokens.
    """
    from int8wb.engine.model.limits import check_decode

    settings = DecodeSettings.from_params(params)
    copy_bytes = settings.copy_mib * MIB
    check_decode(loaded.model, loaded.device, settings.batch, settings.prompt_tokens, settings.new_tokens, copy_bytes)
    ids, source = prompt_ids(settings, loaded.tokenizer, task)
    limit = getattr(loaded.model.config, "max_position_embeddings", None)
    if limit and ids.shape[1] + settings.new_tokens > limit:
        raise BadInput(
            f"prompt + new tokens ({ids.shape[1] + settings.new_tokens}) exceed the model's {limit} positions"
        )
    reopened = getattr(loaded, "quantized", None)
    first = (
        (f"{reopened.method} (exported)", loaded.model, reopened.method)
        if reopened
        else (BASELINE, loaded.model, BASELINE)
    )
    models = [first] + [(name, q.model, q.method) for name, q in quantized.items()]
    runs, copies = timed_runs(models, ids, settings, loaded.device, task)
    bandwidth = statistics.median(copies)
    rows = []
    for name, model, method in models:
        planned = planned_read(model, method, loaded.dtype, settings.batch, ids.shape[1], settings.new_tokens)
        row = summarize(name, runs[name], planned, settings.batch, bandwidth)
        row["text"] = loaded.tokenizer.decode(row["tokens"][:SHOWN_TOKENS])
        row["diverges_at"] = first_difference(row["tokens"], runs[first[0]][0].tokens)
        rows.append(row)
    return {
        "settings": {
            **{key: getattr(settings, key) for key in ("new_tokens", "repeats", "batch", "copy_mib")},
            "prompt_tokens": int(ids.shape[1]),
            "shown_tokens": SHOWN_TOKENS,
            "device": loaded.device,
            "dtype": loaded.dtype,
        },
        "source": source,
        "prompt": loaded.tokenizer.decode(ids[0].tolist()),
        "copy_bandwidth": {"bytes_per_s": bandwidth, "runs": copies, "bytes": settings.copy_mib * MIB},
        "rows": rows,
    }


def timed_runs(
    models, ids, settings: DecodeSettings, device: str, task
) -> tuple[dict[str, list[Generation]], list[float]]:
    """Every model's greedy runs, taking turns, with a copy's bandwidth measured before each round.

    The copy runs where the model's embedding is: for a model spread over GPUs (whose cards work
    one after another) that first card's bandwidth is the bound.
    """
    runs: dict[str, list[Generation]] = {name: [] for name, _, _ in models}
    copies, share = [], 1 / (settings.repeats * len(models))
    first_device = str(next(models[0][1].parameters()).device)
    for repeat in range(settings.repeats):
        copies.append(copy_bandwidth(first_device, settings.copy_mib * MIB))
        for i, (name, model, _) in enumerate(models):
            step = task.slice((repeat * len(models) + i) * share, (repeat * len(models) + i + 1) * share)
            step.log(f"decoding {settings.new_tokens} tokens with {name} (run {repeat + 1} of {settings.repeats})")
            runs[name].append(greedy(model, ids, settings.new_tokens, device, step))
    return runs, copies


def summarize(
    name: str, generations: list[Generation], planned: dict[str, Any], batch: int, bandwidth: float
) -> dict[str, Any]:
    """One model's medians over its runs, its planned bytes, the bandwidth they imply and its bound."""
    steps = len(generations[0].tokens) - 1
    steps_per_s = statistics.median(steps / g.decode_seconds for g in generations)
    bytes_per_step = planned["bytes_per_step"]
    bound_steps_per_s = bandwidth / bytes_per_step
    return {
        "method": name,
        "tokens_per_s": batch * steps_per_s,
        "tokens_per_s_runs": [batch * steps / g.decode_seconds for g in generations],
        "prefill_seconds": statistics.median(g.prefill_seconds for g in generations),
        "bytes_per_step": bytes_per_step,
        "bytes_per_token": bytes_per_step / batch,
        "read_terms": planned["terms"],
        "achieved_bytes_per_s": bytes_per_step * steps_per_s,
        "bound_tokens_per_s": batch * bound_steps_per_s,
        "fraction_of_bound": steps_per_s / bound_steps_per_s,
        "tokens": generations[0].tokens,
        "deterministic": all(g.tokens == generations[0].tokens for g in generations),
    }
