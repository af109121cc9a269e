"""The memory planner dialog's state and what it shows, without Qt.

The dialog asks the engine for a `plan_memory` result (engine/planner.py) for one of three
sources: the loaded model, a built-in architecture preset, or a user's config.json. This module
holds the choice (`PlanRequest`), checks it before anything is sent, and turns the engine's result
into what the dialog draws (`PlanViewModel`): one row per method with the GPUs needed on each card, and
for a chosen method and card the terms that add up to that number, so a user can see why it is 4
and not 3. Preset names come from the same JSON files the engine reads, so the combo box is filled
before the engine has started.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from int8wb.engine.errors import BadInput
from int8wb.engine.installation import PRESETS
from int8wb.engine.vocabulary import DTYPE_LABELS, METHOD_LABELS

SOURCE_MODEL, SOURCE_PRESET, SOURCE_CONFIG = "model", "preset", "config"
SOURCES = (SOURCE_MODEL, SOURCE_PRESET, SOURCE_CONFIG)
DEFAULT_PRESET = "llama-2-70b"
MAX_CONTEXT = 1 << 24  # the planner's own search limit for the longest context
MAX_BATCH = 65536

WEIGHT_TERM_NOTES = {
    "float weight": "every Linear weight in the float dtype",
    "int8 weight": "1 byte per Linear weight",
    "scales": "float32 scale per output row (one per tensor for absmax)",
    "outlier indices": "int64 index of each outlier column",
    "outlier weight": "outlier weight columns kept in the float dtype",
    "bias": "Linear biases in the float dtype",
    "float (not quantized)": "embeddings, norms, lm_head",
}

WORKSPACE_TERM_NOTES = {
    "residual": "layer input and output hidden states",
    "block": "largest of attention, MLP and logits",
    "int8": "int8 activations and int32 accumulator",
    "outliers": "outlier weight columns dequantized per call",
    "dequant": "largest weight dequantized before its matmul",
}


# --- presets --------------------------------------------------------------------------------------


def preset_dir() -> Path:
    """resources/presets, the directory engine/planning/presets.py reads too."""
    return PRESETS


def method_label(method: str, dtype: str | None = None) -> str:
    """A method's name for people; the baseline says its float dtype (a CPU model plans in FP32)."""
    if method == "baseline" and dtype in DTYPE_LABELS:
        return f"{DTYPE_LABELS[dtype]} (baseline)"
    return METHOD_LABELS.get(method, method)


@dataclass(frozen=True)
class Preset:
    name: str  # the file stem, what `plan_memory` takes
    label: str
    scale: str
    parameters: int

    @property
    def title(self) -> str:
        return f"{self.label} ({self.scale})"


