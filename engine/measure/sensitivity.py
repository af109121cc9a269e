"""Which Linears to keep in floating point: a sensitivity sweep and the smallest skip list that meets a target.

1. Quantize the whole model with method M once, and measure the perplexity of the baseline and of M
   on a small evaluation budget (the sweep tokens).
2. For each group (`groups_of`: each Linear, the Linears that read one input, or a decoder layer's
   Linears), measure the damage it does alone: the floating-point model with only that group
   quantized (the quantized model shares every other tensor, so swapping Linears costs nothing),
   one evaluation per group, which gives its perplexity and how far its next-token distributions
   are from the baseline's (KL divergence, mean per token). Alone, the groups' divergences add up
   to about the whole model's (0.0301 against 0.0284 for `vectorwise` on the default model, decoder
   layers as groups) and rank the same on other text (Spearman's rho 0.92 between two texts of
   2,048 tokens, `bench/sensitivity_signals.py`). The opposite measurement, the quantized model
   with one group put back in floating point, ranks by noise (rho 0.17): each group's share is
   smaller than what the others' errors do to it (on one of the texts, 14 of the default model's 30
   layers raise the divergence when put back alone; on the other, none does).
3. Rank the groups by divergence per floating-point megabyte, and add them in that order,
   re-measuring the list as a whole (groups interact) each time the groups added since the last
   measurement did at least 1/`STEPS` of the whole model's divergence alone (`walk_steps`: a
   decoder layer of the default model is about one step, Linears come a few at a time), until the
   list is within `target` percent of the baseline with 95% confidence (`change_bounds`), so that it
   holds on text the sweep did not measure. The curve "float MB kept -> perplexity" is every
   measured step of it.

   The change a list is expected to make is the one its divergence gives, exp(KL) - 1: for a model
   whose next-token distributions fit the text, the mean change of the log-likelihood of the
   text's tokens is the mean KL divergence. The perplexity measured on a couple of thousand tokens
   moves by more than most groups' share of the damage: on the default model, one Linear added
   (layer 0's down_proj) took the list's measured change from +1.40% to +0.20% while its
   divergence gave +1.42% and +1.36%, and that list was +1.84% on held-out text. On the whole
   model the divergence gives +2.88%, the sweep tokens +2.57% and the held-out tokens +2.95%. So
   the walk does not stop at a lucky dip of the measured perplexity: its bound is the divergence's
   change plus what the perplexity of as many other tokens spreads by.
4. Measure the chosen list on held-out evaluation tokens the sweep never saw.

Every measurement starts at its first decoder layer with a quantized Linear (a group's own) or one
kept in floating point (a list's): the layers before replay their output, recorded once from the
floating-point model or from the fully quantized one (engine.model.replay), so a measurement costs
about the evaluation of the layers from there onwards and of the head.

The baseline's log-probabilities on the sweep tokens are kept in float16 for the whole sweep:
tokens x vocabulary x 2 bytes (200 MB for 2,048 tokens of a 49k vocabulary), and each decoder
layer's output of both recorded passes (2 x 141 MB for the default model). A divergence is computed
a few positions at a time, in cache: done on whole batches, its float32 temporaries cost a quarter
of the sweep on the default model.

The list resolves to full Linear names that transformers + bitsandbytes and compressed-tensors accept
(engine.quant.skip_list), and `int8wb export --skip-modules` writes it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from int8wb.engine.errors import BadInput, check_counts
from int8wb.engine.measure import evaluate
from int8wb.engine.model.layers import decoder_layers, layer_number, linear_layers, shared_input_sets
from int8wb.engine.model.replay import LayerOutputs
from int8wb.engine.quant import quantize, skip_list
from int8wb.engine.vocabulary import DEFAULT_THRESHOLD, check_threshold

GROUPS = ("input", "linear", "layer")
STEPS = 32  # the walk measures the list each time it has added 1/STEPS of the whole model's divergence alone
BLOCKS = 32  # runs of consecutive tokens whose means give the standard error of a perplexity change
Z = 1.645  # one-sided 95%: the normal quantile of the upper confidence bound
CONFIDENCE = 0.95


@dataclass(frozen=True)
class SweepSettings:
    method: str
    target: float = 1.0  # allowed perplexity change against the baseline, in percent
    group: str = "input"  # the Linears that read one input; "linear": each alone; "layer": a decoder layer's
    tokens: int = 2048  # evaluation tokens the sweep measures on
    holdout_tokens: int = 2048  # further evaluation tokens, never used by the sweep, that check the list
    window: int = 512
    batch_size: int = 4
    threshold: float = DEFAULT_THRESHOLD
    corpus: str | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SweepSettings:
        settings = cls(**{k: params[k] for k in cls.__dataclass_fields__ if params.get(k) is not None})
        quantize.check_methods([settings.method])
        check_threshold(settings.threshold)
        if settings.group not in GROUPS:
            raise BadInput(f"group must be one of {', '.join(GROUPS)}, got {settings.group!r}")
        target = settings.target
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target):
            raise BadInput(f"target must be a finite percentage, got {target!r}")
        if settings.target < 0:
            raise BadInput(
                f"a target of {settings.target:+g}% is below what keeping everything in floating point reaches "
                "(+0%: the baseline itself); choose a target of 0 or more"
            )
        check_counts(settings, ("tokens", "holdout_tokens", "window", "batch_size"))
        for name in ("tokens", "holdout_tokens"):
            if getattr(settings, name) < settings.window:
                raise BadInput(f"{name} ({getattr(settings, name)}) must hold at least one window of {settings.window}")
        return settings


def groups_of(model, group: str) -> dict[str, list[str]]:
    """Group name -> the full names of its Linears, in model order.

    "input" groups the Linears of one decoder layer that read one input (q/k/v; gate/up;
    engine.model.layers.shared_input_sets), the modules serving engines fuse: vLLM loads a skip list
    only if it keeps all of a fused module's Linears in floating point or none. Such a group's name
    joins theirs: `model.layers.3.self_attn.q_proj+k_proj+v_proj`.
    """
    if group == "linear":
        return {name: [name] for name, _ in linear_layers(model)}
    if group == "input":
        return {_joined_name(members): members for members in shared_input_sets(model)}
    path, _ = decoder_layers(model)
    grouped: dict[str, list[str]] = {}
    for name, _ in linear_layers(model):
        layer = layer_number(name, path)
        grouped.setdefault(name if layer is None else f"{path}.{layer}", []).append(name)
    return grouped


def _joined_name(members: list[str]) -> str:
    """`model.layers.3.self_attn.q_proj+k_proj+v_proj`: the members' common module, then their own names."""
    parents = {member.rsplit(".", 1)[0] for member in members}
    if len(parents) > 1:
        return "+".join(members)
    return f"{parents.pop()}.{'+'.join(member.rsplit('.', 1)[1] for member in members)}"


