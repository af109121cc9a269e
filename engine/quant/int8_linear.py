"""`Int8Linear`: a drop-in replacement for `nn.Linear` with real INT8 weight storage.

One module covers the four methods of DESIGN.md; they differ in how the
activations are handled:

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

Tensors (buffers, so that `state_dict` holds exactly what is stored):
`weight_int8` int8 (out, in), `weight_scale` float32 (out,) or 0-d,
`outlier_cols` int64 (n,) and `outlier_weight` (out, n) for static llm-int8,
`bias` when the original had one. The INT8 x INT8 product accumulates in INT32.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from engine.vocabulary import DEFAULT_THRESHOLD, METHODS
from kernels import ops


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
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}")
        self.method = method
        self.out_features, self.in_features = weight_int8.shape
        self.compute_dtype = compute_dtype
        self.threshold = threshold
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)
        if method == "llm-int8":
            self.register_buffer("outlier_cols", outlier_cols)
            self.register_buffer("outlier_weight", outlier_weight)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        method: str,
        threshold: float = DEFAULT_THRESHOLD,
        outlier_cols: torch.Tensor | None = None,
    ) -> Int8Linear:
        """Quantize `linear`'s weight for `method`; static llm-int8 needs the outlier columns."""
        weight = linear.weight.detach()  # (out, in)
        if method == "absmax-tensor":
            weight_int8, weight_scale = ops.quantize_tensor(weight)
        else:
            weight_int8, weight_scale = ops.quantize_rowwise(weight)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        outlier_weight = None
        if method == "llm-int8":
            outlier_cols = outlier_cols.to(device=weight.device, dtype=torch.long)
            outlier_weight = weight.index_select(1, outlier_cols).clone()  # (out, n), true floating point
        return cls(method, weight_int8, weight_scale, bias, weight.dtype, threshold, outlier_cols, outlier_weight)

    def extra_repr(self) -> str:
        extra = f", outlier_cols={self.outlier_cols.numel()}" if self.method == "llm-int8" else ""
        return f"{self.in_features}, {self.out_features}, method={self.method}{extra}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (T, in)
        if self.method == "weight-only":
            weight = ops.dequantize_rowwise(self.weight_int8, self.weight_scale, x.dtype)
            y = nn.functional.linear(x2, weight, self.bias)
        elif self.method == "absmax-tensor":
            x_int8, x_scale = ops.quantize_tensor(x2)
            acc = ops.int8_matmul(x_int8, self.weight_int8)  # (T, out) int32
            y = ops.dequantize_epilogue(acc, x_scale, self.weight_scale, self.bias, None, x.dtype)
        elif self.method == "vectorwise":
            x_int8, x_scale = ops.quantize_rowwise(x2)
            acc = ops.int8_matmul(x_int8, self.weight_int8)
            y = ops.dequantize_epilogue(acc, x_scale, self.weight_scale, self.bias, None, x.dtype)
        else:
            y = self._forward_with_outliers(x2)
        return y.reshape(*leading, self.out_features)

    def _forward_with_outliers(self, x2: torch.Tensor) -> torch.Tensor:
        """LLM.int8(): outlier feature columns in floating point, the rest in INT8."""
        if self.method == "llm-int8":
            cols, outlier_weight = self.outlier_cols, self.outlier_weight
        else:
            cols = ops.outlier_columns(x2, self.threshold)  # (n,)
            outlier_weight = ops.dequantize_rowwise(self.weight_int8.index_select(1, cols), self.weight_scale, x2.dtype)
        x_int8, x_scale, x_outliers = ops.decompose_outliers(x2, cols)  # (T, in), (T,), (T, n)
        acc = ops.int8_matmul(x_int8, self.weight_int8)
        outlier_out = x_outliers @ outlier_weight.t() if cols.numel() else None  # (T, out)
        return ops.dequantize_epilogue(acc, x_scale, self.weight_scale, self.bias, outlier_out, x2.dtype)
