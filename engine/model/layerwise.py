"""The layer-by-layer loop: one decoder layer on the compute device at a time, every stream through it.

This is llm-compressor's layer-sequential pipeline, with the weights read from disk as each layer
comes (its streaming pipeline) through accelerate's big-model utilities. The inputs of the first
decoder layer are captured by running the model up to it, so the positional embeddings and masks
come along as the layer's keyword arguments whatever the architecture. Then, for each decoder
layer in order: its weights are placed on the compute device, every *stream* runs all its batches
through it, each job's per-layer work runs, and the layer is released. The final norm and the
output head come last, the head applied to a chunk of tokens at a time.

A stream is one set of token batches with its own hidden states: the calibration tokens of a scan,
the evaluation tokens of the baseline, and those of each quantized method (its rounding errors
propagate, so it cannot share the baseline's states). All streams go through the same placed layer,
so each part of the model is read once per run however many methods are compared. The loop owns the
order and the cached hidden states; what a job does lives in its streams (which module a stream runs
at a layer, what it does after the last one) and in its `LayerWork` callbacks.

Weights come from `DiskWeights` (from the safetensors files, one part at a time) or `ResidentWeights`
(a model in memory: the in-memory scan runs this same loop).

Limits of the approach (checked by `check_supported`, refused with a message that says so):
- one chain of decoder layers: the hidden states layer i returns are what layer i+1 takes, and every
  other argument (position embeddings, masks) is the same for all layers, as captured for the first.
  Models that alternate layer types with different masks (config `layer_types` with more than one
  kind, such as Gemma 2's sliding-window layers) do not fit.
- after the last layer come the final norm and the output head and nothing else: models that scale,
  cap or project the logits or the last hidden states (`final_logit_softcapping`, `logit_scale`,
  OPT's `project_out`) do not fit; nor do quantizable Linears outside the decoder layers.
- the cached hidden states of every stream stay on the compute device: streams x tokens x hidden x
  dtype bytes (8 MB per stream for 512 tokens of a 7B model in float32).
- a tied input embedding and output head is read twice, first and last.
- the checkpoint's tensor names must be the model's own (engine.model.disk_weights checks them at
  load): checkpoints that transformers renames or fuses while loading (legacy names, the experts of
  a mixture of experts stored one by one) are refused and load in memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from int8wb.engine.errors import BadInput
from int8wb.engine.model.layers import decoder_layers, linear_layers

FINAL_NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "norm_f")
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass
class Stream:
    """One set of token batches moving through the layers with its own hidden states.

    `enter(index, prefix, block)` returns the module this stream runs at a layer (the float block,
    or a quantized copy of it); `leave(index, module)` follows its last batch there; `abandon(index,
    module)` replaces `leave` when the layer's batches stopped early (a cancel, an error), so that what
    `enter` attached (the scan's hooks) never outlives the job; `finish(hidden, norm, head)` gets the
    last layer's hidden states per batch, with the final norm and head placed.
    """

    name: str
    batches: list  # (B, T) token ids per forward call
    enter: Callable[[int, str, Any], Any]
    leave: Callable[[int, Any], None] = lambda index, module: None
    abandon: Callable[[int, Any], None] = lambda index, module: None
    finish: Callable[[list, Any, Any], None] | None = None
    calls: list[tuple[tuple, dict]] = field(default_factory=list)  # each batch's call of the next layer
    seconds: float = 0.0  # time spent in this stream's forward passes


class LayerWork:
    """What a job does with each part of the model while it is placed; every hook does nothing here."""

    def first(self, model, names: list[str]) -> None:
        """The parts before the first decoder layer (the embeddings) are placed."""

    def layer(self, index: int, prefix: str, block) -> None:
        """Decoder layer `index` is placed and every stream has been through it."""

    def last(self, model, names: list[str]) -> None:
        """The final norm and the head are placed; every stream has finished."""


@dataclass
class ModelParts:
    """The model cut into what the loop places one after another: first, each decoder layer, last."""

    stack_path: str
    blocks: list
    first: list[str]  # state-dict names placed before the first layer
    layers: list[list[str]]  # state-dict names of each decoder layer
    last: list[str]  # the final norm's and the head's
    norm: Any
    head: Any


def model_parts(model) -> ModelParts:
    """Find the decoder stack, the final norm and the head of `model` (see `check_supported`)."""
    stack_path, blocks = decoder_layers(model)
    parent_path = stack_path.rpartition(".")[0]
    parent = model.get_submodule(parent_path) if parent_path else model
    norm_name = next((n for n in FINAL_NORM_NAMES if getattr(parent, n, None) is not None), None)
    head = model.get_output_embeddings()
    head_name = next((name for name, module in model.named_modules() if module is head), None)
    if norm_name is None or head_name is None:
        raise BadInput(
            f"{type(model).__name__} has no final norm or output head where layer-by-layer mode looks for "
            "them: load it in memory (--offload none)"
        )
    norm_path = f"{parent_path}.{norm_name}" if parent_path else norm_name
    keys = list(model.state_dict())
    layers = [[k for k in keys if k.startswith(f"{stack_path}.{i}.")] for i in range(len(blocks))]
    last = [k for k in keys if k.startswith((f"{norm_path}.", f"{head_name}."))]
    inside = {k for names in layers for k in names} | set(last)
    first = [k for k in keys if k not in inside]
    return ModelParts(stack_path, list(blocks), first, layers, last, getattr(parent, norm_name), head)


def check_supported(model) -> ModelParts:
    """The parts of `model`, or a BadInput that says which limit of the loop (module docstring) it breaks."""
    from int8wb.engine.model.experts import is_fused_experts

    config = model.config
    why = None
    if len(set(getattr(config, "layer_types", None) or ())) > 1:
        why = f"its layers alternate between kinds ({', '.join(sorted(set(config.layer_types)))}) with different masks"
    elif any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        why = "it transforms the logits after the head"
    parts = model_parts(model)
    if why is None and any(getattr(parts.norm, n, None) is not None for n in ("project_out",)):
        why = "it projects the last hidden states before the head"
    outside = [name for name, _ in linear_layers(model) if not name.startswith(f"{parts.stack_path}.")]
    if why is None and outside:
        why = f"it has Linears outside its decoder layers ({outside[0]})"
    fused = next(((n, m) for n, m in model.named_modules() if is_fused_experts(m)), None)
    if why is None and fused is not None:
        why = (
            f"not supported: {type(fused[1]).__name__} (experts fused into 3-D tensors, which checkpoints "
            f"store per expert under other names) in {fused[0]}"
        )
    if why is not None:
        raise BadInput(f"{type(model).__name__} cannot run layer by layer: {why}; load it in memory (--offload none)")
    return parts


class _StopForward(Exception):
    """Raised by the capture hook once the first decoder layer's inputs are known."""


def capture_first_layer_calls(model, first_block, batches, device, task) -> list[tuple[tuple, dict]]:
    """Run the model up to its first decoder layer for every batch on `device`; keep that layer's (args, kwargs)."""
    captured: list[tuple[tuple, dict]] = []

    def grab(module, args, kwargs):
        captured.append((args, kwargs))
        raise _StopForward

    handle = first_block.register_forward_pre_hook(grab, with_kwargs=True)
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


def next_layer_call(args: tuple, kwargs: dict, hidden) -> tuple[tuple, dict]:
    """The next layer's call: the same arguments with the hidden states replaced (positional or keyword)."""
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def hidden_of(call: tuple[tuple, dict]):
    """The hidden states a layer call carries."""
    args, kwargs = call
    return args[0] if args else kwargs["hidden_states"]


def run_stream(stream: Stream, module, task) -> None:
    """Every batch of `stream` through `module`; its outputs become the next layer's inputs."""
    started = time.perf_counter()
    for b, (args, kwargs) in enumerate(stream.calls):
        task.check_cancelled()
        output = module(*args, **kwargs)
        hidden = output[0] if isinstance(output, tuple) else output
        stream.calls[b] = next_layer_call(args, kwargs, hidden)
    stream.seconds += time.perf_counter() - started


def run_layers(model, weights, streams: list[Stream], work: list[LayerWork], task, device: str, dtype) -> None:
    """Place each part of `model` in order, run every stream and every job's work on it, release it.

    `weights` places and releases parts (engine.model.disk_weights). Progress: one step per part,
    with the decoder layer in the message; cancel is checked between batches.
    """
    import torch

    needs_last = any(s.finish for s in streams) or bool(work)
    parts = _stack_only(model) if weights.resident and not needs_last else model_parts(model)
    steps = len(parts.blocks) + 2
    with torch.no_grad():
        weights.place(model, parts.first, device, dtype)
        try:
            _capture(model, parts.blocks[0], streams, device, task.slice(0.0, 1 / steps))
            for w in work:
                w.first(model, parts.first)
        finally:
            weights.release(model, parts.first)
        for index, block in enumerate(parts.blocks):
            task.check_cancelled()
            weights.place(model, parts.layers[index], device, dtype)
            try:
                _through_layer(index, f"{parts.stack_path}.{index}", block, streams, work, task)
            finally:
                weights.release(model, parts.layers[index])
            task.progress((index + 2) / steps, f"layer {index + 1}/{len(parts.blocks)}")
        if needs_last:
            _last(model, parts, weights, streams, work, device, dtype)
            task.progress(1.0, "final norm and head")


def _stack_only(model) -> ModelParts:
    """The parts of a model whose streams stop after the last layer: everything outside the stack is first."""
    stack_path, blocks = decoder_layers(model)
    keys = list(model.state_dict())
    layers = [[k for k in keys if k.startswith(f"{stack_path}.{i}.")] for i in range(len(blocks))]
    inside = {k for names in layers for k in names}
    return ModelParts(stack_path, list(blocks), [k for k in keys if k not in inside], layers, [], None, None)


def _capture(model, first_block, streams: list[Stream], device: str, task) -> None:
    """Every stream's first-layer calls; streams over the same batches share one capture."""
    captured: dict[int, list] = {}
    for stream in streams:
        if id(stream.batches) not in captured:
            captured[id(stream.batches)] = capture_first_layer_calls(model, first_block, stream.batches, device, task)
        stream.calls = list(captured[id(stream.batches)])


def _through_layer(index: int, prefix: str, block, streams: list[Stream], work: list[LayerWork], task) -> None:
    for stream in streams:
        module = stream.enter(index, prefix, block)
        try:
            run_stream(stream, module, task)
        except BaseException:
            stream.abandon(index, module)
            raise
        stream.leave(index, module)
    for w in work:
        w.layer(index, prefix, block)


def _last(model, parts: ModelParts, weights, streams, work, device: str, dtype) -> None:
    weights.place(model, parts.last, device, dtype)
    try:
        for stream in streams:
            if stream.finish is not None:
                stream.finish([hidden_of(call) for call in stream.calls], parts.norm, parts.head)
                stream.calls = []
        for w in work:
            w.last(model, parts.last)
    finally:
        weights.release(model, parts.last)
