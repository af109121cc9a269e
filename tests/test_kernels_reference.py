"""The torch reference ops against plain torch and NumPy: the ground truth has to be right first."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from int8wb.kernels import reference

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def numpy_quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Abs-max row quantization written independently in float32 NumPy (np.rint rounds half to even).

    The inverse scale is `(1 / absmax) * 127`, two float32 roundings: that is how torch evaluates
    the reference's `127.0 / absmax` (`Tensor.__rtruediv__` is a reciprocal times the scalar).
    """
    x = x.astype(np.float32)
    absmax = np.abs(x).max(axis=1)
    with np.errstate(divide="ignore"):
        reciprocal = (np.float32(1.0) / absmax).astype(np.float32)
        inverse = np.where(absmax > 0, reciprocal * np.float32(127.0), np.float32(0.0)).astype(np.float32)
    q = np.clip(np.rint(x * inverse[:, None]), -127, 127).astype(np.int8)
    return q, absmax


# --- quantize_rowwise ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_rowwise_rounds_half_to_even(dtype):
    # absmax 127 gives inverse scale exactly 1.0, so the halves are exact ties.
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -2.5, -3.5, 126.5, -0.5]], dtype=dtype)
    q, absmax = reference.quantize_rowwise(x)
    assert q.dtype == torch.int8 and absmax.dtype == torch.float32
    assert q.tolist() == [[127, 0, 2, 2, -2, -4, 126, 0]]
    assert absmax.tolist() == [127.0]


def test_rowwise_ties_after_scaling():
    # absmax 254: inverse scale 0.5, so 3 -> 1.5 -> 2, 5 -> 2.5 -> 2, -1 -> -0.5 -> 0, 7 -> 3.5 -> 4.
    x = torch.tensor([[254.0, 3.0, 5.0, -1.0, 7.0, -254.0]])
    q, absmax = reference.quantize_rowwise(x)
    assert q.tolist() == [[127, 2, 2, 0, 4, -127]]
    assert absmax.item() == 254.0


def test_rowwise_zero_rows_give_zero_scale_and_zeros():
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [0.0, -0.0, 0.0]])
    q, absmax = reference.quantize_rowwise(x)
    assert absmax.tolist() == [0.0, 2.0, 0.0]
    assert q[0].tolist() == [0, 0, 0] and q[2].tolist() == [0, 0, 0]
    assert q[1].tolist() == [64, -127, 32]  # 63.5 -> 64 (even), 31.75 -> 32
    assert not torch.isnan(reference.dequantize_rowwise(q, absmax)).any()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (33, 1041), (5, 4096)])
def test_rowwise_matches_numpy(dtype, shape):
    generator = torch.Generator().manual_seed(shape[0] * 131 + shape[1])
    x = (torch.randn(shape, generator=generator) * 3).to(dtype)
    x[0, -1] = 40.0  # an outlier in the first row
    q, absmax = reference.quantize_rowwise(x)
    expected_q, expected_absmax = numpy_quantize_rows(x.float().numpy())
    np.testing.assert_array_equal(q.numpy(), expected_q)
    np.testing.assert_array_equal(absmax.numpy(), expected_absmax)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_rowwise_dequantization_error_is_half_a_step(dtype):
    x = (torch.randn(64, 515, generator=torch.Generator().manual_seed(3)) * 2).to(dtype)
    q, absmax = reference.quantize_rowwise(x)
    restored = reference.dequantize_rowwise(q, absmax, torch.float32)
    step = absmax[:, None] / 127.0
    error = (restored - x.float()).abs()
    assert (error <= step * 0.5 * (1 + 1e-5)).all()
    assert error.max() > step.min() * 0.1  # the bound is not vacuous: quantization did round


def test_dequantize_rowwise_broadcasts_a_scalar_scale_and_casts():
    q = torch.tensor([[127, -64], [1, 0]], dtype=torch.int8)
    y = reference.dequantize_rowwise(q, torch.tensor(2.0), torch.float16)
    assert y.dtype == torch.float16
    expected = torch.tensor([[2.0, -64 * 2 / 127], [2 / 127, 0.0]])
    torch.testing.assert_close(y.float(), expected, rtol=1e-3, atol=0)


