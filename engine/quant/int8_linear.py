"""`Int8Linear`: a drop-in replacement for `nn.Linear` with real INT8 weight storage.

One module covers every method (resources/methods.toml declares them); they differ in how the weight is
scaled and how the activations are handled:

| method           | weights            | activations                 | outlier columns              |
|------------------|--------------------|-----------------------------|------------------------------|
| absmax-tensor    | one scale          | one scale per call          | none                         |
| vectorwise       | one scale per row  | one scale per token         | none                         |
| llm-int8         | one scale per row  | one scale per token         | static: from the scan, with  |
|                  |                    |                             | the weight columns kept in   |
|                  |                    |                             | true floating point          |
| llm-int8-dynamic | one scale per row  | one scale per token         | detected per call (|x| over  |
|                  |                    |                             | threshold), weight columns   |
|                  |                    |                             | dequantized from INT8, as    |
|                  |                    |                             | bitsandbytes does            |
| weight-only      | one scale per row  | floating point              | n/a                          |
| smoothquant      | one scale per row  | one scale per token         | none: the model is smoothed  |
|                  |                    |                             | first (engine.quant.smoothing)|
| q8_0             | one float16 scale  | floating point              | n/a                          |
|                  | per 32 weights     |                             |                              |

The tensors (buffers, so that `state_dict` holds exactly what is stored) and
the forward path come from the method's `Scheme` (engine.quant.schemes):
`weight_int8` int8 (out, in), `weight_scale` float32 (out,) or 0-d (float16 (out, in / 32) for q8_0),
`outlier_cols` int64 (n,) and `outlier_weight` (out, n) for static llm-int8,
`bias` when the original had one. The INT8 x INT8 product accumulates in INT32.

Kept super weights (engine.measure.super_weight), for any method: `super_weight_index` int64 (n, 2) of
(row, col) and `super_weight` (n,) in the compute dtype. Each is held out of the weight's scales (so
the rest of its row, block or tensor is quantized finer), its INT8 entry holds it clipped to what the
scale reaches (what a loader that ignores the kept weights reads), and the forward adds the rest of
its product in floating point: y[:, row] += x[:, col] * (w - the clipped value).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from int8wb.engine.model.layers import weight_matrix
from int8wb.engine.quant.schemes import scheme_of
from int8wb.engine.vocabulary import DEFAULT_THRESHOLD
from int8wb.kernels import cpu_gemv, ops


class Int8Linear(nn.Module):
    def __init__(
        self,
        method: str,
        weight_int8: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        compute_dtype: torch.dtype,
        threshold: float = DEFAULT_THRESHOLD,
        outlier_cols: torch.Tensor | None = None,
        outlier_weight: torch.Tensor | None = None,
        super_weight_index: torch.Tensor | None = None,
        super_weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.scheme = scheme_of(method)
        self.method = method
        self.out_features, self.in_features = weight_int8.shape
        self.compute_dtype = compute_dtype
        self.threshold = threshold
        self.source_type: type = nn.Linear  # the class it stands in for (nn.Linear, Conv1D, FalconLinear, ...)
        given = {
            "weight_int8": weight_int8,
            "weight_scale": weight_scale,
            "outlier_cols": outlier_cols,
            "outlier_weight": outlier_weight,
        }
        for name in self.scheme.tensor_data_names:
            self.register_buffer(name, given[name])
        self.register_buffer("bias", bias)
        self.register_buffer("super_weight_index", None)
        self.register_buffer("super_weight", None)
        self.register_buffer("super_weight_rest", None, persistent=False)
        if super_weight_index is not None and super_weight_index.numel():
            self.super_weight_index = super_weight_index.to(torch.long).reshape(-1, 2)
            self.super_weight = super_weight.to(compute_dtype).reshape(-1)
            self.super_weight_rest = self._rest_of_super_weights()

    def _rest_of_super_weights(self) -> torch.Tensor:
        """(n,) float32: each kept super weight less what its INT8 entry already computes."""
        rows, cols = self.super_weight_index[:, 0], self.super_weight_index[:, 1]
        stored = self.weight_int8[rows, cols].float() * self.scheme.steps_at(self.weight_scale, rows, cols)
        return self.super_weight.float() - stored

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        method: str,
        threshold: float = DEFAULT_THRESHOLD,
        outlier_cols: torch.Tensor | None = None,
        super_weights: list[tuple[int, int]] | None = None,
    ) -> Int8Linear:
        """Quantize `linear` (an nn.Linear or a Conv1D) for `method`; static llm-int8 needs the outlier columns.

        `super_weights`: (row, col) of weights to keep in floating point (see the module docstring)."""
        bias = None if linear.bias is None else linear.bias.detach()
        weight = weight_matrix(linear).detach()
        int8 = cls.from_weight(weight, bias, method, threshold, outlier_cols, super_weights=super_weights)
        int8.source_type = type(linear)
        return int8

    @classmethod
    def from_weight(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        method: str,
        threshold: float = DEFAULT_THRESHOLD,
        outlier_cols: torch.Tensor | None = None,
        quantized_weight: tuple[torch.Tensor, torch.Tensor] | None = None,
        super_weights: list[tuple[int, int]] | None = None,
    ) -> Int8Linear:
        """Quantize a floating-point weight (out, in) and keep a copy of `bias`.

        `quantized_weight`: the (INT8 weight, scale) that the method's scheme already made of `weight`.
        `super_weights`: (row, col) of weights kept in floating point; static llm-int8 needs none of those
        in its outlier columns, which it keeps in floating point already.
        """
        scheme = scheme_of(method)
        bias = None if bias is None else bias.clone()
        outlier_weight = None
        if scheme.outliers == "static":
            outlier_cols = outlier_cols.to(device=weight.device, dtype=torch.long)
            outlier_weight = weight.index_select(1, outlier_cols).clone()  # (out, n), true floating point
            super_weights = [(r, c) for r, c in super_weights or () if c not in set(outlier_cols.tolist())]
        if not super_weights:
            weight_int8, weight_scale = quantized_weight or scheme.quantize_weight(weight)
            return cls(method, weight_int8, weight_scale, bias, weight.dtype, threshold, outlier_cols, outlier_weight)
        index = torch.tensor(super_weights, dtype=torch.long, device=weight.device)  # (n, 2)
        rows, cols = index[:, 0], index[:, 1]
        values = weight[rows, cols].clone()
        held_out = weight.clone()
        held_out[rows, cols] = 0
        weight_int8, weight_scale = scheme.quantize_weight(held_out)
        clipped = torch.round(values.float() / scheme.steps_at(weight_scale, rows, cols)).clamp(-127, 127)
        weight_int8[rows, cols] = clipped.nan_to_num(0.0).to(torch.int8)  # a zero scale (all else zero) stores 0
        return cls(
            method,
            weight_int8,
            weight_scale,
            bias,
            weight.dtype,
            threshold,
            outlier_cols,
            outlier_weight,
            index,
            values,
        )

    @classmethod
    def empty(cls, method: str, out_features: int, in_features: int, has_bias: bool, compute_dtype, device="meta"):
        """A layer with the shapes and dtypes of `method` and no data (the layout of a Linear not yet read)."""
        scheme = scheme_of(method)
        fields = scheme.empty_fields(out_features, in_features, 0, compute_dtype, device)
        bias = torch.empty(out_features, dtype=compute_dtype, device=device) if has_bias else None
        return cls(method, bias=bias, compute_dtype=compute_dtype, **fields)

    def extra_repr(self) -> str:
        extra = f", outlier_cols={self.outlier_cols.numel()}" if self.scheme.outliers == "static" else ""
        extra += f", super_weights={len(self.super_weight_index)}" if self.super_weight_index is not None else ""
        return f"{self.in_features}, {self.out_features}, method={self.method}{extra}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (T, in)
        prepared = self._prepared_small_batch()
        y = None if prepared is None else prepared(x2)  # a few tokens on the CPU: one call, no dispatch
        if y is None:
            y = self._forward_ops(x2)
        if self.super_weight_index is not None:
            rest = x2.index_select(1, self.super_weight_index[:, 1]).float() * self.super_weight_rest  # (T, n)
            y = y.index_add(1, self.super_weight_index[:, 0], rest.to(y.dtype))
        return y.reshape(*leading, self.out_features)

    def _forward_ops(self, x2: torch.Tensor) -> torch.Tensor:
        """The method's product through the ops registry, on any device and for any number of tokens."""
        if self.scheme.activations == "float":
            return ops.weight_only_linear(x2, self.weight_int8, self.weight_scale, self.bias)
        if self.scheme.outliers == "none":
            per_tensor = self.scheme.activations == "tensor"
            return ops.int8_linear(x2, self.weight_int8, self.weight_scale, self.bias, per_tensor=per_tensor)
        return self._forward_with_outliers(x2)

    def _prepared_small_batch(self) -> cpu_gemv.PreparedLayer | None:
        """This layer's arguments to the small-batch CPU kernels, kept while its tensors stay the same;
        None where they do not apply (dynamic outlier columns, tensors off the CPU or in other dtypes)."""
        if self.scheme.outliers == "dynamic":
            return None
        buffers = self._buffers
        tensors = (buffers["weight_int8"], buffers["weight_scale"], buffers["bias"])
        outliers = (buffers["outlier_cols"], buffers["outlier_weight"]) if self.scheme.outliers == "static" else ()
        prepared = self.__dict__.get("_small_batch")
        if prepared is not None and prepared.serves(*tensors, *outliers):
            return prepared
        prepared = None
        if cpu_gemv.PreparedLayer.usable(*tensors):
            prepared = cpu_gemv.PreparedLayer(*tensors, self.scheme.activations, *outliers)
        self.__dict__["_small_batch"] = prepared
        return prepared

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The floating-point weight (out, in) that the INT8 weight and its scales stand for."""
        return self.scheme.dequantize_weight(self.weight_int8, self.weight_scale, dtype)

    def float_weight(self) -> torch.Tensor:
        """The weight (out, in) this layer computes with, for a format that must hold it in floating point:
        dequantized, and for static llm-int8 with its outlier columns as it keeps them, in true floating point."""
        weight = self.dequantized_weight(self.compute_dtype)
        if self.scheme.outliers == "static" and self.outlier_cols.numel():
            weight[:, self.outlier_cols] = self.outlier_weight.to(weight.dtype)
        if self.super_weight_index is not None:
            weight[self.super_weight_index[:, 0], self.super_weight_index[:, 1]] = self.super_weight.to(weight.dtype)
        return weight

    def _forward_with_outliers(self, x2: torch.Tensor) -> torch.Tensor:
        """LLM.int8(): outlier feature columns in floating point, the rest in INT8."""
        if self.scheme.outliers == "static":
            cols, outlier_weight = self.outlier_cols, self.outlier_weight
        else:
            cols = ops.outlier_columns(x2, self.threshold)  # (n,)
            outlier_weight = ops.dequantize_rowwise(self.weight_int8.index_select(1, cols), self.weight_scale, x2.dtype)
        return ops.int8_linear(x2, self.weight_int8, self.weight_scale, self.bias, cols, outlier_weight)
