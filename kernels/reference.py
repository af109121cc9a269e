"""Torch reference implementations of the quantization ops (the ground truth).

Conventions shared by every implementation (CUDA kernels must match them bit
for bit where integers are concerned):

- A *scale* is an abs-max, as bitsandbytes' `SCB`: a row quantizes as
  `q = clamp(round_half_even(x * (127 / absmax)), -127, 127)` in float32, where
  `127 / absmax` is computed as torch computes a scalar over a tensor
  (`reciprocal(absmax) * 127`, two roundings; the CUDA kernels do the same), and
  dequantizes as `x ~ q * absmax / 127`. An all-zero row has absmax 0 and
  quantizes to zeros (no NaN).
- Rows whose abs-max is below MIN_ABSMAX (2**-120, about 7.5e-37), where
  `127 / absmax` would overflow float32, quantize to zeros like an all-zero
  row. A row that holds NaN or +-inf quantizes to zeros and keeps its
  non-finite abs-max as its scale, so dequantizing it (and every INT8 product
  with it) gives NaN: the fault shows in the output, as it would in floating
  point, and every implementation writes the same int8 values.
- INT8 x INT8 products accumulate exactly in INT32, and the accumulator
  dequantizes as `y = acc * (s_x[:, None] * s_w[None, :]) / 127**2`.
"""

from __future__ import annotations

import sys
from types import ModuleType

import torch

INT8_MAX = 127.0

# A float32 sum of integers is exact while every partial sum stays below 2**24.
FLOAT32_EXACT_INTEGERS = float(1 << 24)

# Row-wise quantization works on blocks of about this many values (2 MiB of float32).
ROWWISE_BLOCK_ELEMENTS = 1 << 19

# The smallest abs-max that gets a scale: 127 / absmax stays finite in float32 from here on.
MIN_ABSMAX = 2.0**-120


def _inverse_scale(absmax: torch.Tensor) -> torch.Tensor:
    """127 / absmax; 0 for a zero, tiny or NaN abs-max (and 127 / inf is 0), so such rows become zeros."""
    usable = absmax >= MIN_ABSMAX
    safe = torch.where(usable, absmax, torch.ones_like(absmax))
    return torch.where(usable, INT8_MAX / safe, torch.zeros_like(absmax))


def _round_to_int8(scaled: torch.Tensor) -> torch.Tensor:
    """round half to even, NaN (a non-finite value times a zero inverse scale) to 0, clamp to +-127."""
    return torch.round(scaled).nan_to_num_(nan=0.0).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)


def feature_stats(x: torch.Tensor, threshold: float, absmax_acc: torch.Tensor, count_acc: torch.Tensor) -> None:
    """Fold one batch into running per-feature statistics.

    x: (T, K) activations; absmax_acc: (K,) float32, updated to the running abs-max;
    count_acc: (K,) int64, increased by the number of tokens with |x| > threshold.
    """
    magnitude = x.detach().abs()  # (T, K)
    torch.maximum(absmax_acc, magnitude.amax(dim=0).float(), out=absmax_acc)
    count_acc += (magnitude > threshold).sum(dim=0)


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Vector-wise quantization: one abs-max scale per row. Returns (int8 (R, C), float32 (R,)).

    Rows go in blocks of about ROWWISE_BLOCK_ELEMENTS values, so that the float32
    temporaries stay in cache: on a CPU that is several times faster than one
    pass over a large weight, with identical results (rows are independent).
    """
    rows, cols = x.shape
    block = max(1, ROWWISE_BLOCK_ELEMENTS // max(cols, 1))
    if rows <= block:
        return _quantize_rows(x)
    q = torch.empty((rows, cols), dtype=torch.int8, device=x.device)
    absmax = torch.empty(rows, dtype=torch.float32, device=x.device)
    for start in range(0, rows, block):
        q[start : start + block], absmax[start : start + block] = _quantize_rows(x[start : start + block])
    return q, absmax


def _quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x32 = x.float()
    absmax = x32.abs().amax(dim=1)  # (R,)
    return _round_to_int8(x32 * _inverse_scale(absmax)[:, None]), absmax


def quantize_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive quantization: one abs-max scale for the whole tensor. Returns (int8, float32 scalar)."""
    x32 = x.float()
    absmax = x32.abs().amax()
    return _round_to_int8(x32 * _inverse_scale(absmax)), absmax


