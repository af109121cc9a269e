"""SmoothQuant (Xiao et al. 2023): move the activations' outliers into the weights, without changing the model.

For Linears that read the same input X, each input channel j gets a factor
s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) (max|X_j| from the calibration scan,
max|W_j| over the columns j of every Linear of the group); X_j is divided by s_j
and every weight's column j multiplied by it, so the product is unchanged while
the outlier channels of X shrink. The division is folded into what produces X,
where that is exact:

- q/k/v read the attention norm's output and gate/up the MLP norm's: the norm's
  weight (and bias) is divided by s (for norms that scale by 1 + weight, as
  Gemma's, 1 + weight is);
- down_proj reads act(gate) * up, which is linear in up: up_proj's output rows
  (and bias) are divided by s.

Anything else (o_proj, whose input is the attention's output; Linears of an
architecture not recognised here) stays unsmoothed, and the report says which.
The groups are applied in forward order, each from the weights as the previous
groups left them, as llm-compressor's SmoothQuantModifier does. Smoothing never
changes the model it is given: it replaces tensors of a structural copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from int8wb.engine.model.layers import decoder_layers, is_linear, linear_layers, weight_matrix
from int8wb.engine.vocabulary import smoothing_factors

ATTENTION_NORMS = ("input_layernorm",)
# Gemma 2/3 normalise the attention output with post_attention_layernorm and the MLP input with
# pre_feedforward_layernorm; Llama, Mistral and Qwen2 feed the MLP from post_attention_layernorm.
MLP_NORMS = ("pre_feedforward_layernorm", "post_attention_layernorm")
ATTENTION_INPUTS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
MLP_INPUTS = ("mlp.gate_proj", "mlp.up_proj")
MLP_DOWN, MLP_UP = "mlp.down_proj", "mlp.up_proj"


@dataclass(frozen=True)
class Group:
    """Linears that read one input, and the module whose output that input is."""

    source: str  # full name of the norm or Linear the factors fold into
    source_kind: str  # "norm" or "linear"
    members: tuple[str, ...]  # full names of the Linears that read the input


def groups(model) -> tuple[list[Group], list[str]]:
    """(the smoothable groups in forward order, the Linears no exact fold exists for: Conv1Ds and experts too)."""
    path, blocks = decoder_layers(model)
    found = [group for index, block in enumerate(blocks) for group in block_groups(block, f"{path}.{index}")]
    smoothed = {member for group in found for member in group.members}
    return found, [name for name in _forward_order(model) if name not in smoothed]


def block_groups(block, prefix: str) -> list[Group]:
    """The smoothable groups of one decoder layer called `prefix`, in forward order (full names)."""
    import torch.nn as nn

    names = {name for name, module in block.named_modules() if isinstance(module, nn.Linear)}
    found: list[Group] = []
    attention_norm = _first_present(block, ATTENTION_NORMS)
    if attention_norm and all(n in names for n in ATTENTION_INPUTS):
        found.append(Group(f"{prefix}.{attention_norm}", "norm", _full(prefix, ATTENTION_INPUTS)))
    mlp_norm = _first_present(block, MLP_NORMS)
    if mlp_norm and all(n in names for n in MLP_INPUTS):
        found.append(Group(f"{prefix}.{mlp_norm}", "norm", _full(prefix, MLP_INPUTS)))
    if MLP_DOWN in names and MLP_UP in names and _is_gated_product(block.get_submodule("mlp")):
        found.append(Group(f"{prefix}.{MLP_UP}", "linear", (f"{prefix}.{MLP_DOWN}",)))
    return found


def _first_present(block, names: tuple[str, ...]) -> str | None:
    return next((name for name in names if hasattr(block, name)), None)


def _full(prefix: str, names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{prefix}.{name}" for name in names)


def _is_gated_product(mlp) -> bool:
    """Whether the MLP computes down(act(gate(x)) * up(x)) (Llama, Mistral, Qwen2, Gemma)."""
    return all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn"))


def weight_column_absmax(root, members, prefix: str = "") -> Any:
    """max |W[:, j]| over the Linears `members` (full names; `root` is the module called `prefix`), float32."""
    import torch

    columns = [weight_matrix(_module(root, prefix, name)).detach().abs().amax(dim=0).float() for name in members]
    return torch.stack(columns).amax(dim=0)


def _module(root, prefix: str, name: str):
    """The module `name` (a full name) of `root`, the module called `prefix` ("" for the model)."""
    return root.get_submodule(name[len(prefix) + 1 :] if prefix else name)


def weight_view(model) -> dict[str, tuple[Any, bool]]:
    """Per Linear: (max |W[:, j]| over its smoothing group, or its own weight's, as numpy; whether it is smoothed)."""
    path, blocks = decoder_layers(model)
    view = {}
    for index, block in enumerate(blocks):
        view.update(block_weight_view(block, f"{path}.{index}"))
    for name, module in model.named_modules():
        if is_linear(module) and name not in view:
            view[name] = (weight_column_absmax(model, (name,)).cpu().numpy(), False)
    return view


def block_weight_view(block, prefix: str) -> dict[str, tuple[Any, bool]]:
    """weight_view of the Linears (and Conv1Ds) of one decoder layer called `prefix` (placed), by full name."""
    group_of = {member: group for group in block_groups(block, prefix) for member in group.members}
    view = {}
    for local, module in block.named_modules():
        if is_linear(module):
            name = f"{prefix}.{local}"
            members = group_of[name].members if name in group_of else (name,)
            view[name] = (weight_column_absmax(block, members, prefix).cpu().numpy(), name in group_of)
    return view


def factors(activation_absmax, weight_absmax, alpha: float):
    """SmoothQuant's factors (engine.vocabulary.smoothing_factors, which the GUI's smoothed heatmap uses too)."""
    return smoothing_factors(activation_absmax, weight_absmax, alpha)


def smooth(model, scan, alpha: float) -> dict[str, Any]:
    """Smooth `model` in place (new tensors for every changed one) with the scan's abs-max; the report."""
    found, rest = groups(model)
    smoothed, missing = smooth_groups(model, "", found, scan.absmax_of(), alpha)
    unsmoothed = [name for name in _forward_order(model) if name in set(rest) | set(missing)]
    return {"alpha": alpha, "smoothed": smoothed, "unsmoothed": unsmoothed}


def smooth_groups(root, prefix: str, found: list[Group], absmax: dict[str, Any], alpha: float):
    """Smooth `found` in `root` (the module called `prefix`; "" for the model) with the activation `absmax`
    per Linear name: ({smoothed Linear: its source}, the members of groups the absmax did not cover)."""
    import torch

    smoothed: dict[str, str] = {}
    missing: list[str] = []
    with torch.no_grad():
        for group in found:
            if not all(name in absmax for name in group.members):
                missing.extend(group.members)
                continue
            activation = torch.stack([torch.as_tensor(absmax[name]) for name in group.members]).amax(dim=0).float()
            scale = factors(activation, weight_column_absmax(root, group.members, prefix), alpha)
            _divide_source(_module(root, prefix, group.source), group, scale)
            for name in group.members:
                linear = _module(root, prefix, name)
                linear.weight = _parameter(linear.weight.float() * scale[None, :], linear.weight)
                smoothed[name] = group.source
    return smoothed, missing


def _divide_source(module, group: Group, scale) -> None:
    """Divide the output channels of the group's source (`module`) by `scale` (a new tensor for each)."""
    if group.source_kind == "linear":
        module.weight = _parameter(module.weight.float() / scale[:, None], module.weight)
    elif _scales_by_one_plus_weight(module):
        module.weight = _parameter((1.0 + module.weight.float()) / scale - 1.0, module.weight)
    else:
        module.weight = _parameter(module.weight.float() / scale, module.weight)
    if getattr(module, "bias", None) is not None:
        module.bias = _parameter(module.bias.float() / scale, module.bias)


def _parameter(value, like):
    import torch.nn as nn

    return nn.Parameter(value.to(like.dtype).contiguous(), requires_grad=False)


def _scales_by_one_plus_weight(norm) -> bool:
    """Whether the norm multiplies by (1 + weight) rather than by weight: probed with a zero weight."""
    import copy

    import torch

    probe = copy.deepcopy(norm)
    probe.weight.data.zero_()
    if getattr(probe, "bias", None) is not None:
        probe.bias.data.zero_()
    x = torch.linspace(-2.0, 2.0, norm.weight.numel(), dtype=norm.weight.dtype, device=norm.weight.device)
    return bool(probe(x[None, :]).abs().amax() > 0)


def _forward_order(model) -> list[str]:
    """Every quantizable Linear (Conv1Ds and experts too; not the head, not routers), in forward order."""
    return [name for name, _ in linear_layers(model)]
