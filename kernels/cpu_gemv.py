"""The INT8 linear layer for a few tokens at a time on the CPU: decoding, one pass over the weights.

A decode step multiplies one token (a few, for a small batch) by every weight. That is a
matrix-vector product whose time is the time to read the weight, so the INT8 formats should be
up to four times faster than float32 there; the GEMM paths of `kernels.cpu_int8` (quantize, GEMM,
epilogue, each a call of its own, and for the float formats a float32 copy of the weight before
the product) spend more on the passes around the product than the smaller weight saves. For
x with at most `MAX_ROWS` rows, `kernels/cpu_gemv.c` instead runs the whole layer as one call:

- W8A8 (`w8a8_linear`): the rows quantized, exact int32 dot products with each weight row,
  and the reference epilogue as each output is finished: `kernels.reference.int8_linear`, bit
  for bit. LLM.int8()'s outlier columns are a small float product beside it, formed by torch
  as the reference forms it, and added in the epilogue.
- float activations (`weight_only_linear`: weight-only INT8 with one scale per row, Q8_0 with
  one float16 scale per 32 weights): float32 sums of x times the int8 weights, the scales
  applied per row (per block for Q8_0); no float copy of the weight is made. The sums run in
  another order than the reference's GEMM of the dequantized weight, so the two agree to
  float32 rounding.

The instructions (`isa()`) are picked at run time from what the CPU has: `avx512-vnni` or
`avx-vnni` (vpdpbusd), else `avx2` (vpmaddubsw + vpmaddwd; vpmovsxbd + FMA for the float
formats), else `scalar` C; none needs AVX-512. Both cores work on every call (OpenMP over the
output features, in torch's own OpenMP runtime).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

from int8wb.kernels import cpu_loader, reference

AVX512_VNNI = "avx512-vnni"
AVX_VNNI = "avx-vnni"
AVX2 = "avx2"
SCALAR = "scalar"
ISA_CODES = {SCALAR: 0, AVX2: 1, AVX_VNNI: 2, AVX512_VNNI: 3}  # the GEMV_* values of cpu_gemv.c

# Up to this many rows one pass over the weights beats the GEMM paths (bench/decode_step.py --rows measures it).
MAX_ROWS = 8
Q8_0_BLOCK = 32  # the only block size cpu_gemv.c takes (llama.cpp's)

_forced: list[str | None] = []


def supported_isas() -> list[str]:
    """The instruction sets this CPU and the compiled library can run, best first ([] without the library)."""
    library = cpu_loader.library()
    return [] if library is None else list(_supported_by(library))


@functools.cache
def _supported_by(library) -> tuple[str, ...]:
    return tuple(
        name for name, code in sorted(ISA_CODES.items(), key=lambda i: -i[1]) if library.gemv_isa_supported(code)
    )


def isa() -> str | None:
    """The instructions the small-batch path uses now; None when it is off (no library, or `bypassed`)."""
    if _forced:
        return _forced[-1]
    supported = supported_isas()
    return supported[0] if supported else None


@contextlib.contextmanager
def forced_isa(name: str | None) -> Iterator[None]:
    """Run the small-batch path on `name`'s instructions inside the block; None turns the path off."""
    if name is not None and name not in supported_isas():
        raise ValueError(f"instruction set {name!r} is not available here; available: {', '.join(supported_isas())}")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def bypassed() -> contextlib.AbstractContextManager[None]:
    """Inside the block a few rows take the GEMM paths too (tests and benchmarks compare the two)."""
    return forced_isa(None)


def applies(x: torch.Tensor, weight_int8: torch.Tensor) -> bool:
    """Whether x (T, K) goes through one pass over `weight_int8` here: float32 on the CPU, at most MAX_ROWS rows."""
    return (
        x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.dim() == 2
        and x.shape[0] <= MAX_ROWS
        and x.stride(1) == 1
        and weight_int8.is_contiguous()
        and isa() is not None
    )


def w8a8_linear(
    x: torch.Tensor,
    weight_int8: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    outlier_cols: torch.Tensor | None,
    outlier_weight: torch.Tensor | None,
    per_tensor: bool,
) -> torch.Tensor:
    """`kernels.reference.int8_linear` bit for bit, for x that `applies`."""
    tokens, cols = x.shape
    out_features = weight_int8.shape[0]
    keep = outlier_out = None
    if outlier_cols is not None and outlier_cols.numel():
        keep = torch.full((cols,), -1, dtype=torch.int32).index_fill_(0, outlier_cols, 0)
        outlier_out = (x.index_select(1, outlier_cols) @ outlier_weight.t()).float()  # as the reference forms it
    col_absmax = weight_scale.float().contiguous()
    y = torch.empty((tokens, out_features), dtype=torch.float32)
    cpu_loader.library().w8a8_rows_linear(
        x.data_ptr(),
        tokens,
        cols,
        x.stride(0),
        _address(keep),
        per_tensor,
        weight_int8.data_ptr(),
        out_features,
        col_absmax.data_ptr(),
        col_absmax.numel() == 1,
        _address(outlier_out),
        _address(_float32(bias)),
        y.data_ptr(),
        ISA_CODES[isa()],
        torch.get_num_threads(),
    )
    return y