# --- quantize_tensor --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_tensor_quantization_uses_one_scale(dtype):
    x = torch.tensor([[1.0, -4.0], [0.5, 2.0]], dtype=dtype)
    q, absmax = reference.quantize_tensor(x)
    assert absmax.dim() == 0 and absmax.item() == 4.0
    assert q.tolist() == [[32, -127], [16, 64]]  # 31.75 -> 32, 15.875 -> 16, 63.5 -> 64


def test_tensor_quantization_of_zeros():
    q, absmax = reference.quantize_tensor(torch.zeros(3, 4))
    assert absmax.item() == 0.0 and (q == 0).all()


# --- non-finite and tiny values: one defined result, which the CUDA kernels reproduce ----------------

INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_rows_with_nan_or_inf_quantize_to_zeros_and_keep_their_scale(dtype):
    x = torch.tensor([[1.0, NAN, -2.0], [INF, 3.0, -1.0], [-INF, 0.5, 0.0], [4.0, -2.0, 1.0]], dtype=dtype)
    q, absmax = reference.quantize_rowwise(x)
    assert q[:3].eq(0).all() and q[3].tolist() == [127, -64, 32]
    assert absmax[0].isnan() and absmax[1:3].tolist() == [INF, INF] and absmax[3] == 4.0
    y = reference.dequantize_rowwise(q, absmax)
    assert y[:3].isnan().all() and y[3].isfinite().all()  # the fault shows in the output


def test_a_non_finite_value_makes_the_whole_tensor_zero_under_one_scale():
    q, absmax = reference.quantize_tensor(torch.tensor([[1.0, 2.0], [NAN, 3.0]]))
    assert absmax.isnan() and q.eq(0).all()


def test_rows_too_small_for_a_finite_inverse_scale_quantize_to_zeros():
    tiny = reference.MIN_ABSMAX
    x = torch.tensor([[1e-38, -5e-39, 0.0], [tiny, -tiny / 2, 0.0], [3e-37, 1e-37, 0.0]])
    q, absmax = reference.quantize_rowwise(x)
    assert q[0].eq(0).all() and q[2].eq(0).all()  # 127 / 3e-37 overflows float32: no scale
    assert q[1].tolist() == [127, -64, 0]  # from MIN_ABSMAX on, rows quantize as usual
    assert torch.isfinite(reference.INT8_MAX / absmax[1]) and absmax[0] == x[0, 0]


def test_an_outlier_column_keeps_its_non_finite_value_out_of_the_int8_part():
    x = torch.tensor([[1.0, INF, -2.0], [NAN, 0.5, 4.0]])
    q, absmax, outliers = reference.decompose_outliers(x, torch.tensor([1]))
    assert q[0].tolist() == [64, 0, -127] and absmax[0] == 2.0
    assert q[1].eq(0).all() and absmax[1].isnan()
    assert outliers[0, 0] == INF and outliers[1, 0] == 0.5


# --- feature_stats ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_feature_stats_accumulates_over_batches(dtype):
    generator = torch.Generator().manual_seed(5)
    batches = [(torch.randn(n, 37, generator=generator) * 4).to(dtype) for n in (11, 1, 29)]
    absmax = torch.zeros(37)
    count = torch.zeros(37, dtype=torch.int64)
    for batch in batches:
        reference.feature_stats(batch, 6.0, absmax, count)
    every = torch.cat(batches).float().numpy()
    np.testing.assert_array_equal(absmax.numpy(), np.abs(every).max(axis=0))
    np.testing.assert_array_equal(count.numpy(), (np.abs(every) > 6.0).sum(axis=0))
    assert count.sum() > 0  # the threshold is crossed somewhere, so the count is tested


def test_feature_stats_keeps_a_larger_running_max():
    absmax = torch.tensor([10.0, 0.0])
    count = torch.tensor([3, 0])
    reference.feature_stats(torch.tensor([[-2.0, 7.0]]), 6.0, absmax, count)
    assert absmax.tolist() == [10.0, 7.0] and count.tolist() == [3, 1]


