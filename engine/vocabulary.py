"""The words both processes use: methods, Linear input kinds, float sizes, GPU cards, histogram edges.

Part of the contract between the GUI and the engine, like `engine.link.protocol`: pure Python, no
numpy, no torch, so `app/` may import it. Each fact is defined here once (the methods are declared
in resources/methods.toml and registered here); the engine's quantizers, planner and CLI and the
GUI's views all read it from here.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

from int8wb.engine.errors import BadInput
from int8wb.engine.installation import METHOD_DECLARATIONS
from int8wb.engine.registry import (  # noqa: F401 (re-exported: the rest of the project reads them here)
    BASELINE,
    CHANNEL_SCALE,
    EXPORT_FORMATS,
    FORMAT_LABELS,
    FORMAT_LOADERS,
    FORMAT_METHODS,
    GGUF,
    METHOD_COLOURS,
    METHOD_DESCRIPTIONS,
    METHOD_LABELS,
    METHOD_SHORT_LABELS,
    METHODS,
    NEEDS_SCAN,
    SCB,
    TICKED_METHODS,
    W8A8_METHODS,
    WEIGHT_ONLY_METHODS,
    ExportFormat,
    Method,
    format_of,
    format_refusal,
    method_of,
    register_format,
    register_method,
    unregister_method,
)

# --- quantization methods -------------------------------------------------------------------------
# A method is one table of resources/methods.toml (docs/architecture.md, "Adding a method"), registered
# here as a `Method`: every table the engine's quantizers, planner, checkpoint layouts and CLI and the
# window's check boxes and colours read about it is derived from it. Its building blocks (weight_scale,
# activations, outliers, smoothed) are what engine.quant.schemes, the planner and the export formats act
# on, so a method made of existing blocks needs nothing else.


def _register_declared_methods(path: Path) -> None:
    """Register every method declared in `path`, in its order; a malformed declaration names itself."""
    with path.open("rb") as declarations:
        for name, fields in tomllib.load(declarations).items():
            try:
                register_method(Method(name=name, **fields))
            except TypeError as exc:  # a field Method does not have, or one it needs missing
                raise ValueError(f"{path}: method {name!r}: {exc}") from None


_register_declared_methods(METHOD_DECLARATIONS)
# The two methods other code names: what the sensitivity sweep repairs and the planner sizes the in-memory
# path with (plain vector-wise INT8), and what `int8wb export` writes unless told otherwise.
VECTORWISE, LLM_INT8 = method_of("vectorwise"), method_of("llm-int8")

DEFAULT_REPAIR_METHOD = VECTORWISE.name
"""The method the sensitivity sweep repairs unless told otherwise (the CLI and the window)."""

Q8_0_BLOCK = 32
"""Weights per Q8_0 block (llama.cpp's QK8_0): each block has one float16 scale."""

DEFAULT_ALPHA = 0.5
"""SmoothQuant's migration strength: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)."""

DEFAULT_THRESHOLD = 6.0
"""LLM.int8()'s outlier threshold on |x|."""


def check_threshold(threshold: Any) -> float:
    """A threshold is a finite positive number; anything else is a clear error."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise BadInput(f"threshold must be a number, got {threshold!r}")
    if not math.isfinite(threshold) or threshold <= 0:
        raise BadInput(f"threshold must be a finite positive number, got {threshold}")
    return float(threshold)


SMOOTHING_FLOOR = 1e-5
"""SmoothQuant's floor on the weight abs-max and on the factors (its reference code's clamp)."""


def smoothing_factors(activation_absmax, weight_absmax, alpha: float):
    """s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), floored, and 1 where a channel never saw a value.

    Written with arithmetic operators only, so it runs on numpy arrays (the GUI's smoothed heatmap) and
    torch tensors (engine.quant.smoothing) alike and both compute the same factors.
    """
    weight = weight_absmax * (weight_absmax > SMOOTHING_FLOOR) + SMOOTHING_FLOOR * (weight_absmax <= SMOOTHING_FLOOR)
    scale = activation_absmax**alpha / weight ** (1.0 - alpha)
    scale = scale * (scale > SMOOTHING_FLOOR) + SMOOTHING_FLOOR * (scale <= SMOOTHING_FLOOR)
    seen = activation_absmax > 0
    return scale * seen + (1 - seen * 1)


def check_alpha(alpha: Any) -> float:
    """SmoothQuant's alpha is a number in [0, 1]; anything else is a clear error."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise BadInput(f"alpha must be a number from 0 to 1, got {alpha!r}")
    return float(alpha)


# --- export formats ---------------------------------------------------------------------------------
# An export format is one `ExportFormat` declaration (docs/architecture.md, "Adding a format"): which
# methods it carries follows from the building blocks it holds, and a refusal names the block it cannot
# hold. engine.checkpoint.layout stores each `layout`'s tensors; engine.checkpoint.export runs each `writer`.


_OUTLIER_COLUMNS = (
    "compressed-tensors has no place for LLM.int8()'s floating-point outlier columns (vLLM's int8 "
    "kernels quantize every column)"
)
_FORMATS: dict[str, ExportFormat] = {}

BITSANDBYTES = register_format(ExportFormat(
    "bitsandbytes", "safetensors, bitsandbytes 8-bit layout",
    "transformers + bitsandbytes; the workbench re-opens it",
    holds={"weight_scale": ("tensor", "row")},
    refusals={("weight_scale", "block"): "bitsandbytes stores one scale per row and Q8_0 one per block of 32 weights"},
    layout=SCB, reopens=True, takes_conv1d=True,
))  # fmt: skip
COMPRESSED_TENSORS = register_format(ExportFormat(
    "compressed-tensors", "safetensors, compressed-tensors (int-quantized)",
    "vLLM and llm-compressor; transformers decompresses it",
    holds={"outliers": ("none",), "activations": ("row", "float"), "weight_scale": ("row",)},
    refusals={
        ("outliers", "static"): _OUTLIER_COLUMNS,
        ("outliers", "dynamic"): _OUTLIER_COLUMNS,
        ("activations", "tensor"): "a method that quantizes activations with one scale per tensor could only be "
        "stored as a fixed calibrated scale, and a per-tensor activation scale is what destroys this model",
        ("weight_scale", "block"): "Q8_0's scales per block of 32 weights are llama.cpp's format",
    },
    layout=CHANNEL_SCALE, notes_fused_skips=True,
    no_float_weight="vLLM computes every weight of an INT8 Linear from its INT8 value and its row's scale",
))  # fmt: skip
GGUF_Q8_0 = register_format(ExportFormat(
    "gguf-q8_0", "GGUF, Q8_0", "llama.cpp and ollama; transformers reads it (gguf_file=)",
    holds={"weight_scale": ("block",), "activations": ("float",)},
    refusals={("weight_scale", "row"): "GGUF Q8_0 is written quantized from the floating-point weights in "
              "blocks of 32", ("weight_scale", "tensor"): "GGUF Q8_0 is written quantized from the "
              "floating-point weights in blocks of 32"},
    writer=GGUF, layer_by_layer=False,
    no_float_weight="llama.cpp computes every weight of a Q8_0 tensor from its INT8 value and its block's scale",
))  # fmt: skip


ALL_GPUS = "cuda:all"
"""The device that asks for the model spread over every visible GPU (accelerate's device_map="auto")."""

BF16_MIN_CAPABILITY = (8, 0)
"""bfloat16 is native from compute capability 8.0 (Ampere); older GPUs only emulate it, and the kernels'
bfloat16 conversion (`cvt.rn.bf16.f32`) does not compile for them."""

# --- where a model runs ----------------------------------------------------------------------------

OFFLOAD_MODES = ("auto", "none", "disk")
"""`none`: the whole model in memory; `disk`: one decoder layer at a time, read from disk (docs/architecture.md, the pipeline room);
`auto`: whichever the planner's estimate calls for against the compute device's free memory."""

OFFLOAD_LABELS = {"auto": "auto (by free memory)", "none": "in memory", "disk": "layer by layer from disk"}

# --- what feeds a Linear ----------------------------------------------------------------------------

KIND_ATTN_IN = "attn_in"
KIND_ATTN_OUT = "attn_out"
KIND_MLP_IN = "mlp_in"
KIND_MLP_DOWN = "mlp_down"
KIND_EXPERT_IN = "expert_in"
KIND_EXPERT_DOWN = "expert_down"
KIND_OTHER = "other"
KIND_ORDER = (KIND_ATTN_IN, KIND_ATTN_OUT, KIND_MLP_IN, KIND_MLP_DOWN, KIND_EXPERT_IN, KIND_EXPERT_DOWN, KIND_OTHER)
KIND_LABELS = {
    KIND_ATTN_IN: "attention input (q/k/v)",
    KIND_ATTN_OUT: "attention output (o)",
    KIND_MLP_IN: "MLP input (gate/up)",
    KIND_MLP_DOWN: "MLP down input",
    KIND_EXPERT_IN: "experts' input (gate/up)",
    KIND_EXPERT_DOWN: "experts' down input",
    KIND_OTHER: "other",
}
KIND_SHORT = {
    KIND_ATTN_IN: "attn in",
    KIND_ATTN_OUT: "attn out",
    KIND_MLP_IN: "MLP in",
    KIND_MLP_DOWN: "MLP down",
    KIND_EXPERT_IN: "experts in",
    KIND_EXPERT_DOWN: "experts down",
    KIND_OTHER: "other",
}
EXPERT_KINDS = (KIND_EXPERT_IN, KIND_EXPERT_DOWN)
"""Inputs that differ per expert: each expert sees only the tokens routed to it; a heatmap row aggregates them."""

FEW_EXPERT_TOKENS = 64
"""An expert that saw fewer calibration tokens than this has unreliable statistics (the GUI and the scan say so)."""

# --- what stayed in floating point, and why ------------------------------------------------------------

FLOAT_SKIPPED = "skipped"
FLOAT_ROUTER = "router"
FLOAT_UNSUPPORTED = "unsupported"
FLOAT_FORMAT = "format"
FLOAT_METHOD = "method"
FLOAT_REASONS = {
    FLOAT_SKIPPED: "skipped by the user",
    FLOAT_METHOD: "the method cannot hold it (q8_0 needs inputs in whole blocks of 32)",
    FLOAT_ROUTER: "router: it picks the experts, kept in floating point as peers keep it",
    FLOAT_UNSUPPORTED: "not supported",
    FLOAT_FORMAT: "the export format has no INT8 layout for it",
}
"""Why a matrix weight of the decoder stays in floating point, as every result states it."""

LOW_INT8_SHARE = 0.5
"""Under this share of the decoder's matrix weights in INT8, a result carries a warning."""

# --- sizes and cards ---------------------------------------------------------------------------------

MIB = 1024**2
GIB = 1024**3
FLOAT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
DTYPE_LABELS = {"float16": "FP16", "bfloat16": "BF16", "float32": "FP32"}

GPUS = {
    "A100-40GB": 40960 * MIB,
    "A100-80GB": 81920 * MIB,
    "H100-80GB": 81559 * MIB,
    "H200-141GB": 143771 * MIB,
}
"""Total memory of one card as the driver reports it (nvidia-smi "memory.total")."""

GPU_BANDWIDTH = {
    "A100-40GB": 1555e9,
    "A100-80GB": 2039e9,
    "H100-80GB": 3350e9,
    "H200-141GB": 4800e9,
}
"""Published memory bandwidth of one card (SXM form factor), bytes per second: what bounds decoding."""

GPU_PEAK_OPS = {
    "A100-40GB": {"float16": 312e12, "bfloat16": 312e12, "float32": 19.5e12, "int8": 624e12},
    "A100-80GB": {"float16": 312e12, "bfloat16": 312e12, "float32": 19.5e12, "int8": 624e12},
    "H100-80GB": {"float16": 989e12, "bfloat16": 989e12, "float32": 67e12, "int8": 1979e12},
    "H200-141GB": {"float16": 989e12, "bfloat16": 989e12, "float32": 67e12, "int8": 1979e12},
}
"""Published dense peak of one card (SXM) per operand type, operations per second: tensor cores for
16-bit floats and INT8 (without sparsity), the plain FP32 units for float32 (torch's default matmul)."""

RESULT_GPUS = ("A100-40GB", "A100-80GB")
"""The cards the results table counts GPUs for (LLM.int8()'s own comparison)."""

SUGGESTED_TASKS = ("winogrande", "hellaswag", "piqa", "lambada_openai")
"""lm-evaluation-harness tasks suggested for task accuracy (engine.measure.tasks): the LLM.int8() paper's zero-shot four."""

# --- the scan's histogram ------------------------------------------------------------------------------

HIST_LOG10_MIN, HIST_LOG10_MAX, HIST_BINS = -4.0, 5.0, 90
"""log10|x| histogram of every Linear input value: fixed edges, so layers and batches add up."""
