"""The memory planner: the bytes of every term (weights in each format, KV cache, activation workspace), shown.

A plan is arithmetic over a few numbers, so a user can check it by hand and see
why the answer is 4 and not 3:

    per GPU:   budget    = usable_fraction x capacity - runtime overhead - activation workspace
    in total:  state     = weight bytes (of the format) + KV cache (batch x context)
    GPUs     = the number of cards that hold the state when whole decoder layers are placed
               one after another (accelerate's sequential `device_map`); `needed_if_divisible`
               is ceil(state / budget), the count if layers could be cut anywhere.

Weight bytes follow the engine's real storage (engine.quant.schemes), from each method's building
blocks (engine.vocabulary's `Method`): `weight_int8` int8 (out, in), `weight_scale` float32 per row
(one 0-d float32 for a per-tensor scale, one float16 per 32 weights for Q8_0 blocks), and for static
outliers (`llm-int8`) the outlier columns as int64 indices plus an (out, n) floating-point weight slice. Biases,
embeddings, norms and `lm_head` stay floating point. The KV cache and activations stay in the float
dtype for every method. The activation workspace is an estimate of the transient tensors at the
peak of one forward pass over batch x context tokens (see `workspace_terms`).

A mixture-of-experts model holds every expert in memory whichever a token is routed to, so the
weights of all experts are counted (each expert a Linear of its own); `active_parameters` is the
smaller count one token uses.

The architecture numbers come from a preset, a `config.json` (engine.planning.presets) or a loaded
model; everything here is pure functions over the dataclasses below. How many cards hold it: engine.planning.gpus.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from int8wb.engine.errors import BadInput
from int8wb.engine.registry import LiveNames
from int8wb.engine.vocabulary import (
    BASELINE,
    FLOAT_BYTES,
    GIB,
    METHODS,
    Q8_0_BLOCK,
    method_of,
)

PLAN_METHODS = LiveNames(lambda: (BASELINE, *METHODS))
"""The baseline and every method (registered ones included)."""

DEFAULT_USABLE_FRACTION = 0.9  # margin for allocator fragmentation and what the estimate misses
DEFAULT_OVERHEAD_BYTES = 1 * GIB  # CUDA context, cuBLAS workspace, NCCL buffers: assumed, per GPU
DEFAULT_OUTLIER_FRACTION = 0.005  # "the top 0.5% of feature dimensions": the threshold as a fraction
# The largest plan: 16M tokens is past any model's context today, 65,536 sequences past any serving batch.
MAX_CONTEXT = 1 << 24
MAX_BATCH = 1 << 16


@dataclass(frozen=True)
class Architecture:
    """The numbers of a decoder-only transformer that set its KV cache and activations."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int  # < num_heads with grouped-query attention
    head_dim: int
    intermediate_size: int
    vocab_size: int
    gated_mlp: bool = True  # gate/up/down (Llama) rather than fc1/fc2 (OPT, BLOOM)
    tie_word_embeddings: bool = False
    max_positions: int | None = None  # the context it was trained for, if the config says
    num_experts: int = 0  # experts per mixture-of-experts layer (0: a dense model)
    experts_per_token: int = 0  # experts each token is routed to


@dataclass(frozen=True)
class LinearShape:
    """One Linear layer that the engine quantizes (every nn.Linear but lm_head)."""

    name: str
    out_features: int
    in_features: int
    bias: bool
    layer: int | None  # decoder layer index, None outside the stack
    outlier_cols: int | None = None  # the real count on a quantized model; else from the fraction
    expert: int | None = None  # the expert it belongs to in a mixture-of-experts layer

    @property
    def parameters(self) -> int:
        return self.out_features * self.in_features + (self.out_features if self.bias else 0)


@dataclass(frozen=True)
class WeightInventory:
    """Every weight of a model: the quantizable Linears, and floating-point elements by placement."""

    linears: tuple[LinearShape, ...]
    float_elements_per_layer: tuple[int, ...]  # norms (and anything else not a Linear) per layer
    float_elements_first: int  # embeddings, learned positions: placed on the first GPU
    float_elements_last: int  # final norm, untied lm_head: placed on the last GPU

    @property
    def parameters(self) -> int:
        linear = sum(s.parameters for s in self.linears)
        return linear + sum(self.float_elements_per_layer) + self.float_elements_first + self.float_elements_last

    @functools.cached_property
    def widest(self) -> tuple[int, int, int]:
        """(largest in_features, largest out_features, largest weight) over the Linears; zeros without any."""
        if not self.linears:
            return 0, 0, 0
        return (
            max(s.in_features for s in self.linears),
            max(s.out_features for s in self.linears),
            max(s.out_features * s.in_features for s in self.linears),
        )