def decompose_outliers(x: torch.Tensor, outlier_cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split activations into an INT8 part and a floating-point outlier part (LLM.int8()).

    x: (T, K); outlier_cols: (n,) int64 column indices. The outlier columns are
    gathered into a dense (T, n) matrix in x's dtype, and count as zero in the
    per-token quantization of the rest. Returns (int8 (T, K), float32 (T,), (T, n)).
    """
    outliers = x.index_select(1, outlier_cols)
    regular = x.float().index_fill(1, outlier_cols, 0.0)
    q, absmax = quantize_rowwise(regular)
    return q, absmax, outliers


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact INT8 x INT8 -> INT32 product `a @ b.T`; a: (M, K), b: (N, K) int8.

    On the CPU `torch._int_mm` is exact but tens of times slower than a float32
    GEMM. A float32 GEMM is exact too when every partial sum it can form is an
    integer below 2**24: each output's partial sums are bounded by
    sum_k |a[m, k]| * |b[n, k]| <= ||a[m]||_1 * max|b| (Hoelder), whatever the
    summation order. So K is split into the fewest even chunks for which that
    bound holds in every chunk (one chunk for typical activations, at most
    2**24 // (127 * 127) = 1,040 terms per chunk in the worst case), each chunk goes
    through a float32 GEMM, and the chunk results are added up in int32.
    """
    a32, b32 = a.float(), b.float()  # (M, K), (N, K); int8 values are exact in float32
    bounds = exact_chunk_bounds(a32, _int8_absmax(a), _int8_absmax(b))
    acc = None
    for start, stop in zip(bounds[:-1], bounds[1:]):
        part = torch.mm(a32[:, start:stop], b32[:, start:stop].t()).to(torch.int32)  # (M, N)
        acc = part if acc is None else acc.add_(part)
    return acc


def _int8_absmax(q: torch.Tensor) -> int:
    """max |q| of an int8 tensor, without int8 abs (which overflows at -128)."""
    return max(int(q.max()), -int(q.min())) if q.numel() else 0


def exact_chunk_bounds(a32: torch.Tensor, a_absmax: int, b_absmax: int) -> list[int]:
    """K boundaries of the fewest even chunks whose partial sums stay exactly representable in float32."""
    k = a32.shape[1]
    if k * a_absmax * b_absmax < FLOAT32_EXACT_INTEGERS or a32.shape[0] == 0:
        return [0, k]  # even the worst row cannot reach 2**24: no need to look at the rows
    n_chunks = 1
    while True:
        bounds = [round(i * k / n_chunks) for i in range(n_chunks + 1)]
        worst_row_l1 = max(
            float(torch.linalg.vector_norm(a32[:, start:stop], 1, dim=1).max())
            for start, stop in zip(bounds[:-1], bounds[1:])
        )
        if worst_row_l1 * b_absmax < FLOAT32_EXACT_INTEGERS or n_chunks >= k:
            return bounds
        n_chunks = max(n_chunks + 1, int(n_chunks * worst_row_l1 * b_absmax / FLOAT32_EXACT_INTEGERS))


def dequantize_epilogue(
    acc: torch.Tensor,
    row_absmax: torch.Tensor,
    col_absmax: torch.Tensor,
    bias: torch.Tensor | None = None,
    outlier_out: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """INT32 accumulator (M, N) -> out_dtype, scaled by row (M,) and column (N,) abs-maxes.

    Adds `outlier_out` (M, N), the floating-point product of the outlier columns,
    and `bias` (N,) when given. Scalars broadcast, for per-tensor scales.
    """
    scale = row_absmax.float().reshape(-1, 1) * col_absmax.float().reshape(1, -1)
    y = acc.float() * scale / (INT8_MAX * INT8_MAX)
    if outlier_out is not None:
        y = y + outlier_out.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def dequantize_rowwise(q: torch.Tensor, absmax: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """int8 (R, C) with per-row abs-max (R,) (or a scalar) -> floating point (R, C)."""
    return (q.float() * (absmax.float().reshape(-1, 1) / INT8_MAX)).to(dtype)


def quantize_blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """llama.cpp's Q8_0: blocks of `block` values along each row, one float16 scale per block.

    x: (R, C) with C a multiple of `block`. Returns (int8 (R, C), float16 (R, C // block)).
    As llama.cpp and the `gguf` package compute it: d = absmax / 127 in float32, q =
    round-half-away-from-zero(x * (1 / d)) with 0 where d is 0, and d stored as float16 (the
    quantization itself uses the float32 d, so a block dequantizes as q * float16(d)).
    """
    rows, cols = x.shape
    blocks = x.float().reshape(rows, cols // block, block)  # (R, B, block)
    d = blocks.abs().amax(dim=2, keepdim=True) / INT8_MAX  # (R, B, 1)
    inverse = torch.where(d == 0, torch.zeros_like(d), 1.0 / torch.where(d == 0, torch.ones_like(d), d))
    scaled = blocks * inverse
    magnitude = scaled.abs()
    floored = torch.floor(magnitude)
    rounded = torch.sign(scaled) * (floored + torch.floor(2 * (magnitude - floored)))  # half away from zero
    return rounded.to(torch.int8).reshape(rows, cols), d.squeeze(2).to(torch.float16)


def dequantize_blocks(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """int8 (R, C) with one scale per block of C // scale.shape[1] values (R, B) -> floating point (R, C)."""
    rows, cols = q.shape
    blocks = q.float().reshape(rows, scale.shape[1], -1) * scale.float().unsqueeze(2)  # (R, B, block)
    return blocks.reshape(rows, cols).to(dtype)


def weight_only_linear(
    x: torch.Tensor, weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x (T, K) times a stored INT8 weight (N, K) with the activations left in floating point (x's dtype):
    the weight dequantized, then one GEMM, + bias. weight_scale (N,) or a scalar: one abs-max per row
    (`dequantize_rowwise`); (N, blocks): one scale per block of K / blocks weights (`dequantize_blocks`, Q8_0)."""
    return compose_weight_only_linear(sys.modules[__name__], x, weight_int8, weight_scale, bias)


def compose_weight_only_linear(
    primitives: ModuleType,
    x: torch.Tensor,
    weight_int8: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """`weight_only_linear` from the dequantize ops of `primitives` (this module, or `kernels.ops`)."""
    if weight_scale.dim() == 2:
        weight = primitives.dequantize_blocks(weight_int8, weight_scale, x.dtype)
    else:
        weight = primitives.dequantize_rowwise(weight_int8, weight_scale, x.dtype)
    return torch.nn.functional.linear(x, weight, bias)


def outlier_columns(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """The feature columns of x (T, K) where any |x| > threshold, as sorted int64 indices (n,).

    LLM.int8()'s dynamic outlier detection. The comparison happens in x's dtype
    (a half tensor compares with the threshold rounded to half); NaN is never an
    outlier. The number of columns decides the shapes of what follows, so the
    host has to learn it: `nonzero` waits for the device once per call.
    """
    return (x.detach().abs() > threshold).any(dim=0).nonzero().squeeze(1)


def log_histogram(x: torch.Tensor, log10_min: float, log10_max: float, hist_acc: torch.Tensor) -> None:
    """Fold the magnitudes of x into `hist_acc` (bins,) int64, a histogram of log10|x| over
    `bins` equal bins from log10_min to log10_max.

    Values below the range (zeros included) count in the first bin, values above it and NaN in
    the last. Written without a host synchronisation (`index_add_` rather than `bincount`,
    which must find its largest index first), so it runs as it is on a CUDA device too.
    """
    bins = hist_acc.numel()
    bin_width = (log10_max - log10_min) / bins
    position = x.detach().abs().float().reshape(-1)  # a fresh tensor: the in-place steps touch no input
    position.clamp_min_(1e-30).log10_().sub_(log10_min).div_(bin_width)
    position.clamp_(0, bins - 1).nan_to_num_(nan=bins - 1)
    index = position.long()
    hist_acc.index_add_(0, index, torch.ones((), dtype=hist_acc.dtype, device=hist_acc.device).expand(index.numel()))


def input_stats(
    x: torch.Tensor,
    threshold: float,
    absmax_acc: torch.Tensor,
    count_acc: torch.Tensor,
    hist_acc: torch.Tensor,
    log10_range: tuple[float, float],
    token_absmax_out: torch.Tensor | None = None,
) -> None:
    """What the calibration scan keeps of one Linear input: `feature_stats` and `log_histogram` together,
    and, given `token_absmax_out` (T,) float32, each token's largest |x| written there (the token axis)."""
    feature_stats(x, threshold, absmax_acc, count_acc)
    log_histogram(x, *log10_range, hist_acc)
    if token_absmax_out is not None:
        token_absmax(x, token_absmax_out)


def median_magnitude(x: torch.Tensor) -> float:
    """The lower median of |x| over all its values (torch.median's: element (n - 1) // 2 of the sorted |x|)."""
    return float(x.detach().abs().median())


def token_absmax(x: torch.Tensor, out: torch.Tensor) -> None:
    """Each token's (row's) largest |x|, into `out` (T,)."""
    out.copy_(x.detach().abs().amax(dim=-1))


def token_dim_absmax(
    x: torch.Tensor, token_absmax_out: torch.Tensor, token_argmax_out: torch.Tensor, dim_absmax_acc: torch.Tensor
) -> None:
    """The residual stream's statistics of one batch, x (T, K): each token's largest |x| and the first
    dimension that holds it (a token with NaN: NaN, and its first NaN), into `token_absmax_out` (T,) float32 and `token_argmax_out` (T,) int32, and
    each dimension's largest |x| folded into `dim_absmax_acc` (K,) float32."""
    magnitude = x.detach().abs()
    values = magnitude.amax(dim=-1, keepdim=True)  # NaN in a row with NaN
    token_absmax_out.copy_(values.squeeze(-1))
    at_maximum = (magnitude == values) | (magnitude.isnan() & values.isnan())
    token_argmax_out.copy_(at_maximum.int().argmax(dim=-1))  # the first, as torch leaves ties open
    torch.maximum(dim_absmax_acc, magnitude.amax(dim=0).float(), out=dim_absmax_acc)


def int8_linear(
    x: torch.Tensor,
    weight_int8: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    outlier_cols: torch.Tensor | None = None,
    outlier_weight: torch.Tensor | None = None,
    per_tensor: bool = False,
) -> torch.Tensor:
    """The W8A8 linear layer, x (T, K) -> (T, N) in x's dtype, composed of the ops above.

    Activations are quantized per token (`per_tensor`: one scale for all of x),
    or, given `outlier_cols` (n,), per token with those columns taken out and
    multiplied in floating point by `outlier_weight` (N, n) (LLM.int8()). The
    INT8 product is exact and dequantized with both scales; `bias` is added last.
    """
    options = (bias, outlier_cols, outlier_weight, per_tensor)
    return compose_int8_linear(sys.modules[__name__], x, weight_int8, weight_scale, *options)


def compose_int8_linear(
    primitives: ModuleType,
    x: torch.Tensor,
    weight_int8: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    outlier_cols: torch.Tensor | None,
    outlier_weight: torch.Tensor | None,
    per_tensor: bool,
) -> torch.Tensor:
    """`int8_linear` from the quantize, product and epilogue ops of `primitives` (this module, or `kernels.ops`)."""
    outlier_out = None
    if per_tensor:
        x_int8, x_scale = primitives.quantize_tensor(x)
    elif outlier_cols is None:
        x_int8, x_scale = primitives.quantize_rowwise(x)
    else:
        x_int8, x_scale, x_outliers = primitives.decompose_outliers(x, outlier_cols)  # (T, K), (T,), (T, n)
        outlier_out = x_outliers @ outlier_weight.t() if outlier_cols.numel() else None  # (T, N)
    acc = primitives.int8_matmul(x_int8, weight_int8)  # (T, N) int32
    return primitives.dequantize_epilogue(acc, x_scale, weight_scale, bias, outlier_out, x.dtype)
