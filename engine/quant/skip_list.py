"""Which Linears stay in floating point: names a user gives, resolved to the model's real Linears.

A user (or the sensitivity sweep) names what to keep in floating point as full Linear names
(`model.layers.3.mlp.down_proj`), as a module that contains Linears (`model.layers.3` for a whole
decoder layer, `model.layers.3.mlp`), or as a Linear's own name (`down_proj`, every one of them).
A name must be one of the model's modules or select at least one Linear; an unknown one is refused
with the closest real names, because a skip list that silently matches nothing is the failure users
hit elsewhere. A module that holds no quantizable Linear (`lm_head`, which the bitsandbytes form of
every list names) is accepted with a note: it is in floating point already, so every list this tool
prints can be given back to it.

The resolved list is what the export writes in floating point and lists in the formats' skip
lists; `lm_head` always stays in floating point and is always listed, since a bitsandbytes skip
list without it makes transformers quantize the head.
"""

from __future__ import annotations

import difflib
from typing import Any

from int8wb.engine.errors import BadInput
from int8wb.engine.model.layers import linear_layers, shared_input_sets

LM_HEAD = "lm_head"


def parse_names(names: Any) -> list[str]:
    """A list of names, stripped, in order, without repeats.

    A string is split at commas, and may be written as the lists this tool prints (a Python or JSON
    list: `['model.layers.0.mlp.down_proj', 'lm_head']`), so that every printed list pastes back.
    """
    if names is None:
        return []
    if isinstance(names, str):
        text = names.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        names = [n.strip().strip("'\"") for n in text.split(",")]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise BadInput(f"skip_modules must be a list of module names, got {names!r}")
    return list(dict.fromkeys(n.strip() for n in names if n.strip()))


def resolve(model, names: Any) -> list[str]:
    """The full names of the quantizable Linears that `names` select, in the model's order."""
    return _select(model, names)[0]


def notes(model, names: Any) -> list[str]:
    """What to tell of `names` (checked as `resolve` checks them): those that hold no quantizable Linear."""
    already = _select(model, names)[1]
    if not already:
        return []
    return [f"{', '.join(already)}: already in floating point (no quantizable Linear), nothing more to keep there"]


def _select(model, names: Any) -> tuple[list[str], list[str]]:
    """(the quantizable Linears `names` select, in the model's order; the names that are modules, or the
    head, holding none: the tool's own bitsandbytes list names `lm_head`, which is in floating point anyway)."""
    requested = parse_names(names)
    linears = [name for name, _ in linear_layers(model)]
    modules = [n for n, _ in model.named_modules() if n]
    chosen: set[str] = set()
    already: list[str] = []
    for name in requested:
        matches = [n for n in linears if n == name or n.startswith(name + ".") or n.endswith("." + name)]
        if matches:
            chosen.update(matches)
        elif name == LM_HEAD or name in modules:
            already.append(name)
        else:
            raise BadInput(_unknown(name, linears, modules))
    return [n for n in linears if n in chosen], already


def _unknown(name: str, linears: list[str], modules: list[str]) -> str:
    own_names = sorted({n.rsplit(".", 1)[-1] for n in linears})
    close = difflib.get_close_matches(name, own_names + linears + modules, n=3, cutoff=0.6)
    hint = f"; closest: {', '.join(close)}" if close else f"; Linears look like {linears[0]}" if linears else ""
    return f"no module named {name!r} in this model{hint}"


def tool_forms(skipped: list[str]) -> dict[str, list[str]]:
    """The same skip list in the forms other tools take.

    - `llm_int8_skip_modules`: transformers + bitsandbytes (`BitsAndBytesConfig`), `lm_head` included;
    - `ignore`: llm-compressor / compressed-tensors recipes, module names, `lm_head` included.
    """
    with_head = [*skipped, LM_HEAD] if LM_HEAD not in skipped else list(skipped)
    return {"llm_int8_skip_modules": with_head, "ignore": list(with_head)}


def split_fused_sets(model, kept: list[str]) -> list[list[str]]:
    """The sets of Linears that read one input (engine.model.layers.shared_input_sets) of which `kept` holds
    some but not all."""
    chosen = set(kept)
    return [members for members in shared_input_sets(model) if 0 < len(chosen.intersection(members)) < len(members)]


def vllm_notes(model, kept: list[str]) -> list[str]:
    """What vLLM will say of a compressed-tensors export that keeps `kept` in floating point, when it splits a
    set vLLM fuses into one matrix (it refuses to load it: "Detected some but not all shards of ... are
    quantized")."""
    split = split_fused_sets(model, kept)
    if not split:
        return []
    chosen = set(kept)
    first = split[0]
    return [
        f"vLLM fuses the Linears that read one input (q/k/v, gate/up) and refuses a checkpoint that keeps only some "
        f"of them in floating point; this skip list splits {len(split)} such set(s), first "
        f"{', '.join(first)} (kept: {', '.join(n for n in first if n in chosen)}). For vLLM, keep whole sets: a sweep by the Linears "
        "that read one input (`int8wb sensitivity --group input`) finds such a list"
    ]