def weight_only_linear(
    x: torch.Tensor, weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`kernels.reference.weight_only_linear`: one pass over the weight for a few float32 rows, else the reference."""
    if not _weight_only_applies(x, weight_int8, weight_scale):
        return reference.weight_only_linear(x, weight_int8, weight_scale, bias)
    tokens, cols = x.shape
    out_features = weight_int8.shape[0]
    y = torch.empty((tokens, out_features), dtype=torch.float32)
    library = cpu_loader.library()
    entry = library.q8_0_rows_linear if weight_scale.dim() == 2 else library.rowscale_rows_linear
    scale = weight_scale.contiguous() if weight_scale.dim() == 2 else weight_scale.float().contiguous()
    entry(
        x.data_ptr(),
        tokens,
        cols,
        x.stride(0),
        weight_int8.data_ptr(),
        out_features,
        scale.data_ptr(),
        _address(_float32(bias)),
        y.data_ptr(),
        ISA_CODES[isa()],
        torch.get_num_threads(),
    )
    return y


def _weight_only_applies(x: torch.Tensor, weight_int8: torch.Tensor, weight_scale: torch.Tensor) -> bool:
    """`applies`, and a scale layout cpu_gemv.c reads: (N,) float32, or (N, K / 32) float16 for Q8_0."""
    if weight_scale.dim() == 2:
        layout = weight_scale.dtype == torch.float16 and weight_scale.shape[1] * Q8_0_BLOCK == weight_int8.shape[1]
    else:
        layout = weight_scale.numel() == weight_int8.shape[0]
    return layout and applies(x, weight_int8)


class PreparedLayer:
    """One Linear's arguments to cpu_gemv.c, resolved once: a decode step calls ~200 layers per token,
    and resolving them on every call (dispatch, dtype checks, scale and mask tensors) took three times
    as long as the call itself on the default model.

    Built from the layer's stored tensors, which must already be in the dtypes cpu_gemv.c reads (so
    that it holds their storage and never a copy that an in-place update would miss); `serves`
    tells whether it still stands for the tensors a layer holds now. Static outlier columns only:
    LLM.int8()'s dynamic columns change per call.
    """

    def __init__(
        self,
        weight_int8: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        activations: str,
        outlier_cols: torch.Tensor | None = None,
        outlier_weight: torch.Tensor | None = None,
    ) -> None:
        self.tensors = (weight_int8, weight_scale, bias, outlier_cols, outlier_weight)
        self.out_features, self.cols = weight_int8.shape
        self.float_activations = activations == "float"
        self.q8_0 = weight_scale.dim() == 2
        self.per_tensor = activations == "tensor"
        self.keep = self.outlier_cols = self.outlier_weight = None
        if outlier_cols is not None and outlier_cols.numel():
            self.keep = torch.full((self.cols,), -1, dtype=torch.int32).index_fill_(0, outlier_cols, 0)
            self.outlier_cols, self.outlier_weight_t = outlier_cols, outlier_weight.t()
        self.weight_address = weight_int8.data_ptr()
        self.arguments = (
            weight_int8.data_ptr(),
            self.out_features,
            weight_scale.data_ptr(),
            weight_scale.numel() == 1,
            _address(bias),
        )

    @staticmethod
    def usable(weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None) -> bool:
        """Whether stored tensors can be read in place: on the CPU, contiguous, int8 / float32 (float16 Q8_0 scales)."""
        scale_dtype = torch.float16 if weight_scale.dim() == 2 else torch.float32
        float_bias = bias is None or (bias.dtype == torch.float32 and bias.is_contiguous())
        return (
            weight_int8.device.type == "cpu"
            and weight_int8.dtype == torch.int8
            and weight_int8.is_contiguous()
            and weight_scale.dtype == scale_dtype
            and weight_scale.is_contiguous()
            and (weight_scale.dim() != 2 or weight_scale.shape[1] * Q8_0_BLOCK == weight_int8.shape[1])
            and float_bias
        )

    def serves(self, *tensors: torch.Tensor | None) -> bool:
        """Whether this was prepared from these very tensors (a `.to()` or a new buffer replaces them)."""
        return all(a is b for a, b in zip(tensors, self.tensors)) and tensors[0].data_ptr() == self.weight_address

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        """The layer's output for x (T, K), or None where this path does not apply (then the ops path runs)."""
        if x.dtype != torch.float32 or x.dim() != 2 or x.shape[0] > MAX_ROWS or x.stride(1) != 1 or x.is_cuda:
            return None
        instructions = isa()
        if instructions is None:
            return None
        tokens = x.shape[0]
        y = torch.empty((tokens, self.out_features), dtype=torch.float32)
        library = cpu_loader.library()
        head = (x.data_ptr(), tokens, self.cols, x.stride(0))
        weight, out_features, scale, scalar_scale, bias = self.arguments
        tail = (y.data_ptr(), ISA_CODES[instructions], torch.get_num_threads())
        if self.float_activations:
            entry = library.q8_0_rows_linear if self.q8_0 else library.rowscale_rows_linear
            entry(*head, weight, out_features, scale, bias, *tail)
            return y
        outlier_out = None
        if self.keep is not None:
            outlier_out = x.index_select(1, self.outlier_cols) @ self.outlier_weight_t  # as the reference forms it
        keep = _address(self.keep)
        library.w8a8_rows_linear(
            *head, keep, self.per_tensor, weight, out_features, scale, scalar_scale, _address(outlier_out), bias, *tail
        )
        return y


def _float32(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.float().contiguous()


def _address(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()
