"""Where the matrix weights of a causal LM are, what each one's input is, and which the workbench quantizes.

A quantizable layer is an `nn.Linear` or transformers' `Conv1D` (GPT-2 and its
family), which is a Linear whose weight is stored transposed, (in, out): the
workbench reads it as the (out, in) matrix it is. Experts that transformers
fuses into 3-D parameters are held as one Linear per expert
(engine.model.experts), so each expert is scanned and quantized on its own.
The router of a mixture-of-experts block (`mlp.gate`) stays in floating point:
it picks the experts, and peers keep it so.

The heatmap groups Linears by what feeds them: the attention input (q/k/v
share it), the attention output, the MLP input (gate/up share it), the MLP's
down projection, and for mixture-of-experts the experts' own inputs (each
expert sees only the tokens routed to it). The names below cover the Llama,
Mistral, Qwen, Gemma, OPT, GPT-2, Falcon, BLOOM, GPT-NeoX, Phi and MoE
families; anything else is "other".
"""

from __future__ import annotations

import re

from int8wb.engine.errors import BadInput
from int8wb.engine.vocabulary import (
    KIND_ATTN_IN,
    KIND_ATTN_OUT,
    KIND_EXPERT_DOWN,
    KIND_EXPERT_IN,
    KIND_MLP_DOWN,
    KIND_MLP_IN,
    KIND_OTHER,
)

_SUFFIX_KIND = {
    "q_proj": KIND_ATTN_IN,
    "k_proj": KIND_ATTN_IN,
    "v_proj": KIND_ATTN_IN,
    "qkv_proj": KIND_ATTN_IN,
    "query_key_value": KIND_ATTN_IN,
    "Wqkv": KIND_ATTN_IN,
    "c_attn": KIND_ATTN_IN,
    "o_proj": KIND_ATTN_OUT,
    "out_proj": KIND_ATTN_OUT,
    "dense": KIND_ATTN_OUT,
    "attn.c_proj": KIND_ATTN_OUT,
    "gate_proj": KIND_MLP_IN,
    "up_proj": KIND_MLP_IN,
    "gate_up_proj": KIND_MLP_IN,
    "fc1": KIND_MLP_IN,
    "c_fc": KIND_MLP_IN,
    "dense_h_to_4h": KIND_MLP_IN,
    "w1": KIND_MLP_IN,
    "w3": KIND_MLP_IN,
    "down_proj": KIND_MLP_DOWN,
    "fc2": KIND_MLP_DOWN,
    "dense_4h_to_h": KIND_MLP_DOWN,
    "mlp.c_proj": KIND_MLP_DOWN,
    "w2": KIND_MLP_DOWN,
}
_EXPERT_KIND = {KIND_MLP_IN: KIND_EXPERT_IN, KIND_MLP_DOWN: KIND_EXPERT_DOWN}
_EXPERT = re.compile(r"(?:^|\.)experts\.(\d+)\.")
ROUTER_NAMES = ("gate", "router", "shared_expert_gate")
"""Names of the module that routes tokens in a mixture-of-experts block (beside its `experts`)."""


def linear_kind(name: str) -> str:
    """The input group of the Linear called `name` (its full module path)."""
    parts = name.split(".")
    kind = _SUFFIX_KIND.get(".".join(parts[-2:])) or _SUFFIX_KIND.get(parts[-1], KIND_OTHER)
    if expert_index(name) is not None:
        return _EXPERT_KIND.get(kind, kind)
    return kind


def expert_index(name: str) -> int | None:
    """Which expert the Linear `name` belongs to (`...experts.3.w1` -> 3), None outside the experts."""
    match = _EXPERT.search(name)
    return int(match.group(1)) if match else None


def is_conv1d(module) -> bool:
    """transformers' Conv1D: a Linear with its weight stored (in, out)."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def is_linear(module) -> bool:
    """An nn.Linear or a Conv1D: a layer y = x W^T + b that Int8Linear can stand in for."""
    import torch.nn as nn

    return isinstance(module, nn.Linear) or is_conv1d(module)


def features(module) -> tuple[int, int]:
    """(in_features, out_features) of a Linear, a Conv1D or an Int8Linear."""
    if is_conv1d(module):
        return tuple(module.weight.shape)
    return module.in_features, module.out_features


def weight_matrix(module):
    """The (out, in) weight of a Linear or Conv1D (a Conv1D's stored (in, out) weight transposed)."""
    if is_conv1d(module):
        return module.weight.t().contiguous()
    return module.weight


def is_router(model, name: str) -> bool:
    """Whether the module `name` routes tokens to experts (a `gate` beside an `experts` module)."""
    parent_name, _, child = name.rpartition(".")
    if child not in ROUTER_NAMES:
        return False
    parent = model.get_submodule(parent_name) if parent_name else model
    return hasattr(parent, "experts")


def decoder_layers(model):
    """(path, ModuleList) of the model's stack of decoder blocks.

    That is the longest `nn.ModuleList` of same-type members that is not inside
    another one (`model.layers` on Llama, `transformer.h` on GPT-2 style models;
    a block's list of experts is inside the stack, so it never wins).
    """
    import torch.nn as nn

    lists = [
        (path, module)
        for path, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1
    ]
    outermost = [(p, m) for p, m in lists if not any(p.startswith(f"{q}.") for q, _ in lists if q != p)]
    if not outermost:
        raise BadInput(
            f"not supported: {type(model).__name__} has no stack of decoder layers (a list of identical blocks): "
            "the workbench scans and quantizes decoder-only language models"
        )
    return max(outermost, key=lambda pair: len(pair[1]))


def linear_layers(model, include_lm_head: bool = False) -> list[tuple[str, object]]:
    """(full name, module) of every Linear and Conv1D the workbench quantizes, in forward order.

    The output head is left out unless asked for, and routers always are.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [
        (name, module)
        for name, module in model.named_modules()
        if is_linear(module) and (include_lm_head or module is not head) and not is_router(model, name)
    ]


def shared_input_sets(model) -> list[list[str]]:
    """The quantizable Linears, in model order, as sets that read one input within one decoder layer (q/k/v;
    gate/up; an expert's own gate/up); a Linear of its own kind, or outside the decoder layers, is a set alone.

    These are the sets serving engines fuse into one matrix (vLLM's qkv_proj and gate_up_proj), which
    must all be quantized or all be kept in floating point there.
    """
    path, _ = decoder_layers(model)
    sets: dict[tuple, list[str]] = {}
    for name, _ in linear_layers(model):
        layer, kind = layer_number(name, path), linear_kind(name)
        key = (layer, kind, expert_index(name)) if layer is not None and kind != KIND_OTHER else (name,)
        sets.setdefault(key, []).append(name)
    return list(sets.values())


def layer_number(name: str, path: str) -> str | None:
    """The decoder layer a module is in (`model.layers.3.mlp.up_proj` under `model.layers` -> "3"), None outside."""
    if not name.startswith(path + "."):
        return None
    index = name[len(path) + 1 :].split(".", 1)[0]
    return index if index.isdigit() else None
