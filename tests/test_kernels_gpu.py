"""Every CUDA kernel against its torch reference, on a GPU (skipped without one).

The reference runs on the CPU (the ground truth); the CUDA op runs on the
device. Tolerances: int8 values, scales, abs-maxes, counts, outlier columns and
INT32 products are compared bit for bit. Floating-point outputs
(dequantize_epilogue, dequantize_rowwise) perform the same float32 operations as
the CPU reference, so they are expected to agree exactly too; the test allows
one rounding of the output dtype (relative 1e-6 for float32, 2**-10 for
float16, 2**-7 for bfloat16) so that a differently ordered but correct float32
evaluation would still pass. Cases marked `quick` are the GPU runner's quick
subset (bench/gpu_check.sh --quick): one shape per kernel.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from int8wb.kernels import cuda_loader, ops, reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: torch.cuda.is_available() is False"),
]

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
OUTPUT_RTOL = {torch.float32: 1e-6, torch.float16: 2**-10, torch.bfloat16: 2**-7}
QUICK = pytest.mark.quick
# Odd sizes, sizes around the 16-byte packs and the 256-thread blocks, a single row, and wide rows.
SHAPES = [
    (1, 1),
    (3, 7),
    (2, 8),
    (17, 1041),
    pytest.param((64, 4096), marks=QUICK),
    (257, 5003),
    (1000, 24),
    (5, 11008),
]


@pytest.fixture(scope="module")
def device():
    device = torch.device("cuda", torch.cuda.current_device())
    assert cuda_loader.kernels_available(device), cuda_loader.unavailable_reason(device)
    return device


def activations(shape, dtype, seed):
    """Gaussian activations with a few large feature columns, as real LLM inputs have."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator) * 2
    if shape[1] > 4:
        x[:, shape[1] // 3] *= 30
    if shape[0] > 2:
        x[1] = 0.0  # a zero row
    return x.to(dtype)


def seed_of(shape, dtype) -> int:
    return shape[0] * 7919 + shape[1] + FLOAT_DTYPES.index(dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_quantize_rowwise(device, shape, dtype):
    x = activations(shape, dtype, seed_of(shape, dtype))
    q, absmax = ops.quantize_rowwise(x.to(device))
    expected_q, expected_absmax = reference.quantize_rowwise(x)
    assert q.device.type == "cuda" and q.dtype == torch.int8 and absmax.dtype == torch.float32
    assert torch.equal(q.cpu(), expected_q)
    assert torch.equal(absmax.cpu(), expected_absmax)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_quantize_rowwise_exact_ties(device, dtype):
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -2.5, -3.5, 126.5, -0.5], [0.0] * 8], dtype=dtype)
    q, absmax = ops.quantize_rowwise(x.to(device))
    assert q.cpu().tolist() == [[127, 0, 2, 2, -2, -4, 126, 0], [0] * 8]
    assert absmax.cpu().tolist() == [127.0, 0.0]


@QUICK
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_non_finite_and_tiny_rows_quantize_as_the_reference_says(device, dtype):
    """NaN and inf rows become zeros with their non-finite scale; rows too small for a scale become zeros."""
    x = activations((6, 40), dtype, 12)
    x[0, 3], x[2, 39], x[3, 0] = float("nan"), float("inf"), -float("inf")
    if dtype != torch.float16:  # float16 has no values this small
        x[4] = torch.linspace(-3e-37, 3e-37, 40)
    for op in ("quantize_rowwise", "quantize_tensor"):
        got, expected = getattr(ops, op)(x.to(device)), getattr(reference, op)(x)
        assert torch.equal(got[0].cpu(), expected[0]), op
        assert _same_floats(got[1], expected[1]), op
    q, absmax, outliers = ops.decompose_outliers(x.to(device), torch.tensor([3, 39], device=device))
    expected_q, expected_absmax, expected_outliers = reference.decompose_outliers(x, torch.tensor([3, 39]))
    assert torch.equal(q.cpu(), expected_q) and _same_floats(absmax, expected_absmax)
    assert _same_floats(outliers, expected_outliers)