@contextmanager
def kept_in_float(quantized_model, float_model, names: list[str]) -> Iterator[None]:
    """Within the block, the quantized model runs the given Linears in floating point."""
    originals = {name: quantized_model.get_submodule(name) for name in names}
    try:
        for name in names:
            quantize.replace_module(quantized_model, name, float_model.get_submodule(name))
        yield
    finally:
        for name, module in originals.items():
            quantize.replace_module(quantized_model, name, module)


@contextmanager
def quantized_alone(quantized_model, float_model, names: list[str], groups: dict[str, list[str]]) -> Iterator[None]:
    """Within the block, the quantized model runs every Linear of `groups` in floating point but `names`."""
    alone = set(names)
    with kept_in_float(quantized_model, float_model, [n for g in groups.values() for n in g if n not in alone]):
        yield


def run(params: dict[str, Any], task, loaded, scan=None) -> dict[str, Any]:
    """The sweep (see the module docstring); `scan` is needed for static `llm-int8`."""
    settings = SweepSettings.from_params(params)
    windows, source = evaluate.evaluation_windows(
        evaluate.EvalSettings(
            tokens=settings.tokens + settings.holdout_tokens, window=settings.window, corpus=settings.corpus
        ),
        loaded.tokenizer,
        task,
    )
    n_sweep = settings.tokens // settings.window
    sweep, holdout = windows[:n_sweep], windows[n_sweep:]
    if len(holdout) == 0:
        raise BadInput(f"the evaluation text holds only {windows.numel():,} tokens: too few for a held-out check")
    quantized = quantize.run(
        {"method": settings.method, "threshold": settings.threshold}, task.slice(0.0, 0.05), loaded, scan
    )
    model, base = quantized.model, loaded.model
    groups = groups_of(base, settings.group)

    batches = sweep.split(settings.batch_size)
    float_outputs, recorded = LayerOutputs(model), LayerOutputs(model)
    with float_outputs.recording(of=base):
        reference = _reference(base, batches, task.slice(0.05, 0.08))
    with recorded.recording():
        everything = _against(model, batches, reference, task.slice(0.08, 0.1))

    def measure(names: list[str], step) -> Measurement:
        """The quantized model with `names` in floating point; the layers before the first of them replay."""
        first = min(recorded.layer_of(name) for name in names)
        with kept_in_float(model, base, names), recorded.replaying(first):
            return _against(model, batches, reference, step)

    def measure_alone(names: list[str], step) -> Measurement:
        """The floating-point model with only `names` quantized; the layers before the first of them replay."""
        first = min(recorded.layer_of(name) for name in names)
        with quantized_alone(model, base, names, groups), float_outputs.replaying(first):
            return _against(model, batches, reference, step)

    measured = []
    for i, (group, names) in enumerate(groups.items()):
        point = measure_alone(names, task.slice(0.1 + 0.6 * i / len(groups), 0.1 + 0.6 * (i + 1) / len(groups)))
        measured.append(
            {
                "group": group,
                "modules": names,
                "float_bytes": _float_bytes(base, names),
                "perplexity": point.perplexity,
                "kl_divergence": point.kl_divergence,
            }
        )
    ranking = rank_groups(measured)
    chosen: list[str] = []
    curve = [{"float_bytes": 0, "added": [], **everything.against(reference)}]
    taken = 0  # groups of the ranking in the list
    for step in walk_steps(ranking, everything.kl_divergence / STEPS):
        if curve[-1]["upper_pct"] <= settings.target:
            break
        task.check_cancelled()
        chosen += [name for entry in step for name in entry["modules"]]
        done, taken = taken / len(ranking), taken + len(step)
        point = measure(chosen, task.slice(0.7 + 0.25 * done, 0.7 + 0.25 * taken / len(ranking)))
        added = [entry["group"] for entry in step]
        curve.append({"float_bytes": _float_bytes(base, chosen), "added": added, **point.against(reference)})
    reference.log_probabilities, recorded, float_outputs = None, None, None  # the sweep's large buffers

    def ppl(target, step) -> float:
        return evaluate.perplexity(target, holdout, settings.batch_size, step)["perplexity"]

    checked = {"baseline": ppl(base, task.slice(0.95, 0.97)), "quantized": ppl(model, task.slice(0.97, 0.98))}
    with kept_in_float(model, base, chosen):
        checked["with_skip_list"] = ppl(model, task.slice(0.98, 1.0))
    return {
        "method": settings.method,
        "group": settings.group,
        "target_pct": settings.target,
        "confidence": CONFIDENCE,
        "corpus": source,
        "sweep_tokens": int(sweep.numel()),
        "holdout_tokens": int(holdout.numel()),
        "baseline": reference.perplexity,
        "quantized": everything.perplexity,
        "kl_divergence": everything.kl_divergence,
        "groups": measured,
        "ranking": [entry["group"] for entry in ranking],
        "curve": curve,
        "reached": curve[-1]["upper_pct"] <= settings.target,
        "best_reachable_pct": min(p["upper_pct"] for p in curve),
        "skip_modules": chosen,
        "float_bytes": _float_bytes(base, chosen),
        "holdout": {**checked, "change_pct": 100 * (checked["with_skip_list"] / checked["baseline"] - 1)},
        "forms": skip_list.tool_forms(chosen),
        "notes": skip_list.vllm_notes(base, chosen),
    }


