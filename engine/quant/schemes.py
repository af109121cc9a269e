"""What each quantization method stores for a Linear and how it treats the Linear's input, declared once.

A `Scheme` is a small declarative object in the manner of optimum-quanto's and
torchao's quantized tensors: it names the tensor fields an `Int8Linear` holds
(`tensor_data_names`), their dtypes and shapes, and the three choices that make
the methods differ (README, "Methods"; docs/architecture.md, "Adding a method"):

- `weight_scale`: one abs-max for the whole weight ("tensor", 0-d), one per
  output row ("row", (out,)), or llama.cpp's Q8_0 blocks ("block": one float16
  scale per 32 weights of a row, (out, in / 32));
- `activations`: left in floating point ("float"), or quantized to INT8 with one
  scale per call ("tensor") or per token ("row");
- `outliers`: none, "static" (columns from the scan, their weight columns kept
  in floating point) or "dynamic" (columns over the threshold, found per call);
- `smoothed`: the model is smoothed first (SmoothQuant, engine.quant.smoothing):
  the Linear itself is stored and run as its other fields say.

`Int8Linear` builds its buffers and picks its forward path from these fields and
the checkpoint layouts (engine.checkpoint.layout) derive the stored tensors from
them. The choices are a method's building blocks, declared with the method in engine.vocabulary
(a `Method`); a scheme is built from that declaration, so a method made of existing blocks is declared
there alone (docs/architecture.md, "Adding a method").
Shapes are written with the symbols "out", "in", "blocks" and "outliers"; the dtype
"compute" is the floating-point dtype of the model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from int8wb.engine.registry import LiveTable
from int8wb.engine.vocabulary import METHODS, Q8_0_BLOCK, Method, method_of


@dataclass(frozen=True)
class TensorField:
    """One tensor an Int8Linear holds: attribute name, dtype, and shape in symbols."""

    name: str
    dtype: str  # a torch dtype name, or "compute"
    shape: tuple[str, ...]


WEIGHT_FIELD = TensorField("weight_int8", "int8", ("out", "in"))
SCALE_FIELDS = {
    "tensor": TensorField("weight_scale", "float32", ()),
    "row": TensorField("weight_scale", "float32", ("out",)),
    "block": TensorField("weight_scale", "float16", ("out", "blocks")),
}
STATIC_OUTLIER_FIELDS = (
    TensorField("outlier_cols", "int64", ("outliers",)),
    TensorField("outlier_weight", "compute", ("out", "outliers")),
)


@dataclass(frozen=True)
class Scheme:
    """One method's storage and input handling (see the module docstring for the values)."""

    method: str
    weight_scale: str
    activations: str
    outliers: str = "none"
    smoothed: bool = False

    @property
    def fields(self) -> tuple[TensorField, ...]:
        """The tensor fields of a Linear quantized with this method, bias aside."""
        extra = STATIC_OUTLIER_FIELDS if self.outliers == "static" else ()
        return (WEIGHT_FIELD, SCALE_FIELDS[self.weight_scale], *extra)

    @property
    def tensor_data_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def needs_scan(self) -> bool:
        """Whether the method takes something from a calibration scan (outlier columns, activation abs-max)."""
        return method_of(self.method).needs_scan

    def fits(self, in_features: int) -> bool:
        """Whether a Linear with `in_features` inputs can be stored this way (Q8_0 needs whole blocks)."""
        return self.weight_scale != "block" or in_features % Q8_0_BLOCK == 0

    def quantize_weight(self, weight):
        """(int8 (out, in), abs-max scale) of a floating-point weight (out, in)."""
        from int8wb.kernels import ops

        if self.weight_scale == "block":
            return ops.quantize_blocks(weight, Q8_0_BLOCK)
        quantize = ops.quantize_tensor if self.weight_scale == "tensor" else ops.quantize_rowwise
        return quantize(weight)

    def dequantize_weight(self, weight_int8, weight_scale, dtype):
        """The floating-point weight (out, in) that the INT8 weight and its scales stand for."""
        from int8wb.kernels import ops

        if self.weight_scale == "block":
            return ops.dequantize_blocks(weight_int8, weight_scale, dtype)
        return ops.dequantize_rowwise(weight_int8, weight_scale, dtype)

    def steps_at(self, weight_scale, rows, cols):
        """The value one INT8 level stands for at each weight (rows[k], cols[k]): what a weight held out of
        the scales (a kept super weight, engine.quant.int8_linear) is measured in where it is stored."""
        from int8wb.kernels.reference import INT8_MAX

        if self.weight_scale == "block":
            return weight_scale[rows, cols // Q8_0_BLOCK].float()
        scale = weight_scale.float()
        return (scale.expand(len(rows)) if scale.dim() == 0 else scale[rows]) / INT8_MAX

    def empty_fields(self, out_features: int, in_features: int, n_outliers: int, compute_dtype, device) -> dict:
        """Uninitialised tensors of every field (on the meta device: the layout without the data)."""
        import torch

        sizes = {"out": out_features, "in": in_features, "blocks": in_features // Q8_0_BLOCK, "outliers": n_outliers}
        return {
            f.name: torch.empty(
                tuple(sizes[s] for s in f.shape),
                dtype=compute_dtype if f.dtype == "compute" else getattr(torch, f.dtype),
                device=device,
            )
            for f in self.fields
        }


@functools.cache
def _scheme(method: Method) -> Scheme:
    return Scheme(method.name, method.weight_scale, method.activations, method.outliers, method.smoothed)


def scheme_of(method: str) -> Scheme:
    """The scheme of `method`; an unknown name is a ValueError (callers validate user input first)."""
    return _scheme(method_of(method))


SCHEMES = LiveTable(lambda: {name: scheme_of(name) for name in METHODS})
"""Every method's scheme, in the methods' order."""
