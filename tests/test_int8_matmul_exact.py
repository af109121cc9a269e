"""The CPU INT8 matmul picks its float32 K-chunks from the data, and stays exact in every case."""

from __future__ import annotations

import pytest
import torch

from int8wb.kernels import reference


def _int_mm(a, b):
    return torch._int_mm(a, b.t().contiguous())


@pytest.mark.parametrize("fill", [127, -128])
def test_worst_case_values_split_k_and_stay_exact(fill):
    a = torch.full((32, 1536), fill, dtype=torch.int8)
    b = torch.full((24, 1536), fill, dtype=torch.int8)
    bounds = reference.exact_chunk_bounds(a.float(), reference._int8_absmax(a), reference._int8_absmax(b))
    assert len(bounds) - 1 >= 2
    assert all(stop - start <= 1024 for start, stop in zip(bounds[:-1], bounds[1:]))
    assert torch.equal(reference.int8_matmul(a, b), _int_mm(a, b))


def test_typical_activations_need_one_gemm_and_stay_exact():
    generator = torch.Generator().manual_seed(0)
    a, _ = reference.quantize_rowwise(torch.randn(64, 1536, generator=generator))
    b, _ = reference.quantize_rowwise(torch.randn(40, 1536, generator=generator))
    bounds = reference.exact_chunk_bounds(a.float(), reference._int8_absmax(a), reference._int8_absmax(b))
    assert bounds == [0, 1536]
    assert torch.equal(reference.int8_matmul(a, b), _int_mm(a, b))


def test_one_heavy_row_alone_forces_the_split():
    a = torch.zeros(32, 2048, dtype=torch.int8)
    a[7] = 127
    b = torch.full((24, 2048), -127, dtype=torch.int8)
    assert torch.equal(reference.int8_matmul(a, b), _int_mm(a, b))
    assert int(reference.int8_matmul(a, b)[7, 0]) == -127 * 127 * 2048


@pytest.mark.parametrize("fill", [127, -128])
def test_the_small_batch_path_accumulates_worst_case_values_exactly(fill):
    """One token of 4,096 values quantizing to +-127 against int8 weights of `fill`: |acc| = 127 * 128 * 4096
    passes 2**24, and every instruction set's int32 sums give torch._int_mm's accumulator."""
    from int8wb.kernels import cpu_gemv, cpu_int8

    x = torch.full((2, 4096), 3.0)
    x[1, ::2] = -3.0
    weight = torch.full((24, 4096), fill, dtype=torch.int8)
    weight_scale = torch.full((24,), 127.0)
    x_int8, x_scale = reference.quantize_rowwise(x)
    expected = reference.dequantize_epilogue(_int_mm(x_int8, weight), x_scale, weight_scale)
    assert abs(int(_int_mm(x_int8, weight)[0, 0])) > reference.FLOAT32_EXACT_INTEGERS
    for isa in cpu_gemv.supported_isas():
        with cpu_gemv.forced_isa(isa):
            assert torch.equal(cpu_int8.linear(x, weight, weight_scale), expected), isa
