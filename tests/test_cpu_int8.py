"""The fused CPU INT8 path (kernels.cpu_int8) against the torch reference and torch._int_mm, bit for bit."""

from __future__ import annotations

import pytest
import torch

from int8wb.engine.quant.int8_linear import Int8Linear
from int8wb.kernels import cpu_int8, cpu_loader, ops, reference

pytestmark = pytest.mark.skipif(cpu_loader.library() is None, reason="the fused CPU kernels could not be built here")

# (tokens, in, out): odd sizes, one GEMM for the whole weight, several weight blocks (K = 4096 gives
# 256 rows per block), and K past 1,040 where the float32 GEMM's exactness depends on the data.
SHAPES = [(1, 1, 1), (7, 13, 5), (64, 576, 96), (33, 2085, 31), (40, 4096, 600)]


def _layer(tokens: int, cols: int, out: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, cols, generator=generator) * 2
    x[:, min(3, cols - 1)] *= 30  # an outlier column
    weight_int8, weight_scale = reference.quantize_rowwise(torch.randn(out, cols, generator=generator) * 0.05)
    bias = torch.randn(out, generator=generator)
    return x, weight_int8, weight_scale, bias


def _outliers(x, weight_int8, weight_scale):
    cols = reference.outlier_columns(x, 6.0)
    return {"outlier_cols": cols, "outlier_weight": reference.dequantize_rowwise(weight_int8[:, cols], weight_scale)}


@pytest.mark.parametrize("path", [cpu_int8.FLOAT32_GEMM, cpu_int8.ONEDNN_VNNI])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["vectorwise", "per_tensor", "outliers"])
def test_fused_linear_is_the_reference_bit_for_bit(path, shape, mode):
    x, weight_int8, weight_scale, bias = _layer(*shape, seed=sum(shape))
    options = {}
    if mode == "per_tensor":
        options = {"per_tensor": True}
    elif mode == "outliers":
        options = _outliers(x, weight_int8, weight_scale)
    with cpu_int8.forced_product_path(path):
        for with_bias in (bias, None):
            expected = reference.int8_linear(x, weight_int8, weight_scale, with_bias, **options)
            assert torch.equal(cpu_int8.linear(x, weight_int8, weight_scale, with_bias, **options), expected)


def test_the_float32_gemm_matches_torch_int_mm():
    """The accumulator the epilogue sees is torch._int_mm's, whichever path made it."""
    x, weight_int8, weight_scale, bias = _layer(48, 4096, 300, seed=1)
    x_int8, x_scale = reference.quantize_rowwise(x)
    exact = torch._int_mm(x_int8, weight_int8.t())
    expected = reference.dequantize_epilogue(exact, x_scale, weight_scale, bias)
    for path in (cpu_int8.FLOAT32_GEMM, cpu_int8.ONEDNN_AMX):
        with cpu_int8.forced_product_path(path):
            assert torch.equal(cpu_int8.linear(x, weight_int8, weight_scale, bias), expected)
            assert torch.equal(cpu_int8.int8_matmul(x_int8, weight_int8), exact)


def test_rows_too_heavy_for_one_float32_gemm_are_split_and_stay_exact():
    # Integer activations with |q| near 127 on 4,099 columns against weights of |w| = 127: both the L1
    # bound and the product of L2 norms pass 2**24.
    generator = torch.Generator().manual_seed(2)
    x = torch.randint(100, 128, (6, 4099), generator=generator).float()
    x[1] = -x[1]
    weight_int8 = torch.full((5, 4099), -127, dtype=torch.int8)
    weight_int8[2] = 127
    weight_scale = torch.rand(5, generator=generator)
    x_int8, x_scale = reference.quantize_rowwise(x)
    assert float(x_int8.float().abs().sum(dim=1).max()) * 128 > reference.FLOAT32_EXACT_INTEGERS
    expected = reference.dequantize_epilogue(torch._int_mm(x_int8, weight_int8.t()), x_scale, weight_scale)
    assert torch.equal(cpu_int8.linear(x, weight_int8, weight_scale), expected)


