"""Where the Linear layers of a causal LM are, and what each one's input is.

The heatmap groups Linear layers by what feeds them: the attention input
(q/k/v share it), the attention output, the MLP input (gate/up share it) and
the MLP's down projection. The names below cover the Llama, Mistral, Qwen,
Gemma, OPT, Falcon, GPT-NeoX and Phi families; anything else is "other".
"""

from __future__ import annotations

from engine.errors import BadInput
from engine.vocabulary import KIND_ATTN_IN, KIND_ATTN_OUT, KIND_MLP_DOWN, KIND_MLP_IN, KIND_OTHER

_SUFFIX_KIND = {
    "q_proj": KIND_ATTN_IN,
    "k_proj": KIND_ATTN_IN,
    "v_proj": KIND_ATTN_IN,
    "qkv_proj": KIND_ATTN_IN,
    "query_key_value": KIND_ATTN_IN,
    "Wqkv": KIND_ATTN_IN,
    "o_proj": KIND_ATTN_OUT,
    "out_proj": KIND_ATTN_OUT,
    "dense": KIND_ATTN_OUT,
    "gate_proj": KIND_MLP_IN,
    "up_proj": KIND_MLP_IN,
    "gate_up_proj": KIND_MLP_IN,
    "fc1": KIND_MLP_IN,
    "dense_h_to_4h": KIND_MLP_IN,
    "w1": KIND_MLP_IN,
    "w3": KIND_MLP_IN,
    "down_proj": KIND_MLP_DOWN,
    "fc2": KIND_MLP_DOWN,
    "dense_4h_to_h": KIND_MLP_DOWN,
    "w2": KIND_MLP_DOWN,
}


def linear_kind(name: str) -> str:
    """The input group of the Linear called `name` (its full module path)."""
    return _SUFFIX_KIND.get(name.rsplit(".", 1)[-1], KIND_OTHER)


def decoder_layers(model):
    """(path, ModuleList) of the model's stack of decoder blocks.

    That is the longest `nn.ModuleList` whose members all have the same type
    (`model.layers` on Llama, `transformer.h` on GPT-2 style models).
    """
    import torch.nn as nn

    best = None
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(m) for m in module}) == 1 and (best is None or len(module) > len(best[1])):
                best = (path, module)
    if best is None:
        raise BadInput(
            f"{type(model).__name__} has no stack of decoder layers (a list of identical blocks): "
            "the workbench scans and quantizes decoder-only language models"
        )
    return best


def linear_layers(model, include_lm_head: bool = False) -> list[tuple[str, object]]:
    """(full name, nn.Linear) of every Linear the workbench can quantize, in forward order."""
    import torch.nn as nn

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (include_lm_head or module is not head)
    ]
