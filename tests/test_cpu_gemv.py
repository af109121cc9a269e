"""The small-batch CPU path (kernels.cpu_gemv): the reference bit for bit for W8A8, to float32 rounding
for weight-only and Q8_0, on every instruction set this CPU has."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

from int8wb.engine.quant.int8_linear import Int8Linear
from int8wb.kernels import cpu_gemv, cpu_int8, cpu_loader, ops, reference

pytestmark = pytest.mark.skipif(cpu_loader.library() is None, reason="the fused CPU kernels could not be built here")

ISAS = cpu_gemv.supported_isas()
# (tokens, in, out): K below one vector, tails after 64- and 32-byte steps, the default model's sizes.
SHAPES = [(1, 1, 1), (1, 13, 5), (2, 97, 33), (1, 576, 192), (3, 1536, 64), (cpu_gemv.MAX_ROWS, 2085, 31)]


def _layer(tokens: int, cols: int, out: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, cols, generator=generator) * 2
    x[:, min(3, cols - 1)] *= 30  # an outlier column
    weight = torch.randn(out, cols, generator=generator) * 0.05
    return x, weight, torch.randn(out, generator=generator)


def _w8a8_options(mode: str, x, weight_int8, weight_scale) -> dict:
    if mode == "per_tensor":
        return {"per_tensor": True}
    if mode in ("outliers", "no outliers found"):
        cols = reference.outlier_columns(x, 6.0 if mode == "outliers" else 1e9)
        return {
            "outlier_cols": cols,
            "outlier_weight": reference.dequantize_rowwise(weight_int8[:, cols], weight_scale),
        }
    return {}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["vectorwise", "per_tensor", "outliers", "no outliers found"])
def test_w8a8_is_the_reference_bit_for_bit(isa, shape, mode):
    x, weight, bias = _layer(*shape, seed=sum(shape))
    weight_int8, weight_scale = reference.quantize_rowwise(weight)
    options = _w8a8_options(mode, x, weight_int8, weight_scale)
    assert cpu_gemv.applies(x, weight_int8)
    with cpu_gemv.forced_isa(isa):
        for with_bias in (bias, None):
            expected = reference.int8_linear(x, weight_int8, weight_scale, with_bias, **options)
            assert torch.equal(cpu_int8.linear(x, weight_int8, weight_scale, with_bias, **options), expected)


@pytest.mark.parametrize("isa", ISAS)
def test_any_int8_weight_and_non_finite_tiny_and_zero_rows_match_the_reference(isa):
    """-128 weights (|w| = 128 unsigned), NaN and inf rows (NaN out), rows below MIN_ABSMAX and zero rows (zeros)."""
    generator = torch.Generator().manual_seed(7)
    weight_int8 = torch.randint(-128, 128, (40, 200), dtype=torch.int8, generator=generator)
    weight_int8[0] = -128
    weight_scale = torch.rand(40, generator=generator)
    x = torch.randn(6, 200, generator=generator)
    x[1, 5], x[2, 9], x[4] = float("nan"), float("-inf"), 0.0
    x[3] = torch.randn(200, generator=generator) * 1e-37  # abs-max below 2**-120: quantizes to zeros
    expected = reference.int8_linear(x, weight_int8, weight_scale)
    with cpu_gemv.forced_isa(isa):
        got = cpu_int8.linear(x, weight_int8, weight_scale)
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
    assert got[1:3].isnan().all() and not got[[0, 3, 4, 5]].isnan().any() and (got[3:5] == 0).all()


def test_the_gemm_path_zeroes_rows_below_the_smallest_scale_as_the_reference():
    x = torch.randn(cpu_gemv.MAX_ROWS + 5, 64, generator=torch.Generator().manual_seed(8))
    x[2] *= 1e-37
    weight_int8, weight_scale = reference.quantize_rowwise(torch.randn(16, 64))
    for path in (cpu_int8.FLOAT32_GEMM, cpu_int8.ONEDNN_VNNI):
        with cpu_int8.forced_product_path(path):
            assert torch.equal(
                cpu_int8.linear(x, weight_int8, weight_scale), reference.int8_linear(x, weight_int8, weight_scale)
            )


def _float_error_bound(x, weight) -> torch.Tensor:
    """A float32 sum of K products may differ from another order's by K * eps * sum |x w| (and a rounding of y)."""
    magnitude = x.abs() @ weight.abs().t()
    return (x.shape[1] + 2) * torch.finfo(torch.float32).eps * magnitude + 1e-30


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[1] % 32 == 0] + [(2, 96, 7)])
@pytest.mark.parametrize("format", ["weight-only", "q8_0"])
def test_float_activations_agree_with_the_reference_to_float32_rounding(isa, shape, format):
    x, weight, bias = _layer(*shape, seed=sum(shape) + 1)
    if format == "q8_0":
        weight_int8, weight_scale = reference.quantize_blocks(weight, cpu_gemv.Q8_0_BLOCK)
        dequantized = reference.dequantize_blocks(weight_int8, weight_scale)
    else:
        weight_int8, weight_scale = reference.quantize_rowwise(weight)
        dequantized = reference.dequantize_rowwise(weight_int8, weight_scale)
    with cpu_gemv.forced_isa(isa):
        got = ops.weight_only_linear(x, weight_int8, weight_scale, bias)
    expected = reference.weight_only_linear(x, weight_int8, weight_scale, bias)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert ((got - expected).abs() <= _float_error_bound(x, dequantized)).all()
    assert not torch.equal(got, torch.zeros_like(got))