def list_presets(directory: Path | None = None) -> list[Preset]:
    """Every built-in preset, smallest first; a file that cannot be read is left out."""
    presets = []
    for path in sorted((directory or preset_dir()).glob("*.json")):
        try:
            meta = json.loads(path.read_text())["workbench_preset"]
            presets.append(Preset(path.stem, str(meta["label"]), str(meta["scale"]), int(meta["parameters"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(presets, key=lambda preset: (preset.parameters, preset.name))


# --- the request ----------------------------------------------------------------------------------


@dataclass
class PlanRequest:
    """What the user picked in the dialog; `params()` is the `plan_memory` request."""

    source: str = SOURCE_PRESET
    preset: str = DEFAULT_PRESET
    config_path: str = ""
    context: int = 4096
    batch: int = 1
    usable_fraction: float = 0.9
    outlier_fraction: float = 0.005
    threshold: float | None = None  # the loaded model's outlier threshold, for its scan's real counts

    def check(self, has_model: bool) -> None:
        """Raise BadInput with a sentence the dialog can show when the choice cannot be planned."""
        if self.source not in SOURCES:
            raise BadInput(f"unknown source {self.source!r}; use one of {', '.join(SOURCES)}")
        if self.source == SOURCE_MODEL and not has_model:
            raise BadInput("no model is loaded: load one in the window, or pick a preset or a config.json")
        if self.source == SOURCE_PRESET and not self.preset:
            raise BadInput("pick a preset")
        if self.source == SOURCE_CONFIG:
            if not self.config_path.strip():
                raise BadInput("choose a config.json (or a model directory holding one)")
            path = Path(self.config_path.strip()).expanduser()
            if not (path.is_file() or (path / "config.json").is_file()):
                raise BadInput(f"no config.json at {path}")
        for name, value, high in (("context", self.context, MAX_CONTEXT), ("batch", self.batch, MAX_BATCH)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                raise BadInput(f"{name} must be a whole number from 1 to {high:,}, got {value!r}")
        if not 0.0 < self.usable_fraction <= 1.0:
            raise BadInput(f"the usable fraction of a card must be in (0, 1], got {self.usable_fraction!r}")
        if not 0.0 <= self.outlier_fraction <= 1.0:
            raise BadInput(f"the outlier fraction must be between 0 and 1, got {self.outlier_fraction!r}")

    def params(self) -> dict[str, Any]:
        """The `plan_memory` parameters; without preset or config the engine plans the loaded model."""
        params: dict[str, Any] = {
            "context": self.context,
            "batch": self.batch,
            "usable_fraction": self.usable_fraction,
            "outlier_fraction": self.outlier_fraction,
        }
        if self.source == SOURCE_PRESET:
            params["preset"] = self.preset
        elif self.source == SOURCE_CONFIG:
            params["config"] = str(Path(self.config_path.strip()).expanduser())
        elif self.threshold is not None:
            params["threshold"] = self.threshold
        return params


# --- the result -----------------------------------------------------------------------------------


def format_bytes(count: int | float | None) -> str:
    """Bytes in binary units (GiB, as the cards are sized), three significant figures or more."""
    if count is None:
        return "—"
    sign, value = ("−" if count < 0 else ""), abs(float(count))
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= size:
            return f"{sign}{value / size:,.2f} {unit}"
    return f"{sign}{value:,.0f} B"


def short_name(name: str) -> str:
    """A path's last part (with its directory for a bare config.json); a preset name as it is."""
    path = Path(name)
    if len(path.parts) < 2:
        return name
    return f"{path.parent.name}/{path.name}" if path.name == "config.json" else path.name


@dataclass(frozen=True)
class Term:
    """One line of the breakdown: a label, its bytes (None for a line of text), a note, its depth.

    `text` is the value shown when there are no bytes (a rate, a time, a ratio).
    """

    label: str
    bytes: int | None
    note: str = ""
    level: int = 0
    children: tuple[Term, ...] = ()
    help: str = ""  # what the term is, for its tooltip (the note says how it was computed)
    text: str = ""

    @property
    def value_text(self) -> str:
        return format_bytes(self.bytes) if self.bytes is not None else self.text


@dataclass(frozen=True)
class MethodRow:
    method: str
    label: str
    total_bytes: int
    needed: dict[str, int | None]  # card -> GPUs needed (None: does not fit however many)

    def cell(self, gpu: str) -> str:
        if gpu not in self.needed:
            return "—"
        return "does not fit" if self.needed[gpu] is None else str(self.needed[gpu])


@dataclass
class PlanViewModel:
    """A `plan_memory` result as the dialog shows it."""

    result: dict[str, Any]
    gpus: list[str] = field(init=False)
    rows: list[MethodRow] = field(init=False)

    def __post_init__(self) -> None:
        methods = plan_entries(self.result)
        self._methods = {entry["method"]: entry for entry in methods}
        self.gpus = [card["gpu"] for card in methods[0].get("gpus", [])]
        dtype = self.result.get("settings", {}).get("dtype")
        self.rows = [
            MethodRow(
                entry["method"],
                method_label(entry["method"], dtype),
                int(entry["total_bytes"]),
                {card["gpu"]: card.get("needed") for card in entry["gpus"]},
            )
            for entry in methods
        ]

    @property
    def methods(self) -> list[str]:
        return [row.method for row in self.rows]

    def source_name(self) -> str:
        """The full name of what was planned: a preset name or a path."""
        return str(self.result.get("source", {}).get("name") or self.result.get("architecture", {}).get("name", ""))

    def title(self) -> str:
        """What was planned: the model's (short) name and size, in a line."""
        arch = self.result.get("architecture", {})
        parameters = arch.get("parameters")
        size = (
            f"{parameters / 1e9:,.2f} B parameters"
            if parameters and parameters >= 1e9
            else f"{(parameters or 0) / 1e6:,.1f} M parameters"
        )
        if arch.get("num_experts"):
            size += (
                f" ({arch.get('active_parameters', 0) / 1e9:,.2f} B active: {arch['experts_per_token']} of "
                f"{arch['num_experts']} experts per token; all experts in memory)"
            )
        shape = (
            (
                f"{arch.get('num_layers')} layers, hidden {arch.get('hidden_size'):,}, "
                f"{arch.get('num_heads')} heads ({arch.get('num_kv_heads')} KV)"
            )
            if arch.get("hidden_size")
            else ""
        )
        kind = self.result.get("source", {}).get("kind", "")
        name = short_name(self.result.get("source", {}).get("name") or arch.get("name", ""))
        where = {"preset": "preset", "config": "config", "model": "loaded model"}.get(kind, kind)
        return " · ".join(part for part in (f"{name} ({where})" if where else name, size, shape) if part)

    def settings_line(self) -> str:
        s = self.result.get("settings", {})
        return (
            f"context {s.get('context', 0):,} × batch {s.get('batch', 0):,} · {s.get('dtype')} · "
            f"{s.get('usable_fraction', 0):.0%} of each card usable · "
            f"{format_bytes(s.get('overhead_bytes'))} runtime overhead per GPU · "
            f"outliers {s.get('outlier_fraction', 0):.2%} of features"
        )

    def notes(self) -> list[str]:
        """The plan's notes, then its "one machine, layer by layer" line."""
        line = (self.result.get("layer_by_layer") or {}).get("line")
        return [str(note) for note in self.result.get("notes", [])] + ([str(line)] if line else [])

    def card(self, method: str, gpu: str) -> dict[str, Any]:
        for card in self._method(method)["gpus"]:
            if card["gpu"] == gpu:
                return card
        raise BadInput(f"the plan has no card {gpu!r}")

    def _method(self, method: str) -> dict[str, Any]:
        if method not in self._methods:
            raise BadInput(f"the plan has no method {method!r}")
        return self._methods[method]

    def breakdown(self, method: str, gpu: str) -> list[Term]:
        """The terms behind "GPUs needed" for one method on one kind of card, top to bottom.

        state (weights + KV cache) is what the cards hold between them; each card's budget is
        its usable memory less the runtime overhead and the activation workspace; whole decoder
        layers are placed in order until the state is on cards.
        """
        entry, card = self._method(method), self.card(method, gpu)
        arch, settings = self.result.get("architecture", {}), self.result.get("settings", {})
        weights = entry["weights"]
        weight_children = tuple(
            Term(key, int(value), WEIGHT_TERM_NOTES.get(key, ""), 1)
            for key, value in ordered_terms(weights["terms"], WEIGHT_TERM_NOTES)
        )
        kv_note = (
            f"2 × {arch.get('num_layers')} layers × {settings.get('batch')} × {settings.get('context'):,} tokens × "
            f"{arch.get('num_kv_heads')} KV heads × {arch.get('head_dim')} × {settings.get('float_bytes')} B"
            if arch.get("num_layers")
            else ""
        )
        workspace = entry["workspace"]
        workspace_children = tuple(
            Term(key, -int(value), WORKSPACE_TERM_NOTES.get(key, ""), 2)
            for key, value in ordered_terms(workspace["terms"], WORKSPACE_TERM_NOTES)
        )
        usable_fraction = settings.get("usable_fraction", 0)
        budget = card["budget_per_gpu_bytes"]
        state = [
            Term(
                "Weights",
                int(weights["bytes"]),
                method_label(method, settings.get("dtype")),
                0,
                weight_children,
                "Every stored tensor of the model in this method's layout: INT8 weights, their scales, and what "
                "stays in floating point.",
            ),
            Term(
                "KV cache",
                int(entry["kv_cache"]["bytes"]),
                kv_note,
                0,
                help="The keys and values attention keeps for every token of the context, in every layer.",
            ),
            Term(
                "State to place",
                int(card["state_bytes"]),
                "weights + KV cache, split across the cards",
                0,
                help="What must sit in GPU memory for the whole run; whole layers go to one card each.",
            ),
        ]
        per_card = Term(
            f"Budget per {gpu}",
            int(budget),
            "what one card holds of weights and KV cache",
            0,
            help="One card's memory after the margin, the CUDA runtime and the activations of one forward pass.",
            children=(
                Term("capacity", int(card["capacity_bytes"]), "memory.total as nvidia-smi reports it", 1),
                Term("usable", int(card["usable_bytes"]), f"{usable_fraction:.0%} of capacity", 1),
                Term("runtime overhead", -int(card["overhead_bytes"]), "CUDA context, cuBLAS, NCCL (assumed)", 1),
                Term(
                    "activation workspace",
                    -int(card["workspace_bytes"]),
                    "one forward pass over batch × context",
                    1,
                    workspace_children,
                ),
            ),
        )
        return [*state, per_card, self._gpus_term(card, gpu, settings)]

    @staticmethod
    def _gpus_term(card: dict[str, Any], gpu: str, settings: dict[str, Any]) -> Term:
        needed, budget, state = card.get("needed"), card["budget_per_gpu_bytes"], card["state_bytes"]
        if needed is None:
            return Term(f"{gpu}: does not fit", None, card.get("why_not") or "", 0)
        ratio = state / budget if budget > 0 else math.inf
        fills = ", ".join(format_bytes(used) for used in card.get("per_gpu_bytes") or [])
        children = [
            Term(
                "state ÷ budget",
                None,
                f"{format_bytes(state)} ÷ {format_bytes(budget)} = {ratio:.2f} "
                f"→ {card.get('needed_if_divisible')} if layers could be cut anywhere",
                1,
            ),
            Term("whole layers in order", None, f"cards filled to {fills}", 1),
        ]
        longest = card.get("largest_context_on_needed")
        if longest is not None:
            children.append(
                Term(
                    "longest context",
                    None,
                    f"{longest:,} tokens at batch {settings.get('batch')} still fit on {needed} × {gpu}",
                    1,
                )
            )
        plural = "GPU" if needed == 1 else "GPUs"
        return Term(
            f"{needed} × {gpu}",
            None,
            f"{needed} {plural} needed",
            0,
            tuple(children),
            "The fewest cards that hold the state when whole decoder layers are placed in order.",
        )


def plan_entries(result: dict[str, Any], section: str = "", what: str = "methods") -> list[dict[str, Any]]:
    """The per-method entries of a `plan_memory` result (those that hold `section`, if given); a BadInput
    naming `what` is missing when there are none, so a dialog says so instead of drawing an empty table."""
    entries = result.get("methods")
    entries = [entry for entry in entries if not section or entry.get(section)] if isinstance(entries, list) else []
    if not entries:
        raise BadInput(f"the engine's plan has no {what}")
    return entries


def ordered_terms(terms: dict[str, Any], order: dict[str, str]) -> list[tuple[str, Any]]:
    """Terms in the planner's order (the protocol sorts keys): known ones as listed, others after."""
    rank = {key: index for index, key in enumerate(order)}
    return sorted(terms.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0]))
