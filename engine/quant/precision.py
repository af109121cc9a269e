"""Precision alarms: where a model's activations leave FP16's range or bfloat16's integer precision.

LLM.int8() keeps its outlier columns in FP16, and GPUs compute in FP16 or bfloat16. Residual streams
with massive activations can pass FP16's largest value (65,504: the value is then infinite), and
bfloat16 keeps only 8 significant bits, so large values are rounded to coarse steps: near 22,500 its
neighbouring values are 128 apart. An alarm is raised for any recorded activation (the residual stream,
a Linear's input, a Linear's output) that

- exceeds `FP16_MAX` (or is not finite): "fp16_overflow",
- lies where bfloat16's rounding step exceeds `BF16_MAX_STEP` (|x| >= 8,192): "bf16_precision".

The scan raises them from everything it recorded (engine.quant.scan); loading a model on a GPU raises them
from a short probe (`probe`, `PROBE_TOKENS` tokens of the default calibration text) and picks the compute
type by them (`choose_compute_dtype`): FP16 only where nothing overflows it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

FP16_MAX = 65504.0
BF16_MAX_STEP = 32.0  # largest tolerated distance between neighbouring bfloat16 values at an activation
BF16_SIGNIFICANT_BITS = 8
PROBE_TOKENS = 256
WHERE_LABELS = {"residual": "the residual stream", "input": "the input of", "output": "the output of"}


@dataclass(frozen=True)
class Reading:
    """The largest |x| recorded at one place: the residual stream entering a layer, or a Linear's input or output."""

    where: str  # a key of WHERE_LABELS
    layer: int
    name: str  # the Linear's module path ("" for the residual stream)
    value: float


def bf16_step(value: float) -> float:
    """The distance between neighbouring bfloat16 values around |value| (its rounding step there)."""
    if not math.isfinite(value) or value <= 0:
        return math.inf if value > 0 else 0.0
    return 2.0 ** (math.floor(math.log2(value)) - (BF16_SIGNIFICANT_BITS - 1))


def precision_alarms(readings: list[Reading]) -> list[dict[str, Any]]:
    """One alarm per problem and kind of place: its largest reading, the first layer over, and a sentence."""
    alarms = []
    for problem, over in (("fp16_overflow", _overflows_fp16), ("bf16_precision", _coarse_in_bf16)):
        for where in WHERE_LABELS:
            hits = [r for r in readings if r.where == where and over(r.value)]
            if not hits:
                continue
            peak = max(hits, key=lambda r: r.value)
            alarms.append(
                {
                    "problem": problem,
                    "where": where,
                    "layer": peak.layer,
                    "name": peak.name,
                    "value": peak.value,
                    "first_layer": min(r.layer for r in hits),
                    "places": len(hits),
                    "message": _sentence(problem, peak, min(r.layer for r in hits), len(hits)),
                }
            )
    return alarms


def _overflows_fp16(value: float) -> bool:
    return not math.isfinite(value) or value > FP16_MAX


def _coarse_in_bf16(value: float) -> bool:
    return bf16_step(value) > BF16_MAX_STEP


def _sentence(problem: str, peak: Reading, first_layer: int, places: int) -> str:
    place = WHERE_LABELS[peak.where] + (f" {peak.name}" if peak.name else "")
    value = f"{peak.value:,.0f}" if math.isfinite(peak.value) else "infinity"
    layer = f" in layer {peak.layer}" if not peak.name else ""
    more = f" ({places} places, from layer {first_layer})" if places > 1 else ""
    if problem == "fp16_overflow":
        return f"{place} reaches {value}{layer}{more}: FP16 overflows there (its largest value is {FP16_MAX:,.0f})"
    return (
        f"{place} reaches {value}{layer}{more}: bfloat16 rounds it to steps of {bf16_step(peak.value):,.0f} "
        f"(over the bound of {BF16_MAX_STEP:g})"
    )


def fp16_overflows(alarms: list[dict[str, Any]]) -> bool:
    return any(alarm["problem"] == "fp16_overflow" for alarm in alarms)


def choose_compute_dtype(
    alarms: list[dict[str, Any]], dtype: str, requested: bool, bf16_native: bool
) -> tuple[str, str]:
    """(the compute type, the sentence that says why) on a GPU, given the probe's alarms.

    A type the user asked for is kept, with the warning. The automatic choice (engine.model.loaded.pick_dtype)
    is bfloat16 where the GPU has it natively, else FP16; FP16 gives way where it overflows: to bfloat16
    where native, else to float32.
    """
    if dtype != "float16" or not fp16_overflows(alarms):
        return dtype, f"computing in {dtype}"
    if requested:
        return dtype, "computing in float16 as asked: expect infinities and NaNs"
    chosen = "bfloat16" if bf16_native else "float32"
    return chosen, f"computing in {chosen} instead of float16"


def probe(model, tokenizer, tokens: int = PROBE_TOKENS) -> list[Reading]:
    """The largest |x| of the residual stream per layer and of every Linear's input and output, on one
    sequence of `tokens` tokens of the default calibration text, with the model where it is."""
    import torch

    from int8wb.engine.model import corpus
    from int8wb.engine.model.layers import decoder_layers, layer_number, linear_layers

    tokens = min(tokens, getattr(model.config, "max_position_embeddings", None) or tokens)
    ids = corpus.tokenize(tokenizer, corpus.load_split(None).calibration, tokens)[:tokens]
    device = next(model.parameters()).device
    readings: list[Reading] = []

    def largest(x) -> float:
        return float(x.detach().abs().max())

    def on_block(index):
        return lambda module, args, kwargs: readings.append(
            Reading("residual", index, "", largest(args[0] if args else kwargs["hidden_states"]))
        )

    def on_linear(name):
        layer = int(layer_number(name, stack_path) or -1)
        return lambda module, args, output: readings.extend(
            (Reading("input", layer, name, largest(args[0])), Reading("output", layer, name, largest(output)))
        )

    stack_path, blocks = decoder_layers(model)
    handles = [block.register_forward_pre_hook(on_block(i), with_kwargs=True) for i, block in enumerate(blocks)]
    leaving = lambda module, args, output: readings.append(  # noqa: E731 - the last layer's output, before the norm
        Reading("residual", len(blocks), "", largest(output[0] if isinstance(output, tuple) else output))
    )
    handles.append(blocks[-1].register_forward_hook(leaving))
    handles += [module.register_forward_hook(on_linear(name)) for name, module in linear_layers(model)]
    try:
        with torch.no_grad():
            model(input_ids=ids.reshape(1, -1).to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return readings


def check_at_load(model, tokenizer, device: str, dtype: str, requested: str | None) -> tuple[str, list[str]]:
    """The probe's alarms as load-summary notes; on a GPU, FP16 given up where it overflows (`choose_compute_dtype`,
    the model cast in place). Returns (the model's dtype now, the notes)."""
    import torch

    from int8wb.engine.model.loaded import cuda_indices
    from int8wb.engine.vocabulary import BF16_MIN_CAPABILITY

    alarms = precision_alarms(probe(model, tokenizer))
    notes = [f"precision: {alarm['message']}" for alarm in alarms]
    if device.startswith("cuda") and alarms:
        native = min(torch.cuda.get_device_capability(i) for i in cuda_indices(device)) >= BF16_MIN_CAPABILITY
        chosen, why = choose_compute_dtype(alarms, dtype, requested not in (None, "auto"), native)
        if chosen != dtype:
            model.to(getattr(torch, chosen))
        notes.append(f"precision: {why}")
        dtype = chosen
    return dtype, notes
