"""The method and export format registries: what a declaration is made of.

Pure Python like engine.vocabulary, which registers every method (declared in resources/methods.toml)
and format and re-exports what the rest of the project reads. The tables derived from the registries
(`names`, `column`) are computed on every use, so a method registered later (a test's throwaway one)
is in every one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from int8wb.engine.errors import BadInput

BASELINE = "baseline"
SAFETENSORS, GGUF = "safetensors", "gguf"
"""An export format's `writer`: sharded safetensors files (engine.checkpoint.export), or one GGUF file."""
SCB, CHANNEL_SCALE = "scb", "channel-scale"
"""An export format's `layout` of a quantized Linear (engine.checkpoint.layout)."""


@dataclass(frozen=True)
class Method:
    """One quantization method: what a person reads about it, and the building blocks it is made of.

    weight_scale: one abs-max per weight "tensor", per output "row", or llama.cpp's Q8_0 "block"s;
    activations: left in "float", or INT8 with one scale per call ("tensor") or per token ("row");
    outliers: "none", "static" (columns from the scan stay in floating point) or "dynamic" (found per call);
    smoothed: the model is smoothed first (SmoothQuant). `scan_need` says why a method that takes
    something from the calibration scan needs it; `ticked`: the window ticks it from the start.
    """

    name: str
    label: str
    short_label: str
    description: str
    colour: str
    weight_scale: str
    activations: str
    outliers: str = "none"
    smoothed: bool = False
    scan_need: str = ""
    ticked: bool = False

    @property
    def w8a8(self) -> bool:
        """Activations quantized to INT8 too (an INT8 x INT8 product); else the weight is dequantized first."""
        return self.activations != "float"

    @property
    def needs_scan(self) -> bool:
        """Whether it takes something from a calibration scan (outlier columns, per-channel abs-max)."""
        return self.outliers == "static" or self.smoothed

    @property
    def answers_outliers(self) -> bool:
        """Whether it treats outlier dimensions specially (the window's right-hand column of check boxes)."""
        return self.outliers != "none" or self.smoothed


WEIGHT_SCALES, ACTIVATIONS, OUTLIERS = (
    ("tensor", "row", "block"),
    ("float", "tensor", "row"),
    ("none", "static", "dynamic"),
)

_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add `method` to the registry (after the others); its building blocks must be known ones."""
    if method.name in _METHODS or method.name == BASELINE:
        raise ValueError(f"method {method.name!r} is declared twice")
    blocks = ((method.weight_scale, WEIGHT_SCALES), (method.activations, ACTIVATIONS), (method.outliers, OUTLIERS))
    if any(value not in known for value, known in blocks):
        raise ValueError(f"method {method.name!r} uses a building block that is not declared")
    if method.needs_scan != bool(method.scan_need):
        raise ValueError(f"method {method.name!r}: scan_need says why it needs a scan, exactly when it needs one")
    _METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a method from the registry (a test's throwaway method)."""
    del _METHODS[name]