def walk_steps(ranking: list[dict], divergence_per_step: float) -> Iterator[list[dict]]:
    """The ranking cut into the walk's steps: consecutive groups whose divergences alone add up to at least
    `divergence_per_step` (a group that does as much alone is a step of its own; the last step takes the rest)."""
    step: list[dict] = []
    divergence = 0.0
    for entry in ranking:
        step.append(entry)
        divergence += entry["kl_divergence"]
        if divergence >= divergence_per_step:
            yield step
            step, divergence = [], 0.0
    if step:
        yield step


def rank_groups(measured: list[dict]) -> list[dict]:
    """Every group, by the divergence it causes alone per floating-point byte it would keep, worst first."""
    return sorted(measured, key=lambda m: m["kl_divergence"] / max(m["float_bytes"], 1), reverse=True)


@dataclass
class Measurement:
    """One pass over the sweep tokens: at each predicting position (every window's next tokens, in order),
    the negative log-likelihood of the text's token and the KL divergence from the baseline's distribution."""

    nll: Any  # (positions,) float64
    divergences: Any  # (positions,) float64; zeros for the baseline itself
    log_probabilities: list | None = None  # the baseline's own, per batch (float16), kept for the comparisons

    @property
    def perplexity(self) -> float:
        return evaluate.perplexity_numbers(float(self.nll.sum()), self.nll.numel(), 0.0)["perplexity"]

    @property
    def kl_divergence(self) -> float:
        """Mean per position."""
        return float(self.divergences.mean())

    def against(self, baseline: Measurement) -> dict[str, float]:
        """The perplexity; its change against the baseline on the same tokens, in percent; the change the
        divergence gives and its one-sided upper confidence bound (`change_bounds`); and the divergence."""
        difference = self.nll - baseline.nll
        expected, upper = change_bounds(self.divergences, difference)
        return {
            "perplexity": self.perplexity,
            "change_pct": 100 * math.expm1(float(difference.mean())),
            "expected_pct": expected,
            "upper_pct": upper,
            "kl_divergence": self.kl_divergence,
        }


