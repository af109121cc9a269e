"""Mixture-of-experts blocks whose experts transformers fuses into 3-D parameters, held as one Linear per expert.

transformers (5.x) stores the experts of Qwen3-MoE, Mixtral, DeepSeek and most MoE
families as two parameters of one module: `gate_up_proj` (experts, 2 x intermediate,
hidden) and `down_proj` (experts, hidden, intermediate). Nothing in them is an
`nn.Linear`, so a scan hook or a Linear-by-Linear quantizer would pass them by,
though they are most of the model's weights. `unfuse_experts` replaces each such
module by `ExpertLinears`: one `Expert` per expert whose `gate_up_proj` and
`down_proj` are Linears over views of the fused tensors (no copy), and a forward
that routes tokens exactly as transformers' eager experts loop does. From there
the scan sees each expert's own input and token count, and quantization gives
each expert its own row scales and outlier columns, with nothing specific to
experts in either.

Only the layout transformers' `use_experts_implementation` declares by default
is taken (gate and up concatenated, weights (out, in), no bias, the default
gating); any other layout is reported as not supported rather than guessed.
"""

from __future__ import annotations

import torch
import torch.nn as nn

_DEFAULT_LAYOUT = {
    "is_concatenated": True,
    "is_transposed": False,
    "has_bias": False,
    "has_gate": True,
    "has_post_expert_norm": False,
}


class Expert(nn.Module):
    """One expert: act(gate) * up from `gate_up_proj` (2 x intermediate outputs), then `down_proj`."""

    def __init__(self, gate_up_proj: nn.Module, down_proj: nn.Module, act_fn: nn.Module) -> None:
        super().__init__()
        self.gate_up_proj = gate_up_proj
        self.down_proj = down_proj
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # (T, intermediate) each
        return self.down_proj(self.act_fn(gate) * up)


class ExpertLinears(nn.ModuleList):
    """The experts of one MoE block as a list of `Expert`, called as transformers calls its experts module.

    `fused_names` records the fused parameters it stands for, so an export can
    write them back in the layout transformers loads (engine.checkpoint.fused).
    """

    fused_names = ("gate_up_proj", "down_proj")

    def __init__(self, experts: list[Expert], source_type: str) -> None:
        super().__init__(experts)
        self.source_type = source_type  # the transformers class it replaced, for messages

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        """hidden_states (T, hidden); top_k_index, top_k_weights (T, k): the eager loop of transformers."""
        final = torch.zeros_like(hidden_states)
        with torch.no_grad():
            mask = nn.functional.one_hot(top_k_index, num_classes=len(self) + 1).permute(2, 1, 0)  # (E+1, k, T)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        for (index,) in hit.tolist():
            if index == len(self):  # the slot transformers keeps for tokens routed nowhere
                continue
            slot, token = torch.where(mask[index])
            out = self[index](hidden_states[token]) * top_k_weights[token, slot, None]
            final.index_add_(0, token, out.to(final.dtype))
        return final


def is_fused_experts(module) -> bool:
    """A module holding its experts as 3-D `gate_up_proj` / `down_proj` parameters."""
    params = getattr(module, "_parameters", {})
    return all(isinstance(params.get(n), torch.Tensor) and params[n].dim() == 3 for n in ExpertLinears.fused_names)


def unsupported_layout(module) -> str | None:
    """What about a fused experts module the workbench cannot take, or None when it can."""
    different = [flag for flag, value in _DEFAULT_LAYOUT.items() if getattr(module, flag, value) != value]
    if different:
        return ", ".join(different)
    if getattr(type(module)._apply_gate, "__name__", "") != "_default_apply_gate":
        return "its own gating function"
    return None


def unfuse(module) -> ExpertLinears:
    """`module`'s experts as per-expert Linears over views of its fused tensors (no copy)."""
    gate_up, down = module.gate_up_proj, module.down_proj  # (E, 2I, H), (E, H, I)
    experts = [Expert(_linear_view(gate_up[e]), _linear_view(down[e]), module.act_fn) for e in range(gate_up.shape[0])]
    return ExpertLinears(experts, type(module).__name__)


def _linear_view(weight: torch.Tensor) -> nn.Linear:
    """An nn.Linear whose weight is `weight` (out, in) itself: no weight of its own is made or initialised
    (a planner's meta model of 235B parameters has 24,064 experts' Linears)."""
    linear = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(linear)
    linear.out_features, linear.in_features = weight.shape
    linear.weight = nn.Parameter(weight, requires_grad=False)
    linear.register_parameter("bias", None)
    return linear


def unfuse_experts(model) -> list[str]:
    """Replace every fused experts module of `model` in place by its ExpertLinears; notes for the user.

    A fused layout other than the default one stays as it is, in floating point;
    the note names it, and every quantization result lists it as not supported.
    """
    unsupported: dict[str, list[str]] = {}
    fused = [(name, m) for name, m in model.named_modules() if is_fused_experts(m)]
    taken = 0
    for name, module in fused:
        why = unsupported_layout(module)
        if why:
            unsupported.setdefault(f"{type(module).__name__} ({why})", []).append(name)
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, unfuse(module))
        taken += 1
    notes = [
        f"not supported: {what} in {', '.join(names[:2])}{' ...' if len(names) > 2 else ''} "
        f"({len(names)} modules): they stay in floating point"
        for what, names in unsupported.items()
    ]
    if taken:
        notes.append(
            f"the fused experts of {taken} layers are held as one Linear per expert (same tensors, no copy), "
            "so that each expert is scanned and quantized on its own"
        )
    return notes


def fused_tensors(experts: ExpertLinears, dequantize) -> dict[str, torch.Tensor]:
    """The fused (E, out, in) tensors `experts` stands for; `dequantize(module)` gives an expert Linear's weight."""
    return {
        name: torch.stack([dequantize(getattr(expert, name)) for expert in experts])
        for name in ExpertLinears.fused_names
    }
