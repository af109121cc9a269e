"""Every CUDA kernel against its torch reference, on a GPU (skipped without one).

The reference runs on the CPU (the ground truth); the CUDA op runs on the
device. Tolerances: int8 values, scales, abs-maxes, counts and INT32 products
are compared bit for bit. Floating-point outputs (dequantize_epilogue,
dequantize_rowwise) perform the same float32 operations as the CPU reference,
so they are expected to agree exactly too; the test allows one rounding of the
output dtype (relative 1e-6 for float32, 2**-10 for float16, 2**-7 for bfloat16)
so that a differently ordered but correct float32 evaluation would still pass.
"""

from __future__ import annotations

import pytest
import torch

from kernels import cuda_loader, cuda_ops, ops, reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: torch.cuda.is_available() is False"),
]

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
OUTPUT_RTOL = {torch.float32: 1e-6, torch.float16: 2**-10, torch.bfloat16: 2**-7}
# Odd sizes, sizes around the 16-byte packs and the 256-thread blocks, a single row, and wide rows.
SHAPES = [(1, 1), (3, 7), (2, 8), (17, 1041), (64, 4096), (257, 5003), (1000, 24), (5, 11008)]


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


@pytest.mark.parametrize("m, k, n", [(1, 4096, 4096), (16, 1041, 33), (17, 64, 8), (3, 5, 7), (512, 4096, 11008)])
def test_int8_matmul(device, m, k, n):
    generator = torch.Generator().manual_seed(m + k + n)
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=generator)
    b = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=generator)
    result = ops.int8_matmul(a.to(device), b.to(device))
    assert torch.equal(result.cpu(), reference.int8_matmul(a, b))


@pytest.mark.parametrize("out_dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("outlier_dtype", [None, *FLOAT_DTYPES])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (17, 1041), (64, 4096), (129, 4100)])
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
    assert cuda_ops.supports("quantize_rowwise", x) and cuda_ops.supports("int8_matmul", x.to(torch.int8))
    assert not cuda_ops.supports("quantize_rowwise", x.double())  # float64 goes to the reference
    q, _ = ops.quantize_rowwise(x.double())
    assert q.device == x.device


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


@pytest.mark.slow
@pytest.mark.parametrize("gpu_dtype", ["float32", "auto"])
def test_perplexity_on_gpu_matches_cpu(device, gpu_dtype):
    """The default model, scanned, quantized and evaluated on the GPU (CUDA kernels, float32 or
    the GPU's default half dtype) and on the CPU (reference): perplexities within 0.5%."""
    evaluate = pytest.importorskip("engine.quant.evaluate")
    from engine.model import loading
    from engine.quant import quantize, scan
    from engine.task import Task

    scan_params = {"tokens": 2048, "seq_len": 512}
    eval_params = {"tokens": 4096, "window": 512, "batch_size": 4}
    methods = ["vectorwise", "llm-int8", "llm-int8-dynamic"]
    results = {}
    for where, params in (("cpu", {"device": "cpu"}), ("gpu", {"device": str(device), "dtype": gpu_dtype})):
        loaded = loading.load(params, Task())
        scanned = scan.run(scan_params, Task(), loaded)
        quantized = {m: quantize.run({"method": m, "threshold": 6.0}, Task(), loaded, scanned) for m in methods}
        rows = evaluate.run(eval_params, Task(), loaded, quantized)["rows"]
        results[where] = {row["method"]: row["perplexity"] for row in rows}
    print(f"perplexity cpu={results['cpu']} gpu({gpu_dtype})={results['gpu']}")
    for method, cpu_perplexity in results["cpu"].items():
        relative = abs(results["gpu"][method] / cpu_perplexity - 1.0)
        assert relative < 0.005, f"{method}: GPU {results['gpu'][method]:.4f} vs CPU {cpu_perplexity:.4f}"
