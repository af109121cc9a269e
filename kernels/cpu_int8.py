"""The INT8 linear layer and the scan's statistics on the CPU: fast, and bit for bit the torch reference.

The exact INT8 x INT8 -> INT32 product takes one of two paths (`product_path()`):
- `onednn-amx` / `onednn-vnni`: on a CPU with AVX512-VNNI (AMX too), `torch._int_mm` runs oneDNN's
  integer GEMM, which accumulates in int32 and is exact.
- `float32-gemm` elsewhere, where `torch._int_mm` is a plain loop 30-230x slower than a float32
  GEMM (and fbgemm's faster kernels are exact only for 7-bit activations): one float32 GEMM of the
  quantized values, exact while no partial sum can reach 2**24, i.e. while every row of the
  quantized activations has an L1 norm below 2**24 / 128 (128 bounds |w| for any int8 weight), or
  else while the largest L2 norm of a row of q times that of a row of the weight stays below 2**24
  (activations spread over thousands of columns, as when LLM.int8() has taken the outlier columns
  out); products that fit neither are split into exact K-chunks as in `kernels.reference.int8_matmul`.
Both give the same accumulator and the same epilogue follows, so their outputs are identical.

Around the GEMM, `linear` makes one pass over the activations (abs-max per token, outlier columns
counted as zero, rounded values written straight in the GEMM's input type, and each row's L1 norm
for the exactness check) and one over the accumulator (the dequantize epilogue, in place, with the
outlier product and the bias); the fused passes are `kernels/cpu_int8.c` (`kernels.cpu_loader`).
Where that library is unavailable, or x is not float32, the reference composition runs instead, with
the same results. At most `kernels.cpu_gemv.MAX_ROWS` tokens (decoding) skip all of this for one
pass over the weight (`kernels.cpu_gemv`), with the same results again.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator

import numpy as np
import torch

from int8wb.kernels import cpu_gemv, cpu_loader, reference
from int8wb.kernels.input_memo import InputMemo

ONEDNN_AMX = "onednn-amx"
ONEDNN_VNNI = "onednn-vnni"
FLOAT32_GEMM = "float32-gemm"
PRODUCT_PATHS = (ONEDNN_AMX, ONEDNN_VNNI, FLOAT32_GEMM)

# The float32 GEMM of int8 values is exact while every row's L1 norm times max |w| (<= 128) is below 2**24,
# or while the L2 norms of a row of q and a row of the weight multiply to less than 2**24 (Cauchy-Schwarz),
# with a margin for the rounding of the norms themselves.
_EXACT_ROW_L1 = reference.FLOAT32_EXACT_INTEGERS / 128.0
_EXACT_NORM_PRODUCT = reference.FLOAT32_EXACT_INTEGERS * (1 - 1e-3)

# The weight goes to float32 a block of rows at a time, about this many values (4 MiB) per block.
WEIGHT_BLOCK_ELEMENTS = 1 << 20

_forced_path: list[str] = []
_scratch = threading.local()
_quantized_inputs = InputMemo()  # q/k/v and gate/up quantize the same activations once
_outlier_inputs = InputMemo()


def detected_product_path() -> str:
    """The INT8 product this CPU runs best: oneDNN's integer GEMM where it has VNNI, else float32."""
    capabilities = torch.cpu.get_capabilities()
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return FLOAT32_GEMM
    if capabilities.get("amx_int8") and capabilities.get("avx512_vnni"):
        return ONEDNN_AMX
    return ONEDNN_VNNI if capabilities.get("avx512_vnni") else FLOAT32_GEMM


def product_path() -> str:
    """The path the CPU INT8 product takes now (`detected_product_path`, unless `forced_product_path`)."""
    return _forced_path[-1] if _forced_path else detected_product_path()


@contextlib.contextmanager
def forced_product_path(path: str) -> Iterator[None]:
    """Run the CPU INT8 product on `path` inside the block (tests and benchmarks compare the paths)."""
    if path not in PRODUCT_PATHS:
        raise ValueError(f"unknown CPU INT8 path {path!r}; one of {', '.join(PRODUCT_PATHS)}")
    _forced_path.append(path)
    try:
        yield
    finally:
        _forced_path.pop()


def describe() -> str:
    """One line for the load summary: which INT8 product runs, and whether the fused passes do."""
    if cpu_loader.library() is None:
        return f"reference ops, {FLOAT32_GEMM} in K-chunks ({cpu_loader.unavailable_reason()})"
    return f"{product_path()}, fused C passes"


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact `a @ b.T` (int8 -> int32) on this CPU's path; a: (M, K), b: (N, K)."""
    if product_path() == FLOAT32_GEMM:
        return reference.int8_matmul(a, b)
    return torch._int_mm(a, b.t())