def test_spread_rows_too_heavy_for_the_l1_bound_take_one_gemm_by_the_l2_bound(monkeypatch):
    """LLM.int8()'s rows without their outlier columns: L1 * 128 passes 2**24, the L2 norms do not; one exact GEMM."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(48, 6000, generator=generator)
    weight_int8, weight_scale = reference.quantize_rowwise(torch.randn(300, 6000, generator=generator))
    x_int8, x_scale = reference.quantize_rowwise(x)
    q, w = x_int8.float(), weight_int8.float()
    assert float(q.abs().sum(dim=1).max()) * 128 > reference.FLOAT32_EXACT_INTEGERS
    assert float(q.norm(dim=1).max() * w.norm(dim=1).max()) < reference.FLOAT32_EXACT_INTEGERS * 0.99

    def no_chunks(*args):
        raise AssertionError("the product was split into K-chunks")

    monkeypatch.setattr(reference, "exact_chunk_bounds", no_chunks)
    expected = reference.dequantize_epilogue(torch._int_mm(x_int8, weight_int8.t()), x_scale, weight_scale)
    with cpu_int8.forced_product_path(cpu_int8.FLOAT32_GEMM):
        assert torch.equal(cpu_int8.linear(x, weight_int8, weight_scale), expected)


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (300, 1536)])
def test_outlier_columns_match_the_reference(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 3
    x[-1, 0] = -6.5  # a negative outlier counts too
    x[0, -1] = 6.0  # exactly at the threshold does not
    assert torch.equal(cpu_int8.outlier_columns(x, 6.0), reference.outlier_columns(x, 6.0))


def test_input_stats_keep_exact_extremes_and_counts_and_the_histogram_to_the_eye():
    generator = torch.Generator().manual_seed(4)
    expected = (torch.zeros(96), torch.zeros(96, dtype=torch.int64), torch.zeros(90, dtype=torch.int64))
    fused = tuple(t.clone() for t in expected)
    for tokens in (1, 37, 512):
        x = torch.randn(tokens, 96, generator=generator) * 3
        x[0, :4] = torch.tensor([0.0, float("inf"), 1e-20, 3e6])  # below and above the histogram's range
        reference.input_stats(x, 6.0, *expected, (-4.0, 5.0))
        cpu_int8.input_stats(x, 6.0, *fused, (-4.0, 5.0))
    assert torch.equal(fused[0], expected[0]) and torch.equal(fused[1], expected[1])
    assert fused[2].sum() == expected[2].sum() == (1 + 37 + 512) * 96
    assert fused[2][0] == expected[2][0] and fused[2][-1] == expected[2][-1]
    # Only values within a float32 rounding of a bin edge may land in the neighbouring bin.
    assert (fused[2] - expected[2]).abs().sum() <= 4


def test_input_stats_write_each_tokens_largest_magnitude_as_the_reference():
    x = torch.randn(37, 96, generator=torch.Generator().manual_seed(6)) * 3
    x[5, 7], x[9, 2] = -4000.0, float("inf")
    state = (torch.zeros(96), torch.zeros(96, dtype=torch.int64), torch.zeros(90, dtype=torch.int64))
    expected, fused = torch.full((37,), -1.0), torch.full((37,), -1.0)
    reference.input_stats(x, 6.0, *(t.clone() for t in state), (-4.0, 5.0), expected)
    cpu_int8.input_stats(x, 6.0, *state, (-4.0, 5.0), fused)
    assert torch.equal(fused, expected)
    assert fused[5] == 4000.0 and fused[9] == float("inf")


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (512, 576), (33, 2085)])
def test_token_dim_absmax_matches_the_reference(shape):
    rows, cols = shape
    generator = torch.Generator().manual_seed(rows + cols)
    fused_acc = torch.rand(cols, generator=generator)  # a running maximum from earlier batches
    expected_acc = fused_acc.clone()
    for batch in range(2):
        x = torch.randn(rows, cols, generator=generator)
        x[0, cols // 2] = -900.0 * (batch + 1)  # a massive activation: negative, in the middle of its row
        expected = (torch.empty(rows), torch.empty(rows, dtype=torch.int32))
        fused = (torch.empty(rows), torch.empty(rows, dtype=torch.int32))
        reference.token_dim_absmax(x, *expected, expected_acc)
        cpu_int8.token_dim_absmax(x, *fused, fused_acc)
        assert torch.equal(fused[0], expected[0]) and torch.equal(fused[1], expected[1])
        assert torch.equal(fused_acc, expected_acc)
        assert fused[0][0] == 900.0 * (batch + 1) and fused[1][0] == cols // 2
    assert fused_acc[cols // 2] == 1800.0


def test_token_dim_absmax_points_at_the_first_nan_of_a_row_as_the_reference():
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(9))
    x[1, 5], x[1, 30] = float("inf"), float("nan")
    x[2, 12], x[2, 20] = -float("nan"), float("nan")
    expected = (torch.empty(3), torch.empty(3, dtype=torch.int32), torch.zeros(40))
    fused = (torch.empty(3), torch.empty(3, dtype=torch.int32), torch.zeros(40))
    reference.token_dim_absmax(x, *expected)
    cpu_int8.token_dim_absmax(x, *fused)
    assert fused[1].tolist()[1:] == expected[1].tolist()[1:] == [30, 12]
    assert fused[0][1:].isnan().all() and expected[0][1:].isnan().all()
    assert fused[1][0] == expected[1][0] and fused[0][0] == expected[0][0]


@pytest.mark.parametrize("n", [1, 2, 7, 512 * 576])
def test_median_magnitude_is_torchs_lower_median_exactly(n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 10
    x[: n // 3] = x[: n // 3].round()  # ties, and magnitudes that share their high 16 bits
    x[0] = -x.abs().max() - 1  # the largest magnitude is negative
    assert cpu_int8.median_magnitude(x) == reference.median_magnitude(x) == float(x.abs().median())
    assert cpu_int8.median_magnitude(x.reshape(-1, 1)[::1]) == reference.median_magnitude(x)


def test_without_the_library_the_ops_run_the_reference():
    x, weight_int8, weight_scale, bias = _layer(64, 576, 96, seed=5)
    fused = ops.int8_linear(x, weight_int8, weight_scale, bias)
    with cpu_loader.disabled():
        assert not cpu_int8.fused_available(x)
        assert "disabled" in ops.int8_product_path("cpu")
        assert torch.equal(ops.int8_linear(x, weight_int8, weight_scale, bias), fused)
    assert cpu_int8.fused_available(x)


def test_the_detected_path_follows_the_cpu_and_can_be_forced():
    has_vnni = bool(torch.cpu.get_capabilities().get("avx512_vnni")) and torch.backends.mkldnn.is_available()
    assert (cpu_int8.detected_product_path() != cpu_int8.FLOAT32_GEMM) == has_vnni
    with cpu_int8.forced_product_path(cpu_int8.FLOAT32_GEMM):
        assert cpu_int8.product_path() == cpu_int8.FLOAT32_GEMM
        assert ops.int8_product_path("cpu").startswith("cpu: float32-gemm, fused C passes")
    assert cpu_int8.product_path() == cpu_int8.detected_product_path()
    with pytest.raises(ValueError, match="unknown CPU INT8 path"), cpu_int8.forced_product_path("int4"):
        pass


@pytest.mark.parametrize("method", ["absmax-tensor", "vectorwise", "llm-int8", "llm-int8-dynamic"])
def test_int8_linear_module_gives_the_reference_output(method):
    linear = torch.nn.Linear(576, 96)
    x = torch.randn(2, 32, 576, generator=torch.Generator().manual_seed(6))
    x[..., 9] *= 40
    cols = reference.outlier_columns(x.reshape(-1, 576), 6.0)
    module = Int8Linear.from_linear(linear, method, 6.0, cols if method == "llm-int8" else None)
    options = {}
    if method == "absmax-tensor":
        options = {"per_tensor": True}
    elif method == "llm-int8":
        options = {"outlier_cols": cols, "outlier_weight": module.outlier_weight}
    elif method == "llm-int8-dynamic":
        options = _outliers(x.reshape(-1, 576), module.weight_int8, module.weight_scale)
    expected = reference.int8_linear(
        x.reshape(-1, 576), module.weight_int8, module.weight_scale, module.bias, **options
    )
    with torch.no_grad():
        assert torch.equal(module(x).reshape(-1, 96), expected)


def test_readers_of_the_same_activations_quantize_them_once_and_a_write_is_seen(monkeypatch):
    """q/k/v share one quantized copy of their input; after an in-place write the next call quantizes again."""
    x, weight_int8, weight_scale, bias = _layer(64, 576, 96, seed=4)
    other_int8, other_scale = reference.quantize_rowwise(torch.randn(32, 576))
    passes = []
    original = cpu_int8._quantize
    monkeypatch.setattr(cpu_int8, "_quantize", lambda *args: passes.append(1) or original(*args))
    hidden = x.reshape(4, 16, 576)  # as a Linear receives it: each call reshapes it to a new view
    with cpu_int8.forced_product_path(cpu_int8.FLOAT32_GEMM):
        for w, s in ((weight_int8, weight_scale), (other_int8, other_scale), (weight_int8, weight_scale)):
            got = cpu_int8.linear(hidden.reshape(-1, 576), w, s)
            assert torch.equal(got, reference.int8_linear(x, w, s))
        assert len(passes) == 1
        hidden.mul_(3.0)  # x too (hidden is its view); the version counter moves: the old copy must not be used
        got = cpu_int8.linear(hidden.reshape(-1, 576), weight_int8, weight_scale)
        assert len(passes) == 2 and torch.equal(got, reference.int8_linear(x, weight_int8, weight_scale))
        options = _outliers(hidden.reshape(-1, 576), weight_int8, weight_scale)
        got = cpu_int8.linear(hidden.reshape(-1, 576), weight_int8, weight_scale, **options)
        assert len(passes) == 3  # other outlier columns left out: another quantized copy
        assert torch.equal(got, reference.int8_linear(x, weight_int8, weight_scale, **options))


def test_a_freed_input_never_matches_a_new_one_at_its_address():
    x, weight_int8, weight_scale, _ = _layer(64, 576, 96, seed=5)
    with cpu_int8.forced_product_path(cpu_int8.FLOAT32_GEMM):
        for seed in range(6):  # same shape each time, so the allocator may hand back the same block
            fresh = torch.randn(64, 576, generator=torch.Generator().manual_seed(seed))
            assert torch.equal(
                cpu_int8.linear(fresh, weight_int8, weight_scale),
                reference.int8_linear(fresh, weight_int8, weight_scale),
            )
            assert torch.equal(cpu_int8.outlier_columns(fresh, 2.5), reference.outlier_columns(fresh, 2.5))
            del fresh