def _same_floats(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """Bit-for-bit equal, NaN where the other has NaN."""
    got = got.cpu()
    nan = got.isnan()
    same_nan = torch.equal(nan, expected.isnan())
    return got.dtype == expected.dtype and same_nan and torch.equal(got[~nan], expected[~nan])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_misaligned_and_strided_inputs(device, dtype):
    base = activations((9, 1025), dtype, 11).to(device)
    shifted = base.reshape(-1)[1 : 1 + 8 * 1024].view(8, 1024)  # contiguous, 16-byte misaligned
    transposed = base[:, :512].t()  # not contiguous
    for x in (shifted, transposed):
        q, absmax = ops.quantize_rowwise(x)
        expected_q, expected_absmax = reference.quantize_rowwise(x.cpu())
        assert torch.equal(q.cpu(), expected_q) and torch.equal(absmax.cpu(), expected_absmax)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_quantize_tensor(device, shape, dtype):
    x = activations(shape, dtype, seed_of(shape, dtype) + 1)
    q, absmax = ops.quantize_tensor(x.to(device))
    expected_q, expected_absmax = reference.quantize_tensor(x)
    assert absmax.dim() == 0
    assert torch.equal(q.cpu(), expected_q) and torch.equal(absmax.cpu(), expected_absmax)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_feature_stats(device, shape, dtype):
    batches = [activations(shape, dtype, seed_of(shape, dtype) + i) for i in range(2)]
    absmax, count = torch.zeros(shape[1], device=device), torch.zeros(shape[1], dtype=torch.int64, device=device)
    expected_absmax, expected_count = torch.zeros(shape[1]), torch.zeros(shape[1], dtype=torch.int64)
    for batch in batches:
        ops.feature_stats(batch.to(device), 6.0, absmax, count)
        reference.feature_stats(batch, 6.0, expected_absmax, expected_count)
    assert torch.equal(absmax.cpu(), expected_absmax)
    assert torch.equal(count.cpu(), expected_count)


def test_feature_stats_threshold_in_half_precision(device):
    absmax, count = torch.zeros(1, device=device), torch.zeros(1, dtype=torch.int64, device=device)
    ops.feature_stats(torch.tensor([[6.0]], dtype=torch.float16, device=device), 5.999, absmax, count)
    assert count.item() == 0  # as reference: 5.999 rounds to 6.0 in float16


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("columns_on", ["cpu", "cuda"])
def test_decompose_outliers(device, shape, dtype, columns_on):
    x = activations(shape, dtype, seed_of(shape, dtype) + 2)
    columns = torch.tensor(sorted({0, shape[1] // 3, shape[1] - 1}), dtype=torch.int64)
    gpu_columns = columns if columns_on == "cpu" else columns.to(device)
    q, absmax, outliers = ops.decompose_outliers(x.to(device), gpu_columns)
    expected_q, expected_absmax, expected_outliers = reference.decompose_outliers(x, columns)
    assert torch.equal(q.cpu(), expected_q)
    assert torch.equal(absmax.cpu(), expected_absmax)
    assert outliers.dtype == dtype and torch.equal(outliers.cpu(), expected_outliers)


def test_decompose_without_outliers(device):
    x = activations((33, 100), torch.float16, 3)
    q, absmax, outliers = ops.decompose_outliers(x.to(device), torch.zeros(0, dtype=torch.int64, device=device))
    expected_q, expected_absmax = reference.quantize_rowwise(x)
    assert torch.equal(q.cpu(), expected_q) and torch.equal(absmax.cpu(), expected_absmax)
    assert outliers.shape == (33, 0)


@pytest.mark.parametrize(
    "m, k, n", [(1, 4096, 4096), (16, 1041, 33), (17, 64, 8), (3, 5, 7), pytest.param(512, 4096, 11008, marks=QUICK)]
)
def test_int8_matmul(device, m, k, n):
    generator = torch.Generator().manual_seed(m + k + n)
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=generator)
    b = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=generator)
    result = ops.int8_matmul(a.to(device), b.to(device))
    assert torch.equal(result.cpu(), reference.int8_matmul(a, b))


@pytest.mark.parametrize("out_dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("outlier_dtype", [None, *FLOAT_DTYPES])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (17, 1041), pytest.param((64, 4096), marks=QUICK), (129, 4100)])
def test_dequantize_epilogue(device, shape, out_dtype, outlier_dtype):
    generator = torch.Generator().manual_seed(shape[0] + shape[1])
    acc = torch.randint(-(2**24), 2**24, shape, dtype=torch.int32, generator=generator)
    rows, cols = torch.rand(shape[0], generator=generator) * 8, torch.rand(shape[1], generator=generator) * 0.2
    bias = torch.randn(shape[1], generator=generator).to(out_dtype)
    extra = None if outlier_dtype is None else torch.randn(shape, generator=generator).to(outlier_dtype)
    y = ops.dequantize_epilogue(
        acc.to(device),
        rows.to(device),
        cols.to(device),
        bias.to(device),
        None if extra is None else extra.to(device),
        out_dtype,
    )
    expected = reference.dequantize_epilogue(acc, rows, cols, bias, extra, out_dtype)
    assert y.dtype == out_dtype
    torch.testing.assert_close(y.cpu().float(), expected.float(), rtol=OUTPUT_RTOL[out_dtype], atol=1e-6)


@pytest.mark.parametrize("out_dtype", FLOAT_DTYPES)
def test_dequantize_epilogue_scalar_scales_without_bias(device, out_dtype):
    acc = torch.randint(-(2**20), 2**20, (19, 37), dtype=torch.int32)
    row, col = torch.tensor(3.5), torch.tensor(0.25)
    y = ops.dequantize_epilogue(acc.to(device), row.to(device), col.to(device), out_dtype=out_dtype)
    expected = reference.dequantize_epilogue(acc, row, col, out_dtype=out_dtype)
    torch.testing.assert_close(y.cpu().float(), expected.float(), rtol=OUTPUT_RTOL[out_dtype], atol=1e-6)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_dequantize_rowwise(device, shape, dtype):
    q, absmax = reference.quantize_rowwise(activations(shape, torch.float32, seed_of(shape, dtype) + 4))
    y = ops.dequantize_rowwise(q.to(device), absmax.to(device), dtype)
    expected = reference.dequantize_rowwise(q, absmax, dtype)
    assert y.dtype == dtype
    torch.testing.assert_close(y.cpu().float(), expected.float(), rtol=OUTPUT_RTOL[dtype], atol=1e-6)


def test_ops_run_the_cuda_kernels_on_cuda_tensors(device):
    x = torch.randn(4, 64, device=device, dtype=torch.float16)
    assert ops.REGISTRY["quantize_rowwise"].uses_cuda(x)
    assert ops.REGISTRY["int8_matmul"].uses_cuda(x.to(torch.int8), x.to(torch.int8))
    assert not ops.REGISTRY["quantize_rowwise"].uses_cuda(x.double())  # float64 goes to the reference
    q, _ = ops.quantize_rowwise(x.double())
    assert q.device == x.device


def test_int8_matmul_multiplies_on_the_gpu_even_without_the_kernels(device, monkeypatch):
    """torch._int_mm needs CUDA, not CuPy: where the kernels cannot load, the GEMM stays INT8."""
    monkeypatch.setattr(cuda_loader, "kernels_available", lambda device: False)
    generator = torch.Generator().manual_seed(3)
    a = torch.randint(-127, 128, (64, 256), dtype=torch.int8, generator=generator)
    b = torch.randint(-127, 128, (96, 256), dtype=torch.int8, generator=generator)
    assert ops.REGISTRY["int8_matmul"].uses_cuda(a.to(device), b.to(device))
    assert not ops.REGISTRY["quantize_rowwise"].uses_cuda(a.to(device).half())
    assert torch.equal(ops.int8_matmul(a.to(device), b.to(device)).cpu(), reference.int8_matmul(a, b))


# --- ops that used to wait for the device: outlier detection, the scan's histogram ---------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_outlier_columns(device, shape, dtype):
    x = activations(shape, dtype, seed_of(shape, dtype) + 5)
    columns = ops.outlier_columns(x.to(device), 6.0)
    assert columns.device.type == device.type
    assert torch.equal(columns.cpu(), reference.outlier_columns(x, 6.0))


def synchronisations(function, *args) -> list[str]:
    """The synchronising CUDA operations torch reports while `function` runs (sync debug mode)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            function(*args)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [str(warning.message) for warning in caught if "synchroniz" in str(warning.message)]


@QUICK
def test_outlier_detection_waits_for_the_device_once(device):
    """Once, to learn how many columns: their number sizes the matrices that follow."""
    x = activations((512, 4096), torch.bfloat16, 21).to(device)
    ops.outlier_columns(x, 6.0)  # the first call may load the kernels
    assert len(synchronisations(ops.outlier_columns, x, 6.0)) == 1


@QUICK
def test_the_scan_statistics_never_wait_for_the_device(device):
    """ops.input_stats, what the scan runs on every Linear input: abs-max, counts and histogram, no sync."""
    x = activations((2048, 4096), torch.bfloat16, 22)
    x[0, :4] = torch.tensor([0.0, math.inf, math.nan, 1e-9])
    absmax, count = torch.zeros(4096, device=device), torch.zeros(4096, dtype=torch.int64, device=device)
    hist = torch.zeros(90, dtype=torch.int64, device=device)
    assert synchronisations(ops.input_stats, x.to(device), 6.0, absmax, count, hist, (-4.0, 5.0)) == []
    expected_absmax, expected_count = torch.zeros(4096), torch.zeros(4096, dtype=torch.int64)
    expected_hist = torch.zeros(90, dtype=torch.int64)
    reference.input_stats(x, 6.0, expected_absmax, expected_count, expected_hist, (-4.0, 5.0))
    assert _same_floats(absmax, expected_absmax) and torch.equal(count.cpu(), expected_count)
    assert hist.sum().item() == x.numel()
    moved = (
        hist.cpu() - expected_hist
    ).abs().sum().item() // 2  # CUDA's log10 may round a value at an edge the other way
    assert moved <= x.numel() * 1e-5, (hist.cpu() - expected_hist).nonzero()


@QUICK
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_the_token_axis_on_the_device_is_the_cpus(device, dtype):
    """The scan's token axis on a GPU (torch on the device): each token's largest |x| from input_stats without a
    sync, the residual stream's per-token and per-dimension maxima and its median, all equal to the CPU's."""
    x = activations((512, 576), dtype, 23)
    x[0, 507] = -2.25e4  # a massive activation on the first token
    state = (torch.zeros(576), torch.zeros(576, dtype=torch.int64), torch.zeros(90, dtype=torch.int64))
    on_device = tuple(t.to(device) for t in state)
    token_max = torch.empty(512, device=device)
    assert synchronisations(ops.input_stats, x.to(device), 6.0, *on_device, (-4.0, 5.0), token_max) == []
    assert _same_floats(token_max, x.float().abs().amax(dim=-1))
    expected = (torch.empty(512), torch.empty(512, dtype=torch.int32), torch.zeros(576))
    got = (torch.empty(512, device=device), torch.empty(512, dtype=torch.int32, device=device))
    got += (torch.zeros(576, device=device),)
    reference.token_dim_absmax(x, *expected)
    ops.token_dim_absmax(x.to(device), *got)
    assert all(_same_floats(g, e) if e.is_floating_point() else torch.equal(g.cpu(), e) for g, e in zip(got, expected))
    assert got[1][0].item() == 507
    assert ops.median_magnitude(x.to(device)) == reference.median_magnitude(x)


# The whole layer: INT8 parts are exact, the output is rounded to x's dtype and the outlier product is a
# floating-point GEMM in x's dtype, whose summation order differs between cuBLAS and the CPU.
LAYER_RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


@QUICK
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_the_int8_linear_layer(device, dtype):
    """ops.int8_linear composed of the kernels on the GPU, against the reference composition on the CPU."""
    generator = torch.Generator().manual_seed(31)
    x = activations((33, 1041), dtype, 31)
    weight_int8, weight_scale = reference.quantize_rowwise(torch.randn(70, 1041, generator=generator))
    bias = torch.randn(70, generator=generator).to(dtype)
    columns = reference.outlier_columns(x, 6.0)
    outlier_weight = reference.dequantize_rowwise(weight_int8.index_select(1, columns), weight_scale, dtype)
    assert columns.numel() > 0
    for options in ({}, {"per_tensor": True}, {"outlier_cols": columns, "outlier_weight": outlier_weight}):
        on_device = {name: value.to(device) if torch.is_tensor(value) else value for name, value in options.items()}
        got = ops.int8_linear(
            x.to(device), weight_int8.to(device), weight_scale.to(device), bias.to(device), **on_device
        )
        expected = reference.int8_linear(x, weight_int8, weight_scale, bias, **options)
        assert got.dtype == dtype and got.device.type == device.type
        error = ((got.cpu().float() - expected.float()).norm() / expected.float().norm()).item()
        assert error < LAYER_RTOL[dtype], (sorted(options), error)


def test_kernels_follow_torch_stream(device):
    """Work queued on a side stream is ordered with the torch ops before and after it."""
    stream = torch.cuda.Stream(device)
    with torch.cuda.stream(stream):
        x = torch.randn(4096, 4096, device=device, dtype=torch.float16) * 3
        q, absmax = ops.quantize_rowwise(x)
        expected_q, expected_absmax = reference.quantize_rowwise(x)  # torch ops on the GPU, same stream
    stream.synchronize()
    assert torch.equal(q, expected_q) and torch.equal(absmax, expected_absmax)


# --- end to end: a model quantized on the GPU against the CPU reference ------------------

PERPLEXITY_METHODS = ["vectorwise", "llm-int8", "llm-int8-dynamic"]
# How far the GPU's perplexity may lie from the CPU's float32 reference, by the dtype the GPU ran in.
# float32 differs from the CPU only in summation order: 0.5%. bfloat16 keeps 8 significant bits: its
# rounding of the residual stream and of every layer's output compounds over 30 layers, and the INT8
# methods then round activations that differ already. This very pipeline run on the CPU in bfloat16
# moved the perplexities against float32 by +0.25% (baseline), +0.18% (vectorwise), +0.59% (llm-int8)
# and +0.71% (llm-int8-dynamic), already over 0.5%; the bound, 2%, leaves the GPU's other summation order
# and attention kernels about three times that, while a wrong kernel moves perplexity by tens of percent.
# float16 keeps 11 bits, three more than bfloat16: 1% (not measured).
PERPLEXITY_RTOL = {"float32": 0.005, "float16": 0.01, "bfloat16": 0.02}


def perplexities(params: dict) -> tuple[str, dict[str, float]]:
    """The default model loaded with `params`, scanned, quantized and evaluated: (its dtype, method -> perplexity)."""
    from int8wb.engine.measure import evaluate
    from int8wb.engine.pipeline import loading
    from int8wb.engine.quant import quantize, scan
    from int8wb.engine.task import Task

    loaded = loading.load(params, Task())
    scanned = scan.run({"tokens": 2048, "seq_len": 512}, Task(), loaded)
    quantized = {m: quantize.run({"method": m, "threshold": 6.0}, Task(), loaded, scanned) for m in PERPLEXITY_METHODS}
    rows = evaluate.run({"tokens": 4096, "window": 512, "batch_size": 4}, Task(), loaded, quantized)["rows"]
    return loaded.dtype, {row["method"]: row["perplexity"] for row in rows}


@pytest.fixture(scope="module")
def cpu_perplexities() -> dict[str, float]:
    """The CPU half of the comparison, computed once for every GPU dtype (about 40 s)."""
    pytest.importorskip("transformers", reason="transformers is not installed: the default model cannot load")
    pytest.importorskip("gguf", reason="gguf is not installed: the default model's file cannot be read")
    from int8wb.engine.errors import ModelLoadError
    from int8wb.engine.pipeline import loading

    try:
        loading.default_gguf_path()
    except ModelLoadError as exc:
        pytest.skip(f"the default model is not installed: {exc}")
    return perplexities({"device": "cpu"})[1]


@pytest.mark.slow
@pytest.mark.parametrize("gpu_dtype", ["float32", "auto"])
def test_perplexity_on_gpu_matches_cpu(device, cpu_perplexities, gpu_dtype):
    """The default model, scanned, quantized and evaluated on the GPU (CUDA kernels, float32 or the
    GPU's default half dtype) and on the CPU (reference, float32): perplexities within PERPLEXITY_RTOL."""
    dtype, gpu = perplexities({"device": str(device), "dtype": gpu_dtype})
    print(f"perplexity cpu(float32)={cpu_perplexities} gpu({dtype})={gpu}")
    for method, cpu_perplexity in cpu_perplexities.items():
        relative = abs(gpu[method] / cpu_perplexity - 1.0)
        assert relative < PERPLEXITY_RTOL[dtype], f"{method}: GPU {gpu[method]:.4f} vs CPU {cpu_perplexity:.4f}"