def test_feature_stats_compares_in_the_input_dtype():
    # 5.999 rounds to 6.0 in float16, and 6.0 > 6.0 is false: the count follows torch's comparison.
    absmax = torch.zeros(1)
    count = torch.zeros(1, dtype=torch.int64)
    reference.feature_stats(torch.tensor([[6.0]], dtype=torch.float16), 5.999, absmax, count)
    assert count.item() == 0
    reference.feature_stats(torch.tensor([[6.0]], dtype=torch.float32), 5.999, absmax, count)
    assert count.item() == 1


# --- decompose_outliers -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_decompose_outliers(dtype):
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(9, 21, generator=generator).to(dtype)
    x[:, 4] = 60.0
    x[3, 17] = -90.0
    columns = torch.tensor([17, 4])
    q, absmax, outliers = reference.decompose_outliers(x, columns)
    assert outliers.dtype == dtype and outliers.shape == (9, 2)
    assert torch.equal(outliers, x[:, [17, 4]])
    assert (q[:, [4, 17]] == 0).all()
    regular = x.float().clone()
    regular[:, [4, 17]] = 0
    expected_q, expected_absmax = numpy_quantize_rows(regular.numpy())
    np.testing.assert_array_equal(q.numpy(), expected_q)
    np.testing.assert_array_equal(absmax.numpy(), expected_absmax)
    assert absmax.max() < 10  # the outliers no longer set the scale


def test_decompose_without_outliers_is_rowwise_quantization():
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(8))
    q, absmax, outliers = reference.decompose_outliers(x, torch.zeros(0, dtype=torch.int64))
    expected_q, expected_absmax = reference.quantize_rowwise(x)
    assert torch.equal(q, expected_q) and torch.equal(absmax, expected_absmax) and outliers.shape == (5, 0)


# --- int8_matmul ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "m, k, n",
    [(1, 1, 1), (3, 5, 7), (17, 1040, 9), (16, 1041, 33), (33, 2085, 31), (128, 4096, 64), (2, 5000, 3)],
)
def test_int8_matmul_is_bit_exact(m, k, n):
    generator = torch.Generator().manual_seed(m * 7 + k + n)
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=generator)
    b = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=generator)
    result = reference.int8_matmul(a, b)
    assert result.dtype == torch.int32
    assert torch.equal(result, torch._int_mm(a, b.t()))


@pytest.mark.parametrize("k", [1040, 1041, 4099])
def test_int8_matmul_worst_case_magnitudes(k):
    # Every product is +-16129: a float32 sum of more than 1040 of them would round.
    a = torch.full((2, k), 127, dtype=torch.int8)
    b = torch.full((3, k), -127, dtype=torch.int8)
    b[1] = 127
    result = reference.int8_matmul(a, b)
    assert result[0, 0].item() == -16129 * k and result[1, 1].item() == 16129 * k
    assert torch.equal(result, torch._int_mm(a, b.t()))


# --- dequantize_epilogue ----------------------------------------------------------------


def test_epilogue_against_float64():
    generator = torch.Generator().manual_seed(9)
    acc = torch.randint(-(2**22), 2**22, (6, 10), dtype=torch.int32, generator=generator)
    rows = torch.rand(6, generator=generator) * 5
    cols = torch.rand(10, generator=generator) * 0.1
    bias = torch.randn(10, generator=generator)
    extra = torch.randn(6, 10, generator=generator)
    y = reference.dequantize_epilogue(acc, rows, cols, bias=bias, outlier_out=extra)
    expected = acc.double() * rows.double()[:, None] * cols.double()[None, :] / 127**2 + extra.double() + bias.double()
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_epilogue_output_dtype_and_scalar_scales(dtype):
    acc = torch.tensor([[16129, -16129], [0, 32258]], dtype=torch.int32)
    y = reference.dequantize_epilogue(acc, torch.tensor(2.0), torch.tensor(0.5), out_dtype=dtype)
    assert y.dtype == dtype
    assert y.float().tolist() == [[1.0, -1.0], [0.0, 2.0]]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_int8_linear_error_bound(dtype):
    """Quantize x and w row-wise, multiply exactly, dequantize: close to the float product."""
    generator = torch.Generator().manual_seed(10)
    x = torch.randn(12, 300, generator=generator).to(dtype)
    w = (torch.randn(20, 300, generator=generator) * 0.05).to(dtype)
    qx, sx = reference.quantize_rowwise(x)
    qw, sw = reference.quantize_rowwise(w)
    y = reference.dequantize_epilogue(reference.int8_matmul(qx, qw), sx, sw, out_dtype=torch.float32)
    exact = x.double() @ w.double().t()
    # Each factor is off by at most half a step; the sum of K such terms bounds the error.
    bound = 300 * (sx[:, None] * sw[None, :]).double() / 127 * (0.5 + 0.5 + 0.25 / 127)
    assert ((y.double() - exact).abs() <= bound).all()
    relative = (y.double() - exact).norm() / exact.norm()
    assert relative < 0.02


