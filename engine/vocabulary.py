"""The words both processes use: methods, Linear input kinds, float sizes, GPU cards, histogram edges.

Part of the contract between the GUI and the engine, like `engine.protocol`: pure Python, no
numpy, no torch, so `app/` may import it. Each fact is defined here once; the engine's
quantizers, planner and CLI and the GUI's views all read it from here.
"""

from __future__ import annotations

import math
from typing import Any

from engine.errors import BadInput

# --- quantization methods -------------------------------------------------------------------------

BASELINE = "baseline"
METHODS = ("absmax-tensor", "vectorwise", "llm-int8", "llm-int8-dynamic", "weight-only")
"""Every quantization method, in the order tables show them (DESIGN.md, "Quantization methods")."""

METHOD_LABELS = {
    BASELINE: "floating point (baseline)",
    "absmax-tensor": "absmax per tensor (naive W8A8)",
    "vectorwise": "vector-wise W8A8",
    "llm-int8": "LLM.int8() static (outliers from the scan)",
    "llm-int8-dynamic": "LLM.int8() dynamic (outliers per batch)",
    "weight-only": "weight-only INT8",
}
"""What a person reads for each method (tables, check boxes, plans)."""

METHOD_SHORT_LABELS = {
    BASELINE: "floating point",
    "absmax-tensor": "naive INT8",
    "vectorwise": "vector-wise INT8",
    "llm-int8": "LLM.int8()",
    "llm-int8-dynamic": "LLM.int8() with outliers per batch",
    "weight-only": "weight-only INT8",
}
"""Each method as a sentence names it ("naive INT8 raised perplexity by ...")."""

METHOD_DESCRIPTIONS = {
    BASELINE: "The model as loaded, in floating point: the perplexity every method is compared with.",
    "absmax-tensor": "One scale for a whole weight matrix and one for each activation tensor. A single outlier "
    "dimension stretches the scale, so every other value gets only a few of INT8's 255 levels.",
    "vectorwise": "One scale per weight row and one per token: a large value only coarsens its own row or token, "
    "but outlier dimensions still coarsen every token they appear in.",
    "llm-int8": "LLM.int8(): the input dimensions over the threshold in the calibration scan stay in floating "
    "point (with their weight columns); everything else is vector-wise INT8.",
    "llm-int8-dynamic": "LLM.int8() as bitsandbytes runs it: the columns over the threshold are found in each "
    "batch, and their weight columns are dequantized from INT8 on the fly. Needs no scan.",
    "weight-only": "Weights in INT8 (one scale per row), activations left in floating point: saves memory "
    "without any INT8 arithmetic.",
}
"""What each method does, in a sentence or two (tooltips, the explanation panel)."""

W8A8_METHODS = ("absmax-tensor", "vectorwise", "llm-int8", "llm-int8-dynamic")
"""The methods whose activations are quantized to INT8 too (an INT8 x INT8 product)."""

NEEDS_SCAN = ("llm-int8",)
"""The methods that take their outlier columns from a calibration scan."""

DEFAULT_THRESHOLD = 6.0
"""LLM.int8()'s outlier threshold on |x|."""


def check_threshold(threshold: Any) -> float:
    """A threshold is a finite positive number; anything else is a clear error."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise BadInput(f"threshold must be a number, got {threshold!r}")
    if not math.isfinite(threshold) or threshold <= 0:
        raise BadInput(f"threshold must be a finite positive number, got {threshold}")
    return float(threshold)


# --- what feeds a Linear ----------------------------------------------------------------------------

KIND_ATTN_IN = "attn_in"
KIND_ATTN_OUT = "attn_out"
KIND_MLP_IN = "mlp_in"
KIND_MLP_DOWN = "mlp_down"
KIND_OTHER = "other"
KIND_ORDER = (KIND_ATTN_IN, KIND_ATTN_OUT, KIND_MLP_IN, KIND_MLP_DOWN, KIND_OTHER)
KIND_LABELS = {
    KIND_ATTN_IN: "attention input (q/k/v)",
    KIND_ATTN_OUT: "attention output (o)",
    KIND_MLP_IN: "MLP input (gate/up)",
    KIND_MLP_DOWN: "MLP down input",
    KIND_OTHER: "other",
}
KIND_SHORT = {
    KIND_ATTN_IN: "attn in",
    KIND_ATTN_OUT: "attn out",
    KIND_MLP_IN: "MLP in",
    KIND_MLP_DOWN: "MLP down",
    KIND_OTHER: "other",
}

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

RESULT_GPUS = ("A100-40GB", "A100-80GB")
"""The cards the results table counts GPUs for (LLM.int8()'s own comparison)."""

# --- the scan's histogram ------------------------------------------------------------------------------

HIST_LOG10_MIN, HIST_LOG10_MAX, HIST_BINS = -4.0, 5.0, 90
"""log10|x| histogram of every Linear input value: fixed edges, so layers and batches add up."""
