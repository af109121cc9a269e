"""The ops API: the one entry point the engine uses for numeric work, as a registry.

`REGISTRY` maps each op to its torch reference (`kernels.reference`: runs
anywhere, the ground truth), its CUDA implementation (`kernels.cuda_ops`) and
the condition for using that implementation, which names what it really needs:

- the compiled kernels (`kernels=True`): a CUDA tensor of a dtype the kernels
  take, and CuPy + NVRTC able to load them on that device
  (`cuda_loader.kernels_available`, probed once per device);
- CUDA alone (`kernels=False`): the implementation is torch on the device.
  `int8_matmul` is cuBLASLt through `torch._int_mm`, so a machine without CuPy
  still multiplies in INT8 on the GPU rather than in the chunked float32 of the
  reference.

On the CPU, an op with a CPU implementation (`kernels.cpu_int8`) runs that:
the exact INT8 product on oneDNN's INT8 GEMM where the CPU has VNNI or AMX,
the whole INT8 linear layer, the outlier columns and the scan's statistics as
fused passes around a float32 GEMM; it runs the reference itself for inputs it
does not cover (not float32, or no C compiler here), with the same results. A few
tokens at a time (decoding) take one pass over the weights instead
(`kernels.cpu_gemv`): `int8_linear` bit for bit, `weight_only_linear` (weight-only
INT8 and Q8_0) to float32 rounding, without a float copy of the weight.

An op without a CUDA implementation runs its reference on a CUDA device: the
reference of `log_histogram` already avoids host synchronisation, so a CUDA
copy would add nothing. `INT8WB_KERNELS=reference` forces the reference for
every op. Signatures and numeric conventions are those of `kernels.reference`;
int8 values and scales are identical whichever ran.

Importing this module initialises neither CUDA nor CuPy: the condition looks
at the kernels only when a CUDA tensor arrives.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from int8wb.kernels import cpu_gemv, cpu_int8, cuda_loader, cuda_ops, reference

FLOATS = frozenset(cuda_ops.FLOAT_DTYPES)


@dataclass(frozen=True)
class OnCuda:
    """When an op's CUDA implementation runs instead of its reference."""

    dtypes: frozenset[torch.dtype]  # of the op's first argument, which must be on a CUDA device
    kernels: bool  # needs the NVRTC-compiled kernels (and CuPy); False: torch on the device suffices
    output: str | None = None  # the parameter naming the output dtype, which must be one of FLOATS


@dataclass(frozen=True)
class Op:
    """One numeric op: its reference, its CUDA implementation (or None) and when that runs."""

    name: str
    reference: Callable[..., Any]
    cuda: Callable[..., Any] | None = None
    on_cuda: OnCuda | None = None
    cpu: Callable[..., Any] | None = None  # for CPU tensors; covers what it cannot with the reference

    @functools.cached_property
    def _signature(self) -> inspect.Signature:
        return inspect.signature(self.reference)

    def _argument(self, name: str, args: tuple, kwargs: dict) -> Any:
        position = list(self._signature.parameters).index(name)
        if position < len(args):
            return args[position]
        return kwargs.get(name, self._signature.parameters[name].default)

    def uses_cuda(self, *args: Any, **kwargs: Any) -> bool:
        """Whether a call with these arguments runs the CUDA implementation."""
        condition = self.on_cuda
        if condition is None:
            return False
        first = args[0] if args else kwargs[next(iter(self._signature.parameters))]
        if not first.is_cuda or first.dtype not in condition.dtypes or cuda_loader.reference_forced():
            return False
        if condition.output is not None and self._argument(condition.output, args, kwargs) not in FLOATS:
            return False
        return not condition.kernels or cuda_loader.kernels_available(first.device)

    def runs_on_cpu(self, *args: Any, **kwargs: Any) -> bool:
        """Whether the first argument lives on the CPU (and the reference is not forced)."""
        first = args[0] if args else kwargs[next(iter(self._signature.parameters))]
        return first.device.type == "cpu" and not cuda_loader.reference_forced()


REGISTRY: dict[str, Op] = {}


def _register(op: Op) -> Callable[..., Any]:
    """Enter `op` in the registry; returns its dispatcher, with the reference's signature and docstring."""
    REGISTRY[op.name] = op

    def dispatch(*args: Any, **kwargs: Any) -> Any:
        implementation = op.cuda if op.uses_cuda(*args, **kwargs) else op.reference
        if implementation is op.reference and op.cpu is not None and op.runs_on_cpu(*args, **kwargs):
            implementation = op.cpu
        return implementation(*args, **kwargs)

    functools.update_wrapper(dispatch, op.reference)
    dispatch.__signature__ = inspect.signature(op.reference)
    return dispatch


_KERNELS_ON_FLOATS = OnCuda(FLOATS, kernels=True)

