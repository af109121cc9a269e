"""The super weight: one scalar of an MLP's down projection that the whole model depends on.

Yu et al. 2024 ("The Super Weight in Large Language Models") found that a single weight of an early
down projection writes the massive activation (Sun et al. 2024) that later layers use as a fixed bias
and an attention sink: zeroing it destroys the model, while zeroing other large weights of the same
Linear does not. The finder follows their recipe with no hints about where to look:

1. run one sequence of calibration text from its start (the massive activations sit on the first
   token) and hook every down projection (`down_proj`, `fc2`, `mlp.c_proj`, `dense_4h_to_h`, `w2` and
   the experts' own: engine.model.layers' KIND_MLP_DOWN and KIND_EXPERT_DOWN);
2. in each, take the largest |input| (token t, input dimension i) and, at that token, the largest
   |output| (output dimension j): the candidate is the weight W[j, i] at their crossing;
3. rank the candidates by what that one weight writes at the spike, |x[t, i] * W[j, i]|, and keep the
   first few.

The experiment then decides: each candidate is zeroed alone and perplexity measured on the evaluation
tokens (engine.measure.evaluate), against a control that zeroes as many of the largest other weights of
the same Linear. A candidate is a super weight only when zeroing it raises perplexity materially
(`MATERIAL_INCREASE`) and by more than its control does; where none does, the result says
"no super weight found" rather than naming the largest candidate anyway.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from int8wb.engine.errors import BadInput, check_counts
from int8wb.engine.model.layers import (
    decoder_layers,
    is_conv1d,
    layer_number,
    linear_kind,
    linear_layers,
    weight_matrix,
)
from int8wb.engine.vocabulary import KIND_EXPERT_DOWN, KIND_MLP_DOWN

MATERIAL_INCREASE = 0.10
CRITERION = (
    f"a candidate is a super weight when zeroing it alone raises perplexity by at least "
    f"{MATERIAL_INCREASE:.0%} and by more than zeroing as many of the largest other weights of its Linear does"
)
NONE_FOUND = "no super weight found"


@dataclass(frozen=True)
class SuperWeightSettings:
    find_tokens: int = 256  # calibration tokens of the one sequence the spikes are read from
    candidates: int = 3  # how many of the largest crossings the experiment tries
    tokens: int = 2048  # evaluation tokens of each perplexity (1 + 2 x candidates of them are measured)
    window: int = 512  # tokens per evaluation window
    batch_size: int = 4  # windows per forward call
    corpus: str | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SuperWeightSettings:
        settings = cls(**{k: params[k] for k in cls.__dataclass_fields__ if params.get(k) is not None})
        check_counts(settings, ("find_tokens", "candidates", "tokens", "window", "batch_size"))
        return settings


@dataclass
class Candidate:
    """The crossing of one down projection's largest input spike and the largest output it makes there."""

    module: str  # the Linear's full name
    layer: str | None  # its decoder layer
    row: int  # output dimension j (the weight's row)
    col: int  # input dimension i (the weight's column)
    weight: float  # W[j, i]
    token: int  # position of the input spike in the sequence
    input_spike: float  # x[t, i]
    input_ratio: float  # |x[t, i]| over the median |x| of that Linear's input
    output_spike: float  # y[t, j]
    contribution: float  # |x[t, i] * W[j, i]|: what this one weight writes at the spike


def down_projections(model) -> list[tuple[str, Any]]:
    """(name, module) of every MLP down projection, the experts' included: where super weights live."""
    return [(n, m) for n, m in linear_layers(model) if linear_kind(n) in (KIND_MLP_DOWN, KIND_EXPERT_DOWN)]