def active_parameters(arch: Architecture, inventory: WeightInventory) -> int:
    """Parameters one token uses: all but the experts it is not routed to (every expert is still in memory)."""
    if not arch.num_experts:
        return inventory.parameters
    experts = sum(s.parameters for s in inventory.linears if s.expert is not None)
    return inventory.parameters - experts + experts * arch.experts_per_token // arch.num_experts


@dataclass(frozen=True)
class Settings:
    """What the plan is for: batch x context, float dtype, outliers, and how full a card may get."""

    context: int = 4096
    batch: int = 1
    dtype: str = "float16"
    outlier_fraction: float = DEFAULT_OUTLIER_FRACTION
    usable_fraction: float = DEFAULT_USABLE_FRACTION
    overhead_bytes: int = DEFAULT_OVERHEAD_BYTES
    attention: str = "sdpa"  # "eager" materializes the (T, T) scores
    logits: str = "last"  # "all" positions (evaluation) or the "last" one (generation)
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def float_bytes(self) -> int:
        return FLOAT_BYTES[self.dtype]


def check_settings(settings: Settings) -> Settings:
    """Raise BadInput for a setting no plan can be made with."""
    for name, largest, unit in (("context", MAX_CONTEXT, "tokens"), ("batch", MAX_BATCH, "sequences")):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInput(f"{name} must be a whole number of at least 1, got {value!r}")
        if value > largest:
            raise BadInput(
                f"{name} {value:,} is beyond any real model or server: a plan takes at most {largest:,} {unit}"
            )
    if settings.dtype not in FLOAT_BYTES:
        raise BadInput(f"unknown dtype {settings.dtype!r}; use one of {', '.join(FLOAT_BYTES)}")
    if not 0.0 <= settings.outlier_fraction <= 1.0:
        raise BadInput(f"outlier fraction must be between 0 and 1, got {settings.outlier_fraction!r}")
    if not 0.0 < settings.usable_fraction <= 1.0:
        raise BadInput(f"usable fraction must be in (0, 1], got {settings.usable_fraction!r}")
    if settings.overhead_bytes < 0:
        raise BadInput(f"runtime overhead cannot be negative, got {settings.overhead_bytes!r} bytes")
    if settings.attention not in ("sdpa", "eager"):
        raise BadInput(f"attention must be 'sdpa' or 'eager', got {settings.attention!r}")
    if settings.logits not in ("last", "all"):
        raise BadInput(f"logits must be 'last' or 'all', got {settings.logits!r}")
    return settings


def check_method(method: str) -> str:
    if method not in PLAN_METHODS:
        raise BadInput(f"unknown method {method!r}; use one of {', '.join(PLAN_METHODS)}")
    return method


# --- weights ------------------------------------------------------------------------------------


def outlier_count(shape: LinearShape, outlier_fraction: float) -> int:
    """Outlier columns kept in floating point: the real count if known, else ceil(fraction x in)."""
    if shape.outlier_cols is not None:
        return shape.outlier_cols
    return math.ceil(outlier_fraction * shape.in_features - 1e-9)