feature_stats = _register(Op("feature_stats", reference.feature_stats, cuda_ops.feature_stats, _KERNELS_ON_FLOATS))
outlier_columns = _register(
    Op(
        "outlier_columns",
        reference.outlier_columns,
        cuda_ops.outlier_columns,
        _KERNELS_ON_FLOATS,
        cpu=cpu_int8.outlier_columns,
    )
)
log_histogram = _register(Op("log_histogram", reference.log_histogram))
quantize_rowwise = _register(
    Op("quantize_rowwise", reference.quantize_rowwise, cuda_ops.quantize_rowwise, _KERNELS_ON_FLOATS)
)
quantize_tensor = _register(
    Op("quantize_tensor", reference.quantize_tensor, cuda_ops.quantize_tensor, _KERNELS_ON_FLOATS)
)
decompose_outliers = _register(
    Op("decompose_outliers", reference.decompose_outliers, cuda_ops.decompose_outliers, _KERNELS_ON_FLOATS)
)
int8_matmul = _register(
    Op(
        "int8_matmul",
        reference.int8_matmul,
        cuda_ops.int8_matmul,
        OnCuda(frozenset({torch.int8}), kernels=False),
        cpu=cpu_int8.int8_matmul,
    )
)
dequantize_epilogue = _register(
    Op(
        "dequantize_epilogue",
        reference.dequantize_epilogue,
        cuda_ops.dequantize_epilogue,
        OnCuda(frozenset({torch.int32}), kernels=True, output="out_dtype"),
    )
)
dequantize_rowwise = _register(
    Op(
        "dequantize_rowwise",
        reference.dequantize_rowwise,
        cuda_ops.dequantize_rowwise,
        OnCuda(frozenset({torch.int8}), kernels=True, output="dtype"),
    )
)


def _composed_int8_linear(
    x: torch.Tensor,
    weight_int8: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    outlier_cols: torch.Tensor | None = None,
    outlier_weight: torch.Tensor | None = None,
    per_tensor: bool = False,
) -> torch.Tensor:
    """`reference.int8_linear` with each step dispatched on its own (on a CUDA device: the kernels)."""
    options = (bias, outlier_cols, outlier_weight, per_tensor)
    return reference.compose_int8_linear(sys.modules[__name__], x, weight_int8, weight_scale, *options)


def _composed_input_stats(
    x: torch.Tensor,
    threshold: float,
    absmax_acc: torch.Tensor,
    count_acc: torch.Tensor,
    hist_acc: torch.Tensor,
    log10_range: tuple[float, float],
    token_absmax_out: torch.Tensor | None = None,
) -> None:
    """`reference.input_stats` with each step dispatched on its own."""
    feature_stats(x, threshold, absmax_acc, count_acc)
    log_histogram(x, *log10_range, hist_acc)
    if token_absmax_out is not None:
        reference.token_absmax(x, token_absmax_out)


int8_linear = _register(
    Op("int8_linear", reference.int8_linear, _composed_int8_linear, OnCuda(FLOATS, kernels=False), cpu=cpu_int8.linear)
)
input_stats = _register(
    Op(
        "input_stats",
        reference.input_stats,
        _composed_input_stats,
        OnCuda(FLOATS, kernels=False),
        cpu=cpu_int8.input_stats,
    )
)
# The residual stream's per-token and per-dimension abs-max (the scan's token axis): one C pass on the CPU.
token_dim_absmax = _register(Op("token_dim_absmax", reference.token_dim_absmax, cpu=cpu_int8.token_dim_absmax))
median_magnitude = _register(Op("median_magnitude", reference.median_magnitude, cpu=cpu_int8.median_magnitude))

# Q8_0 blocks (llama.cpp's 8-bit format): the reference is torch, which runs on any device.
quantize_blocks = _register(Op("quantize_blocks", reference.quantize_blocks))
dequantize_blocks = _register(Op("dequantize_blocks", reference.dequantize_blocks))


def _composed_weight_only_linear(
    x: torch.Tensor, weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`reference.weight_only_linear` with its dequantize step dispatched (on a CUDA device: the kernel)."""
    return reference.compose_weight_only_linear(sys.modules[__name__], x, weight_int8, weight_scale, bias)


# Weight-only INT8 and Q8_0 (floating-point activations): on the CPU a few rows take one pass over the weight.
weight_only_linear = _register(
    Op(
        "weight_only_linear",
        reference.weight_only_linear,
        _composed_weight_only_linear,
        OnCuda(FLOATS, kernels=False),
        cpu=cpu_gemv.weight_only_linear,
    )
)

__all__ = list(REGISTRY)


def int8_product_path(device: str) -> str:
    """Which exact INT8 product runs on `device` ("cpu", "cuda", "cuda:N"), in words for the load summary."""
    if device.startswith("cuda"):
        return "cuda: cuBLASLt INT8 GEMM (torch._int_mm)"
    return f"cpu: {cpu_int8.describe()}"