def find_candidates(model, input_ids, count: int) -> list[Candidate]:
    """The `count` crossings that write the most at their spike, largest first, from one forward of `input_ids`
    (1, T). A down projection no token reached (an expert never routed to) has no candidate."""
    import torch

    path, _ = decoder_layers(model)
    found: list[Candidate] = []
    handles = []

    def hook_for(name: str):
        def record(module, inputs, output) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float().abs()  # (T, in)
            if x.numel() == 0:
                return
            y = output.detach().reshape(-1, output.shape[-1]).float()  # (T, out)
            token, col = divmod(int(torch.argmax(x)), x.shape[1])
            row = int(torch.argmax(y[token].abs()))
            weight = float(weight_matrix(module)[row, col])
            spike = float(inputs[0].reshape(-1, x.shape[1])[token, col])
            median = float(x.median())
            found.append(
                Candidate(
                    module=name,
                    layer=layer_number(name, path),
                    row=row,
                    col=col,
                    weight=weight,
                    token=token,
                    input_spike=spike,
                    input_ratio=abs(spike) / median if median > 0 else math.inf,
                    output_spike=float(y[token, row]),
                    contribution=abs(spike * weight),
                )
            )

        return record

    try:
        for name, module in down_projections(model):
            handles.append(module.register_forward_hook(hook_for(name)))
        if not handles:
            raise BadInput(
                f"{type(model).__name__} has no MLP down projection (down_proj, fc2, c_proj, dense_4h_to_h, w2): "
                "the super weight finder looks there"
            )
        device = next(model.parameters()).device
        with torch.no_grad():
            model(input_ids=input_ids.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return sorted(found, key=lambda c: c.contribution, reverse=True)[:count]


def _entry(module, row: int, col: int) -> tuple[int, int]:
    """Where W[row, col] of the (out, in) weight is in the stored tensor (a Conv1D stores (in, out))."""
    return (col, row) if is_conv1d(module) else (row, col)


@contextmanager
def zeroed(model, entries: list[tuple[str, int, int]]):
    """The model with the weights `entries` ((Linear name, row, col) of its (out, in) weight) set to zero,
    each put back as it was afterwards, whatever happens inside."""
    import torch

    saved = []
    try:
        with torch.no_grad():
            for name, row, col in entries:
                module = model.get_submodule(name)
                where = _entry(module, row, col)
                saved.append((module, where, module.weight[where].clone()))
                module.weight[where] = 0
        yield model
    finally:
        with torch.no_grad():
            for module, where, value in reversed(saved):
                module.weight[where] = value


def largest_other_weights(module, row: int, col: int, count: int) -> list[tuple[int, int]]:
    """(row, col) of the `count` largest |weights| of `module` other than W[row, col]: the control."""
    import torch

    magnitudes = weight_matrix(module).detach().abs().float().clone()  # (out, in)
    magnitudes[row, col] = -1.0
    flat = torch.topk(magnitudes.reshape(-1), count).indices
    return [divmod(int(i), magnitudes.shape[1]) for i in flat]


def run(params: dict[str, Any], task, loaded) -> dict[str, Any]:
    """Find the candidates on `loaded`'s model and run the zeroing experiment on each (module docstring).

    Returns {"criterion", "baseline", "tokens", "corpus", "candidates": [Candidate fields + "zeroed",
    "control", "control_weights", "super_weight"], "super_weights": [{"module", "row", "col", "weight"}],
    "verdict"}.
    """
    from int8wb.engine.measure.evaluate import EvalSettings, evaluation_windows, perplexity
    from int8wb.engine.model import corpus
    from int8wb.engine.model.limits import check_sequence_length

    settings = SuperWeightSettings.from_params(params)
    model = loaded.model
    check_sequence_length(model, max(settings.find_tokens, settings.window), "a super weight sequence")
    split = corpus.load_split(settings.corpus)
    ids = corpus.tokenize(loaded.tokenizer, split.calibration, settings.find_tokens)
    task.log(f"finding super weight candidates on {len(ids)} calibration tokens")
    candidates = find_candidates(model, ids.reshape(1, -1), settings.candidates)
    evaluation = EvalSettings(settings.tokens, settings.window, settings.batch_size, settings.corpus)
    windows, source = evaluation_windows(evaluation, loaded.tokenizer)
    steps = 1 + 2 * len(candidates)

    def measure(step: int, what: str) -> float:
        task.log(f"perplexity {what}")
        return perplexity(model, windows, settings.batch_size, task.slice(step / steps, (step + 1) / steps))[
            "perplexity"
        ]

    baseline = measure(0, "of the model as it is")
    rows = []
    for i, candidate in enumerate(candidates):
        name = candidate.module
        with zeroed(model, [(name, candidate.row, candidate.col)]):
            zeroed_ppl = measure(1 + 2 * i, f"with {name}[{candidate.row}, {candidate.col}] zeroed")
        control = largest_other_weights(model.get_submodule(name), candidate.row, candidate.col, 1)
        with zeroed(model, [(name, r, c) for r, c in control]):
            control_ppl = measure(2 + 2 * i, f"with the largest other weight of {name} zeroed")
        rows.append(
            {
                **asdict(candidate),
                "zeroed": zeroed_ppl,
                "control": control_ppl,
                "control_weights": [list(rc) for rc in control],
                "super_weight": is_super_weight(baseline, zeroed_ppl, control_ppl),
            }
        )
    found = [
        {"module": r["module"], "row": r["row"], "col": r["col"], "weight": r["weight"]}
        for r in rows
        if r["super_weight"]
    ]
    return {
        "criterion": CRITERION,
        "baseline": baseline,
        "tokens": int(windows.numel()),
        "find_tokens": int(len(ids)),
        "corpus": source,
        "candidates": rows,
        "super_weights": found,
        "verdict": verdict(found),
    }


def is_super_weight(baseline: float, zeroed_ppl: float, control_ppl: float) -> bool:
    """CRITERION, on the three perplexities (an infinite perplexity after zeroing counts as destroyed)."""
    return zeroed_ppl >= baseline * (1 + MATERIAL_INCREASE) and zeroed_ppl > control_ppl


def verdict(found: list[dict[str, Any]]) -> str:
    """The experiment's finding in one line."""
    if not found:
        return NONE_FOUND
    names = ", ".join(f"{f['module']}.weight[{f['row']}, {f['col']}] ({f['weight']:.4g})" for f in found)
    return f"super weight{'s' if len(found) > 1 else ''}: {names}"
