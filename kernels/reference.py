"""Torch reference implementations of the quantization ops (the ground truth).

Conventions shared by every implementation (CUDA kernels must match them bit
for bit where integers are concerned):

- A *scale* is an abs-max, as bitsandbytes' `SCB`: a row quantizes as
  `q = clamp(round_half_even(x * (127 / absmax)), -127, 127)` in float32, and
  dequantizes as `x ~ q * absmax / 127`. An all-zero row has absmax 0 and
  quantizes to zeros (no NaN).
- INT8 x INT8 products accumulate exactly in INT32, and the accumulator
  dequantizes as `y = acc * (s_x[:, None] * s_w[None, :]) / 127**2`.
"""

from __future__ import annotations

import torch

INT8_MAX = 127.0

# int8 products are at most 127 * 127 = 16,129; a float32 sum of integers is exact
# while it stays below 2**24, so a K-chunk of at most 2**24 // 16129 = 1040 terms
# can go through an ordinary float32 GEMM without a single rounding.
EXACT_FP32_K_CHUNK = (1 << 24) // (127 * 127)


def _inverse_scale(absmax: torch.Tensor) -> torch.Tensor:
    """127 / absmax, with 0 where absmax is 0 so that zero rows stay zero."""
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    return torch.where(absmax > 0, INT8_MAX / safe, torch.zeros_like(absmax))


def _round_to_int8(scaled: torch.Tensor) -> torch.Tensor:
    return torch.round(scaled).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)


def feature_stats(x: torch.Tensor, threshold: float, absmax_acc: torch.Tensor, count_acc: torch.Tensor) -> None:
    """Fold one batch into running per-feature statistics.

    x: (T, K) activations; absmax_acc: (K,) float32, updated to the running abs-max;
    count_acc: (K,) int64, increased by the number of tokens with |x| > threshold.
    """
    magnitude = x.detach().abs()  # (T, K)
    torch.maximum(absmax_acc, magnitude.amax(dim=0).float(), out=absmax_acc)
    count_acc += (magnitude > threshold).sum(dim=0)


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Vector-wise quantization: one abs-max scale per row. Returns (int8 (R, C), float32 (R,))."""
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
    GEMM. Each K-chunk of at most EXACT_FP32_K_CHUNK terms is computed by a
    float32 GEMM, where every partial sum is an integer below 2**24 and hence
    exact, then converted to int32 and added up.
    """
    a32, b32 = a.float(), b.float()
    k = a.shape[1]
    n_chunks = max(1, -(-k // EXACT_FP32_K_CHUNK))
    bounds = [round(i * k / n_chunks) for i in range(n_chunks + 1)]
    acc = None
    for start, stop in zip(bounds[:-1], bounds[1:]):
        part = torch.mm(a32[:, start:stop], b32[:, start:stop].t()).to(torch.int32)
        acc = part if acc is None else acc.add_(part)
    return acc


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