def change_bounds(divergences, difference) -> tuple[float, float]:
    """The perplexity change (percent) that per-position divergences give, and its upper confidence bound.

    Perplexity is exp(mean NLL), so a mean log-likelihood change m changes it by exp(m) - 1; for text
    the model fits, m's expectation is the mean divergence. The bound adds what m spreads by from one
    text to another of as many tokens: the per-token NLL differences are cut into `BLOCKS` runs of
    consecutive tokens (neighbouring tokens are not independent; runs of a few dozen nearly are), and
    the bound is the mean divergence plus `Z` standard errors of the run means. Another text's change
    falls under it with probability `CONFIDENCE`.
    """
    mean = float(divergences.mean())
    runs = difference.tensor_split(min(BLOCKS, difference.numel()))
    means = [float(run.mean()) for run in runs if run.numel()]
    spread = float(np.std(means, ddof=1)) / math.sqrt(len(means)) if len(means) > 1 else 0.0
    return 100 * math.expm1(mean), 100 * math.expm1(mean + Z * spread)


def _reference(model, batches, task) -> Measurement:
    """The float model on `batches`, with its log-probabilities at every position kept in float16."""
    nll, kept = [], []
    for batch, logprobs in _log_probabilities(model, batches, task):
        nll.append(_nll(logprobs, batch))
        kept.append(logprobs.half())
    nll = _cat(nll)
    return Measurement(nll, nll.new_zeros(nll.shape), kept)


def _against(model, batches, reference: Measurement, task) -> Measurement:
    """`model` on `batches`: its NLL and its KL divergence from the reference at each predicting position."""
    nll, divergences = [], []
    for (batch, logprobs), expected in zip(_log_probabilities(model, batches, task), reference.log_probabilities):
        nll.append(_nll(logprobs, batch))
        divergences.append(_divergence(expected, logprobs).view(batch.shape)[:, :-1].flatten())
    return Measurement(_cat(nll), _cat(divergences))


def _divergence(expected, logprobs, rows: int = 32):
    """KL(p || q) = sum_v p_v (log p_v - log q_v) at each position, p = exp(expected) (float16 logs): a flat
    float64 tensor on the CPU.

    `rows` positions at a time (a few MB, in cache): the float32 copy of `expected`, the difference
    and the products are never written out for the whole batch.
    """
    import torch

    vocabulary = expected.shape[-1]
    log_p, log_q = expected.reshape(-1, vocabulary), logprobs.reshape(-1, vocabulary)
    per_position = torch.empty(log_p.shape[0], dtype=torch.float64, device=log_p.device)
    for start in range(0, log_p.shape[0], rows):
        log_p_rows = log_p[start : start + rows].float()
        difference = log_p_rows - log_q[start : start + rows]
        products = torch.bmm(log_p_rows.exp_().unsqueeze(1), difference.unsqueeze(2))
        per_position[start : start + rows] = products.flatten()
    return per_position.cpu()


def _log_probabilities(model, batches, task):
    """Each batch on the model's device, with the model's log-probabilities at each of its positions (float32)."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    with torch.no_grad():
        for i, batch in enumerate(batches):
            task.check_cancelled()
            batch = batch.to(device)
            yield batch, F.log_softmax(model(input_ids=batch, use_cache=False).logits.float(), dim=-1)
            task.progress((i + 1) / len(batches))


def _nll(logprobs, batch):
    """Each window's next-token negative log-likelihoods (the last position predicts nothing), flattened."""
    return -logprobs[:, :-1].gather(-1, batch[:, 1:, None]).flatten().double().cpu()


def _cat(parts):
    import torch

    return torch.cat(parts)


def _float_bytes(model, names: list[str]) -> int:
    """What keeping these Linears in floating point stores: their weights and biases in the model's dtype."""
    total = 0
    for name in names:
        module = model.get_submodule(name)
        for tensor in (module.weight, getattr(module, "bias", None)):
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
    return total