def linear_terms(shape: LinearShape, method: str, float_bytes: int, outlier_fraction: float) -> dict[str, int]:
    """Bytes of one Linear's tensors in a format, by tensor (see the module docstring for the layout)."""
    out_f, in_f = shape.out_features, shape.in_features
    terms = {"bias": out_f * float_bytes if shape.bias else 0}
    if method == BASELINE:
        terms["float weight"] = out_f * in_f * float_bytes
        return terms
    declared = method_of(method)
    if declared.weight_scale == "block":
        if in_f % Q8_0_BLOCK:  # not whole blocks: the Linear stays in floating point
            terms["float weight"] = out_f * in_f * float_bytes
            return terms
        terms["int8 weight"] = out_f * in_f
        terms["scales"] = 2 * out_f * (in_f // Q8_0_BLOCK)  # one float16 per block
        return terms
    terms["int8 weight"] = out_f * in_f
    terms["scales"] = 4 if declared.weight_scale == "tensor" else 4 * out_f  # float32: one, or one per row
    if declared.outliers == "static":
        n = outlier_count(shape, outlier_fraction)
        terms["outlier indices"] = 8 * n
        terms["outlier weight"] = out_f * n * float_bytes
    return terms


def weight_terms(inventory: WeightInventory, method: str, settings: Settings) -> dict[str, int]:
    """Bytes of all weights in a format, summed by kind of tensor."""
    check_method(method)
    fb = settings.float_bytes
    totals: dict[str, int] = {}
    for shape in inventory.linears:
        for key, value in linear_terms(shape, method, fb, settings.outlier_fraction).items():
            totals[key] = totals.get(key, 0) + value
    floats = sum(inventory.float_elements_per_layer) + inventory.float_elements_first + inventory.float_elements_last
    totals["float (not quantized)"] = floats * fb
    return {key: value for key, value in totals.items() if value}


def weight_bytes(inventory: WeightInventory, method: str, settings: Settings) -> int:
    return sum(weight_terms(inventory, method, settings).values())


def layer_weight_bytes(inventory: WeightInventory, method: str, settings: Settings) -> list[int]:
    """Weight bytes of each decoder layer, for placing whole layers on cards."""
    fb = settings.float_bytes
    per_layer = [count * fb for count in inventory.float_elements_per_layer]
    for shape in inventory.linears:
        if shape.layer is not None:
            per_layer[shape.layer] += sum(linear_terms(shape, method, fb, settings.outlier_fraction).values())
    return per_layer


# --- KV cache and activations ---------------------------------------------------------------------


def kv_cache_bytes(arch: Architecture, settings: Settings) -> int:
    """K and V for every layer and token: 2 x layers x batch x context x kv_heads x head_dim x bytes."""
    return (
        2
        * arch.num_layers
        * settings.batch
        * settings.context
        * arch.num_kv_heads
        * arch.head_dim
        * settings.float_bytes
    )


def workspace_terms(arch: Architecture, inventory: WeightInventory, method: str, settings: Settings) -> dict[str, int]:
    """Transient tensors at the peak of one forward pass over batch x context tokens, in bytes.

    residual:  the layer's input and output hidden states, 2 x B x T x hidden
    block:     the larger of the attention block (q, k, v, attention output, and with eager
               attention the scores and their softmax, 2 x B x heads x T x T), the MLP block
               (gate, up and their product: 3 x B x T x intermediate; 2 x for fc1/fc2 MLPs)
               and the logits (B x T_logits x vocab, T_logits = 1 for "last")
    int8:      W8A8 methods quantize the widest Linear input to int8 and accumulate in int32:
               B x T x max_in x 1 + B x T x max_out x 4
    outliers:  llm-int8-dynamic dequantizes the weight columns of the outliers it finds in a
               call: max_out x ceil(outlier_fraction x max_in) in the float dtype
    dequant:   weight-only and q8_0 dequantize the largest weight to the float dtype before its matmul
    """
    check_method(method)
    fb, tokens = settings.float_bytes, settings.batch * settings.context
    attention = tokens * (2 * arch.num_heads + 2 * arch.num_kv_heads) * arch.head_dim * fb
    if settings.attention == "eager":
        attention += 2 * settings.batch * arch.num_heads * settings.context**2 * fb
    mlp = (3 if arch.gated_mlp else 2) * tokens * arch.intermediate_size * fb
    logit_positions = settings.context if settings.logits == "all" else 1
    logits = settings.batch * logit_positions * arch.vocab_size * fb
    terms = {"residual": 2 * tokens * arch.hidden_size * fb, "block": max(attention, mlp, logits)}
    max_in, max_out, max_weight = inventory.widest
    declared = None if method == BASELINE or not inventory.linears else method_of(method)
    if declared and declared.w8a8:
        terms["int8"] = tokens * max_in + tokens * max_out * 4
        if declared.outliers == "dynamic":
            terms["outliers"] = max_out * math.ceil(settings.outlier_fraction * max_in - 1e-9) * fb
    if declared and not declared.w8a8:
        terms["dequant"] = max_weight * fb
    return terms