def method_of(name: str) -> Method:
    """The declaration of method `name`; an unknown name is a ValueError (callers validate user input first)."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}") from None


@dataclass(frozen=True)
class ExportFormat:
    """One export format: who loads it, what it holds, and how it is written.

    `holds`: the building blocks (Method fields) it can store, each with the values it takes; `refusals`:
    why it cannot store a (field, value), in that order of precedence. `reopens`: the workbench re-opens
    it (its sidecar keeps the INT8 of the layers the format writes in floating point, and kept super
    weights); a serving format has no place for them. `takes_conv1d`: its loader gives transformers'
    Conv1D an INT8 layer. `layer_by_layer`: it can be written one decoder layer at a time. `notes_fused_skips`: its loader
    (vLLM) refuses a skip list that splits Linears it fuses, so the export says so. `writer`:
    "safetensors" or "gguf"; `layout`: the safetensors tensors of a quantized Linear ("scb": bitsandbytes'
    weight + SCB; "channel-scale": compressed-tensors' weight + weight_scale).
    """

    name: str
    label: str
    loaders: str
    holds: dict[str, tuple[Any, ...]]
    refusals: dict[tuple[str, Any], str]
    writer: str = SAFETENSORS
    layout: str = ""
    reopens: bool = False
    takes_conv1d: bool = False
    layer_by_layer: bool = True
    no_float_weight: str = ""
    notes_fused_skips: bool = False

    def carries(self, method: Method) -> bool:
        return self.refusal(method) is None

    def refusal(self, method: Method) -> str | None:
        """Why this format cannot carry `method` (None if it can)."""
        for block, allowed in self.holds.items():
            value = getattr(method, block)
            if value not in allowed:
                return self.refusals.get((block, value), f"{self.name} cannot hold {block} {value!r}")
        return None


_FORMATS: dict[str, ExportFormat] = {}


def register_format(fmt: ExportFormat) -> ExportFormat:
    if fmt.name in _FORMATS:
        raise ValueError(f"export format {fmt.name!r} is declared twice")
    _FORMATS[fmt.name] = fmt
    return fmt


def format_of(name: Any) -> ExportFormat:
    """The declaration of export format `name`; an unknown one is a BadInput naming the known ones."""
    if name not in _FORMATS:
        raise BadInput(f"unknown export format {name!r}; choose from {', '.join(_FORMATS)}")
    return _FORMATS[name]


class LiveNames(Sequence):
    """A tuple of names computed from the registries on every use, so a method registered later is in it."""

    def __init__(self, names: Callable[[], tuple[str, ...]]) -> None:
        self._names = names

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __add__(self, other) -> tuple[str, ...]:
        return self._names() + tuple(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._names())


class LiveTable(Mapping):
    """A dict computed from the registries on every use (name -> one fact of its declaration)."""

    def __init__(self, table: Callable[[], dict[str, Any]]) -> None:
        self._table = table

    def __getitem__(self, key):
        return self._table()[key]

    def __iter__(self):
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())

    def __repr__(self) -> str:
        return repr(self._table())


def names(keep: Callable[[Method], bool] = lambda m: True) -> LiveNames:
    return LiveNames(lambda: tuple(name for name, method in _METHODS.items() if keep(method)))


def column(fact: str, baseline: str) -> LiveTable:
    return LiveTable(lambda: {BASELINE: baseline, **{n: getattr(m, fact) for n, m in _METHODS.items()}})


BASELINE_LABEL, BASELINE_SHORT_LABEL, BASELINE_COLOUR = "floating point (baseline)", "floating point", "#9a9cab"
BASELINE_DESCRIPTION = "The model as loaded, in floating point: the perplexity every method is compared with."


METHODS = names()
"""Every quantization method, in the order tables show them (their declaration order)."""
METHOD_LABELS = column("label", BASELINE_LABEL)
"""What a person reads for each method (tables, check boxes, plans)."""
METHOD_SHORT_LABELS = column("short_label", BASELINE_SHORT_LABEL)
"""Each method as a sentence names it ("naive INT8 raised perplexity by ...")."""
METHOD_DESCRIPTIONS = column("description", BASELINE_DESCRIPTION)
"""What each method does, in a sentence or two (tooltips, the explanation panel)."""
METHOD_COLOURS = column("colour", BASELINE_COLOUR)
"""Each method's colour in charts."""
W8A8_METHODS = names(lambda m: m.w8a8)
"""The methods whose activations are quantized to INT8 too (an INT8 x INT8 product)."""
WEIGHT_ONLY_METHODS = names(lambda m: not m.w8a8)
"""The methods that keep activations in floating point and dequantize the weight before the product."""
NEEDS_SCAN = names(lambda m: m.needs_scan)
"""The methods that take something from a calibration scan (outlier columns; per-channel abs-max)."""
TICKED_METHODS = names(lambda m: m.ticked)
"""The methods run unless told otherwise (the window's ticked boxes, the CLI's --methods)."""

EXPORT_FORMATS = LiveNames(lambda: tuple(_FORMATS))
"""Every export format, the default first."""
FORMAT_LABELS = LiveTable(lambda: {name: fmt.label for name, fmt in _FORMATS.items()})
FORMAT_LOADERS = LiveTable(lambda: {name: fmt.loaders for name, fmt in _FORMATS.items()})
"""Which programs load each format."""
FORMAT_METHODS = LiveTable(
    lambda: {name: tuple(m for m, method in _METHODS.items() if fmt.carries(method)) for name, fmt in _FORMATS.items()}
)
"""The methods each format carries exactly (from the building blocks it holds); the others are refused."""


def format_refusal(fmt: ExportFormat, method: str) -> str | None:
    """The BadInput message for exporting `method` as `fmt`, naming where to go instead; None if it carries it."""
    reason = fmt.refusal(method_of(method))
    if reason is None:
        return None
    homes = [name for name in _FORMATS if method in FORMAT_METHODS[name]]
    instead = f"export {method} with --format {' or '.join(homes)}" if homes else f"{method} has no export format"
    carried = FORMAT_METHODS[fmt.name]
    if carried and not fmt.reopens:  # a serving format: the methods that its programs load instead
        instead += f", or --method {' or '.join(carried)} for {fmt.name} ({fmt.loaders})"
    return f"{method} cannot be exported as {fmt.name}: {reason}: {instead}"
