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


# --- devices ---------------------------------------------------------------------------------------

ALL_GPUS = "cuda:all"
"""The device that asks for the model spread over every visible GPU (accelerate's device_map="auto")."""

BF16_MIN_CAPABILITY = (8, 0)
"""bfloat16 is native from compute capability 8.0 (Ampere); older GPUs only emulate it, and the kernels'
bfloat16 conversion (`cvt.rn.bf16.f32`) does not compile for them."""


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