def fused_available(x: torch.Tensor) -> bool:
    """Whether `linear` and the statistics run the fused passes for x (float32 on the CPU, library built)."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 2 and cpu_loader.library() is not None


def linear(
    x: torch.Tensor,
    weight_int8: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    outlier_cols: torch.Tensor | None = None,
    outlier_weight: torch.Tensor | None = None,
    per_tensor: bool = False,
) -> torch.Tensor:
    """`kernels.reference.int8_linear` for x (T, K) on the CPU, with the fused passes where they apply."""
    if not fused_available(x):
        return reference.int8_linear(x, weight_int8, weight_scale, bias, outlier_cols, outlier_weight, per_tensor)
    if cpu_gemv.applies(x, weight_int8):  # a few tokens (decoding): one pass over the weight
        return cpu_gemv.w8a8_linear(x, weight_int8, weight_scale, bias, outlier_cols, outlier_weight, per_tensor)
    x = x.contiguous()
    keep = _keep_mask(x.shape[1], outlier_cols)
    tensor_absmax = _tensor_absmax(x) if per_tensor else None
    options = (per_tensor, () if keep is None else tuple(outlier_cols.tolist()))
    if product_path() == FLOAT32_GEMM:
        acc, x_scale = _float32_product(x, weight_int8, keep, tensor_absmax, options)
    else:
        x_int8, x_scale = _quantize_once(x, keep, tensor_absmax, torch.int8, options)
        acc = torch._int_mm(x_int8, weight_int8.t())
    outlier_out = None
    if outlier_cols is not None and outlier_cols.numel():
        outlier_out = x.index_select(1, outlier_cols) @ outlier_weight.t()  # (T, N), as the reference forms it
    return _dequantize(acc, x_scale, weight_scale, bias, outlier_out, weight_int8.shape[0])


def _keep_mask(cols: int, outlier_cols: torch.Tensor | None) -> torch.Tensor | None:
    """(K,) uint32 of all ones, with zeros at the outlier columns; None when there are none."""
    if outlier_cols is None or not outlier_cols.numel():
        return None
    keep = torch.full((cols,), -1, dtype=torch.int32)
    return keep.index_fill_(0, outlier_cols, 0)


def _tensor_absmax(x: torch.Tensor) -> torch.Tensor:
    """max |x| over the whole tensor, in one pass (1-element float32)."""
    low, high = torch.aminmax(x)
    return torch.maximum(high, -low).reshape(1)


def _quantize(
    x: torch.Tensor, keep: torch.Tensor | None, tensor_absmax: torch.Tensor | None, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    """One pass: (q (T, K) in `dtype`, absmax (T,)[, L1 of each row of q (T,) for float32])."""
    tokens, cols = x.shape
    q = torch.empty((tokens, cols), dtype=dtype)
    absmax = torch.empty(tokens, dtype=torch.float32)
    common = (x.data_ptr(), tokens, cols, x.stride(0), _address(keep), _address(tensor_absmax), q.data_ptr())
    if dtype == torch.int8:
        cpu_loader.library().quantize_rows_i8(*common, absmax.data_ptr(), torch.get_num_threads())
        return q, absmax
    l1 = torch.empty(tokens, dtype=torch.float32)
    cpu_loader.library().quantize_rows_f32(*common, absmax.data_ptr(), l1.data_ptr(), torch.get_num_threads())
    return q, absmax, l1


def _quantize_once(x, keep, tensor_absmax, dtype: torch.dtype, options: tuple) -> tuple[torch.Tensor, ...]:
    """`_quantize`, or its result for the previous Linear that read the same activations (`kernels.input_memo`).

    `options` names what besides x decides the result: (per-tensor scale, the outlier columns left out).
    """
    return _quantized_inputs.get_or_compute(x, (dtype, options), lambda: _quantize(x, keep, tensor_absmax, dtype))


def _float32_product(
    x: torch.Tensor,
    weight_int8: torch.Tensor,
    keep: torch.Tensor | None,
    tensor_absmax: torch.Tensor | None,
    options: tuple,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(exact accumulator (T, N): float32 from one GEMM, or int32 from K-chunks, activation scales (T,)).

    One float32 GEMM is exact while no partial sum can reach 2**24. Any partial sum of a row of q
    with a row of the weight is at most sum |q_k w_k|, which is bounded two ways: by L1(q) * 128 (no
    look at the weight), and, more tightly for activations spread over many columns, by the product
    of the two rows' L2 norms (Cauchy-Schwarz), checked block by block as the weight is converted.
    """
    q, x_scale, l1 = _quantize_once(x, keep, tensor_absmax, torch.float32, options)
    if q.shape[1] * 127 * 128 < reference.FLOAT32_EXACT_INTEGERS or float(l1.max()) < _EXACT_ROW_L1:
        return _blocked_gemm(q, weight_int8), x_scale
    largest_row = float(torch.linalg.vector_norm(q, dim=1).max())
    y = _blocked_gemm(q, weight_int8, max_weight_row_norm=_EXACT_NORM_PRODUCT / max(largest_row, 1.0))
    if y is not None:
        return y, x_scale
    weight = weight_int8.float()  # (N, K); int8 values are exact in float32
    bounds = reference.exact_chunk_bounds(q, 127, 128)
    acc = torch.zeros((q.shape[0], weight.shape[0]), dtype=torch.int32)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        acc += torch.mm(q[:, start:stop], weight[:, start:stop].t()).to(torch.int32)
    return acc, x_scale