def test_more_rows_than_max_rows_take_the_gemm_paths_with_the_same_results():
    x, weight, bias = _layer(cpu_gemv.MAX_ROWS + 1, 576, 64, seed=9)
    weight_int8, weight_scale = reference.quantize_rowwise(weight)
    assert not cpu_gemv.applies(x, weight_int8) and cpu_gemv.applies(x[:1], weight_int8)
    assert torch.equal(
        ops.weight_only_linear(x, weight_int8, weight_scale, bias),
        reference.weight_only_linear(x, weight_int8, weight_scale, bias),
    )
    single = ops.int8_linear(x[:2], weight_int8, weight_scale, bias)
    with cpu_gemv.bypassed():
        assert not cpu_gemv.applies(x[:2], weight_int8)
        assert torch.equal(ops.int8_linear(x[:2], weight_int8, weight_scale, bias), single)


@pytest.mark.parametrize(
    "method", ["vectorwise", "llm-int8", "llm-int8-dynamic", "absmax-tensor", "weight-only", "q8_0"]
)
def test_int8_linear_modules_decode_one_token_as_on_the_gemm_paths(method):
    linear = torch.nn.Linear(576, 96)
    x = torch.randn(1, 1, 576, generator=torch.Generator().manual_seed(10))
    x[..., 9] *= 40
    cols = reference.outlier_columns(x.reshape(-1, 576), 6.0)
    module = Int8Linear.from_linear(linear, method, 6.0, cols if method == "llm-int8" else None)
    with torch.inference_mode():
        got = module(x)
        with cpu_gemv.bypassed():
            before = module(x)
    if method in ("weight-only", "q8_0"):
        assert ((got - before).abs() <= _float_error_bound(x[0], module.dequantized_weight(torch.float32))).all()
    else:
        assert torch.equal(got, before)


def test_the_instruction_sets_follow_the_cpu_and_can_be_forced():
    capabilities = torch.cpu.get_capabilities()
    assert ISAS[-1] == cpu_gemv.SCALAR and cpu_gemv.isa() == ISAS[0]
    assert (cpu_gemv.AVX2 in ISAS) == bool(capabilities.get("avx2"))
    assert (cpu_gemv.AVX512_VNNI in ISAS) == bool(capabilities.get("avx512_vnni"))
    with cpu_gemv.forced_isa(cpu_gemv.SCALAR):
        assert cpu_gemv.isa() == cpu_gemv.SCALAR
    with pytest.raises(ValueError, match="not available here"), cpu_gemv.forced_isa("neon"):
        pass
    with cpu_loader.disabled():
        assert cpu_gemv.isa() is None and not cpu_gemv.applies(torch.zeros(1, 4), torch.zeros(2, 4, dtype=torch.int8))


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_the_source_builds_for_a_cpu_without_avx512(tmp_path):
    """-march=x86-64-v3 (AVX2, no AVX-512): the VNNI variants compile by their target attributes alone."""
    sources = [str(path) for path in cpu_loader.SOURCES]
    flags = [flag for flag in cpu_loader.FLAGS if not flag.startswith("-march")]
    result = subprocess.run(
        ["cc", *flags, "-march=x86-64-v3", *sources, "-o", str(tmp_path / "k.so"), "-lm"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_a_layer_s_prepared_call_follows_in_place_writes_and_replaced_tensors():
    linear = torch.nn.Linear(64, 16)
    module = Int8Linear.from_linear(linear, "vectorwise")
    x = torch.randn(1, 64, generator=torch.Generator().manual_seed(11))

    def expected():
        return reference.int8_linear(x, module.weight_int8, module.weight_scale, module.bias)

    with torch.no_grad():
        assert torch.equal(module(x), expected())
        module.weight_int8[3].neg_()  # in place: the prepared call reads the same storage
        assert torch.equal(module(x), expected())
        module.weight_int8 = torch.randint(-127, 128, (16, 64), dtype=torch.int8)  # a new tensor
        module.weight_scale = module.weight_scale.double()  # a dtype the kernels do not read: the ops path
        assert torch.equal(module(x), expected())
        module.weight_scale = module.weight_scale.float()
        assert torch.equal(module(x), expected())