# --- outlier_columns (dynamic LLM.int8()) --------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_outlier_columns_are_those_with_any_value_over_the_threshold(dtype):
    generator = torch.Generator().manual_seed(9)
    x = (torch.rand(50, 40, generator=generator) * 5).to(dtype)  # all below 6
    x[7, 3], x[49, 31], x[0, 12], x[2, 20], x[5, 8] = 6.5, -100.0, 6.0, NAN, INF
    columns = reference.outlier_columns(x, 6.0)
    assert columns.dtype == torch.int64 and columns.tolist() == [3, 8, 31]  # 6.0 is not over; NaN never is
    expected = np.flatnonzero((np.abs(x.float().numpy()) > 6.0).any(axis=0))
    assert columns.tolist() == expected.tolist()


def test_outlier_columns_compare_in_the_input_dtype():
    x = torch.tensor([[6.0, 1.0]], dtype=torch.float16)
    assert reference.outlier_columns(x, 5.999).tolist() == []  # 5.999 is 6.0 in float16
    assert reference.outlier_columns(x.float(), 5.999).tolist() == [0]


# --- log_histogram (the scan's histogram of magnitudes) ---------------------------------------------


def test_log_histogram_counts_each_magnitude_in_its_bin():
    low, high, bins = -4.0, 5.0, 90
    centres = 10 ** (low + (np.arange(bins) + 0.5) * (high - low) / bins)  # well inside each bin
    repeats = np.arange(bins) % 4 + 1
    values = np.repeat(centres, repeats) * np.where(np.arange(repeats.sum()) % 2, -1, 1)
    hist = torch.zeros(bins, dtype=torch.int64)
    reference.log_histogram(torch.tensor(values, dtype=torch.float32).reshape(1, -1), low, high, hist)
    assert hist.tolist() == repeats.tolist()


def test_log_histogram_puts_out_of_range_values_in_the_end_bins_and_accumulates():
    hist = torch.zeros(90, dtype=torch.int64)
    reference.log_histogram(torch.tensor([[0.0, 1e-9, -1e-30, 2e6, INF, NAN]]), -4.0, 5.0, hist)
    assert hist[0] == 3 and hist[-1] == 3 and hist.sum() == 6
    reference.log_histogram(torch.tensor([[1.0]], dtype=torch.bfloat16), -4.0, 5.0, hist)
    assert hist[40] == 1 and hist.sum() == 7  # log10(1) = 0: the first bin of the fifth decade


def test_log_histogram_matches_the_scan_histogram_it_replaces():
    """The same bins as the log10 + bincount the scan computed before it became an op."""
    x = torch.randn(300, 77, generator=torch.Generator().manual_seed(4)) * torch.logspace(-5, 4, 77)
    log_mag = x.abs().float().clamp_min(1e-30).log10()
    former = torch.bincount(((log_mag + 4.0) / 0.1).long().clamp_(0, 89).flatten(), minlength=90)
    hist = torch.zeros(90, dtype=torch.int64)
    reference.log_histogram(x, -4.0, 5.0, hist)
    assert torch.equal(hist, former)