def _blocked_gemm(q: torch.Tensor, weight_int8: torch.Tensor, max_weight_row_norm: float | None = None):
    """q (T, K) @ weight_int8.T as float32, the weight converted a block of rows at a time.

    Each block of output features is converted into one reused, cache-sized buffer just before
    its GEMM: a float copy of the whole weight per call would be written to memory, read back,
    and for a large layer faulted in afresh every time. With `max_weight_row_norm`, a block with a
    row whose L2 norm reaches it stops the product (None): the GEMM would not be exact.
    """
    out_features, cols = weight_int8.shape
    y = torch.empty((q.shape[0], out_features), dtype=torch.float32)
    block = max(1, WEIGHT_BLOCK_ELEMENTS // max(cols, 1))
    buffer = _workspace(min(block, out_features) * cols)
    for start in range(0, out_features, block):
        rows = weight_int8[start : start + block]
        weight = buffer[: rows.numel()].view(rows.shape).copy_(rows)  # (rows, K) float32
        if max_weight_row_norm is not None:
            if float(torch.linalg.vector_norm(weight, dim=1).max()) >= max_weight_row_norm:
                return None
        torch.mm(q, weight.t(), out=y[:, start : start + rows.shape[0]])
    return y


def _workspace(elements: int) -> torch.Tensor:
    """This thread's float32 scratch buffer of at least `elements`, kept between calls."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.numel() < elements:
        _scratch.buffer = buffer = torch.empty(elements, dtype=torch.float32)
    return buffer


def _dequantize(
    acc: torch.Tensor,
    x_scale: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    outlier_out: torch.Tensor | None,
    out_features: int,
) -> torch.Tensor:
    """The reference epilogue in one pass; a float32 accumulator becomes the output in place."""
    tokens = acc.shape[0]
    y = acc if acc.dtype == torch.float32 else torch.empty((tokens, out_features), dtype=torch.float32)
    col_scale = weight_scale.float().expand(out_features).contiguous()  # a per-tensor scale, broadcast
    row_scale = x_scale.expand(tokens).contiguous()
    bias = None if bias is None else bias.float().contiguous()
    outlier_out = None if outlier_out is None else outlier_out.float().contiguous()
    entry = cpu_loader.library().dequantize_f32 if acc.dtype == torch.float32 else cpu_loader.library().dequantize_i32
    entry(
        acc.data_ptr(),
        y.data_ptr(),
        tokens,
        out_features,
        row_scale.data_ptr(),
        col_scale.data_ptr(),
        _address(outlier_out),
        _address(bias),
        torch.get_num_threads(),
    )
    return y


def outlier_columns(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """`kernels.reference.outlier_columns` on the CPU, in one pass where the fused kernels apply."""
    if not fused_available(x):
        return reference.outlier_columns(x, threshold)

    def flagged() -> torch.Tensor:
        values = x.detach().contiguous()
        flags = torch.zeros(values.shape[1], dtype=torch.uint8)
        cpu_loader.library().outlier_flags(
            values.data_ptr(), *values.shape, values.stride(0), threshold, flags.data_ptr(), torch.get_num_threads()
        )
        return flags.nonzero().squeeze(1)

    return _outlier_inputs.get_or_compute(x, float(threshold), flagged)


def input_stats(
    x: torch.Tensor,
    threshold: float,
    absmax_acc: torch.Tensor,
    count_acc: torch.Tensor,
    hist_acc: torch.Tensor,
    log10_range: tuple[float, float],
    token_absmax_out: torch.Tensor | None = None,
) -> None:
    """`kernels.reference.input_stats` on the CPU, in one pass where the fused kernels apply.

    Abs-max (per column and per token) and counts are exact; the histogram bins on float32 edges
    10**(log10_min + i * width) where the reference rounds a float32 log10, so a value within a
    rounding of an edge can land in the neighbouring bin.
    """
    if not fused_available(x) or not _writable_floats(token_absmax_out, x.shape[0]):
        return reference.input_stats(x, threshold, absmax_acc, count_acc, hist_acc, log10_range, token_absmax_out)
    x = x.detach().contiguous()
    cols = x.shape[1]
    bin_of_cell, upper_edge_bits = _histogram_tables(hist_acc.numel(), *log10_range)
    absmax_bits = torch.zeros(cols, dtype=torch.int32)
    count = torch.zeros(cols, dtype=torch.int64)
    hist = torch.zeros(hist_acc.numel(), dtype=torch.int64)
    cpu_loader.library().feature_stats(
        x.data_ptr(),
        x.shape[0],
        cols,
        x.stride(0),
        threshold,
        absmax_bits.data_ptr(),
        count.data_ptr(),
        hist.data_ptr(),
        bin_of_cell.data_ptr(),
        upper_edge_bits.data_ptr(),
        hist_acc.numel(),
        _address(token_absmax_out),  # |x|'s bit pattern is the float |x|: written in place
        torch.get_num_threads(),
    )
    torch.maximum(absmax_acc, absmax_bits.view(torch.float32), out=absmax_acc)
    count_acc += count
    hist_acc += hist


def token_dim_absmax(
    x: torch.Tensor, token_absmax_out: torch.Tensor, token_argmax_out: torch.Tensor, dim_absmax_acc: torch.Tensor
) -> None:
    """`kernels.reference.token_dim_absmax` on the CPU, in one pass where the fused kernels apply: the
    residual stream is read once rather than for an |x| copy, a max with indices and a column max."""
    rows, cols = x.shape
    outputs_in_place = (
        _writable_floats(token_absmax_out, rows)
        and token_argmax_out.dtype == torch.int32
        and token_argmax_out.is_contiguous()
        and token_argmax_out.device.type == "cpu"
    )
    if not fused_available(x) or not outputs_in_place or cols == 0:
        return reference.token_dim_absmax(x, token_absmax_out, token_argmax_out, dim_absmax_acc)
    x = x.detach().contiguous()
    dim_bits = torch.zeros(cols, dtype=torch.int32)
    cpu_loader.library().token_dim_absmax(
        x.data_ptr(),
        rows,
        cols,
        x.stride(0),
        token_absmax_out.data_ptr(),
        token_argmax_out.data_ptr(),
        dim_bits.data_ptr(),
        torch.get_num_threads(),
    )
    torch.maximum(dim_absmax_acc, dim_bits.view(torch.float32), out=dim_absmax_acc)


def median_magnitude(x: torch.Tensor) -> float:
    """`kernels.reference.median_magnitude` on the CPU: a two-pass radix select where the fused kernels apply."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.numel() == 0 or cpu_loader.library() is None:
        return reference.median_magnitude(x)
    values = x.detach().contiguous()
    return float(cpu_loader.library().median_magnitude(values.data_ptr(), values.numel()))


def _writable_floats(out: torch.Tensor | None, rows: int) -> bool:
    """Whether the C passes can write `rows` float32 values into `out` in place (None: nothing to write)."""
    if out is None:
        return True
    return out.dtype == torch.float32 and out.device.type == "cpu" and out.is_contiguous() and out.numel() == rows


@functools.cache
def _histogram_tables(bins: int, log10_min: float, log10_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(bin of the smallest magnitude of each cell of 2**16 float32 bit patterns (65536,) uint8,
    bit pattern of the lower edge of bins 1 .. bins-1 (bins - 1,) int32)."""
    width = (log10_max - log10_min) / bins
    edges = (10.0 ** (log10_min + width * np.arange(1, bins))).astype(np.float32)  # (bins - 1,)
    edge_bits = edges.view(np.uint32).astype(np.int64)
    cell_low_bits = np.arange(1 << 16, dtype=np.int64) << 16
    magnitude = cell_low_bits & 0x7FFFFFFF
    bin_of_cell = np.searchsorted(edge_bits, magnitude, side="right")
    bin_of_cell[magnitude >= 0x7F800000] = bins - 1  # infinity and NaN: the last bin, as the reference
    return torch.from_numpy(bin_of_cell.astype(np.uint8)), torch.from_numpy(edges.view(np.int32).copy())


def _address(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()
