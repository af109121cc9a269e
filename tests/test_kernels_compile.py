"""The CUDA sources compile, and the host code calls them correctly, with no GPU.

NVRTC (from the `nvidia-cuda-nvrtc-cu12` wheel) compiles every `.cu` file for
sm_80 and sm_90 on the CPU. A second check compiles to PTX, reads each entry
point's parameter list, and runs every op of `kernels.cuda_ops` on CPU tensors
with a recording launcher: the entry point each op asks for must exist, and
each argument must have the C type the kernel declares. On a GPU those
mistakes would be silent garbage, not errors.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from int8wb.kernels import cuda_loader, cuda_ops, nvrtc

pytestmark = pytest.mark.skipif(sys.platform == "darwin", reason="NVRTC does not exist for macOS")

ARCHS = [80, 90]
SOURCES = sorted(cuda_loader.cuda_sources())


def test_nvrtc_is_found():
    major, _ = nvrtc.version()
    assert major >= 12
    assert set(ARCHS) <= set(nvrtc.supported_archs())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", SOURCES)
def test_source_compiles(name, arch):
    compiled = cuda_loader.compile_file(name, arch)
    assert compiled.binary[:4] == b"\x7fELF" and compiled.arch == f"sm_{arch}"
    assert "warning" not in compiled.log.lower(), compiled.log


def test_sources_are_the_expected_set():
    assert SOURCES == ["epilogue.cu", "feature_stats.cu", "outliers.cu", "quantize.cu"]


def test_a_broken_snippet_fails_with_the_compiler_log():
    source = 'extern "C" __global__ void broken(float* y) { y[0] = undeclared_name; }'
    with pytest.raises(nvrtc.NvrtcError) as failure:
        nvrtc.compile_source(source, "broken.cu", 90)
    message = str(failure.value)
    assert "broken.cu" in message and "sm_90" in message
    assert "undeclared_name" in message and "error" in message  # the log itself, not just a status


def test_a_broken_kernel_file_fails_with_the_compiler_log():
    original = cuda_loader.cuda_sources()["quantize.cu"]
    broken = original.replace("quantize_value(", "quantise_value(", 1)  # a one-letter typo
    assert broken != original
    with pytest.raises(nvrtc.NvrtcError) as failure:
        cuda_loader.compile_file("quantize.cu", 80, source=broken)
    assert "quantise_value" in failure.value.log and "quantize.cu" in failure.value.log


# --- the host side calls what the sources define, with the declared argument types ----


@functools.cache
def ptx_parameters(module: str) -> dict[str, list[str]]:
    """Entry point -> PTX parameter types (`u64`, `u32`, `f32`, ...) of one source."""
    ptx = cuda_loader.compile_file(f"{module}.cu", 80, ptx=True).ptx
    entries = re.findall(r"\.entry\s+(\w+)\s*\(([^)]*)\)", ptx)
    return {name: re.findall(r"\.param\s+\.(\w+)", params) for name, params in entries}


def c_type_of(argument) -> set[str]:
    if isinstance(argument, torch.Tensor):
        return {"u64"}  # a device pointer
    if isinstance(argument, np.int64):
        return {"u64", "s64", "b64"}
    if isinstance(argument, np.int32):
        return {"u32", "s32", "b32"}
    if isinstance(argument, np.float32):
        return {"f32"}
    raise AssertionError(f"kernel argument of unexpected type {type(argument)}: Python scalars are ambiguous")


@pytest.fixture
def launches(monkeypatch):
    """Replace the launcher with one that checks every launch against the PTX and records it."""
    recorded = []

    def checking_launch(device, module, entry_point, grid, block, args):
        parameters = ptx_parameters(module)
        assert entry_point in parameters, f"{entry_point} is not defined in {module}.cu"
        assert len(args) == len(parameters[entry_point]), f"{entry_point}: argument count"
        for position, (argument, declared) in enumerate(zip(args, parameters[entry_point])):
            assert declared in c_type_of(argument), f"{entry_point} argument {position}: {declared} expected"
        assert len(grid) <= 3 and all(1 <= g < 2**31 for g in grid) and all(g <= 65535 for g in grid[1:])
        threads = int(np.prod(block))
        assert threads <= 1024 and block[0] % 32 == 0, "block_max needs whole warps"
        recorded.append(entry_point)

    monkeypatch.setattr(cuda_loader, "launch", checking_launch)
    monkeypatch.setattr(cuda_loader, "multiprocessor_count", lambda index: 132)
    return recorded


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cols", [4096, 1041])  # vectorised and scalar variants
def test_every_op_launches_a_defined_kernel_with_matching_arguments(launches, dtype, cols):
    x = torch.randn(5, cols).to(dtype)
    suffix = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}[dtype]
    width = (4 if dtype == torch.float32 else 8) if cols % 8 == 0 else 1

    cuda_ops.feature_stats(x, 6.0, torch.zeros(cols), torch.zeros(cols, dtype=torch.int64))
    cuda_ops.outlier_columns(x, 6.0)
    cuda_ops.quantize_rowwise(x)
    cuda_ops.quantize_tensor(x)
    cuda_ops.decompose_outliers(x, torch.tensor([0, cols - 1]))
    cuda_ops.decompose_outliers(x, torch.zeros(0, dtype=torch.int64))
    cuda_ops.dequantize_rowwise(torch.zeros(5, cols, dtype=torch.int8), torch.ones(5), dtype)
    acc = torch.zeros(5, cols, dtype=torch.int32)
    cuda_ops.dequantize_epilogue(acc, torch.ones(5), torch.ones(cols), torch.ones(cols), x, dtype)
    cuda_ops.dequantize_epilogue(acc, torch.tensor(1.0), torch.tensor(2.0), out_dtype=dtype)

    epilogue_width = 4 if cols % 4 == 0 else 1
    assert launches == [
        f"feature_stats_{suffix}_v{width}",
        f"feature_stats_{suffix}_v{width}",
        f"quantize_rowwise_{suffix}_v{width}",
        f"tensor_absmax_{suffix}_v{4 if dtype == torch.float32 else 8}",
        f"quantize_tensor_{suffix}_v{4 if dtype == torch.float32 else 8}",
        "outlier_mask",
        f"decompose_outliers_{suffix}_v{width}",
        f"decompose_outliers_{suffix}_v{width}",
        f"dequantize_rowwise_{suffix}_v{width}",
        f"dequantize_epilogue_{suffix}_{suffix}_v{epilogue_width}",
        f"dequantize_epilogue_{suffix}_f32_v{epilogue_width}",
    ]


def test_misaligned_rows_take_the_scalar_variant(launches):
    base = torch.randn(4 * 4096 + 1, dtype=torch.float16)
    x = base[1:].view(4, 4096)  # contiguous, but 2 bytes off a 16-byte boundary
    cuda_ops.quantize_rowwise(x)
    assert launches == ["quantize_rowwise_f16_v1"]


def test_bad_outlier_indices_are_refused_before_launch(launches):
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        cuda_ops.decompose_outliers(torch.randn(3, 8), torch.tensor([2, 8]))
    assert launches == []


@pytest.mark.parametrize("m, k, n", [(1, 4096, 4096), (16, 1041, 33), (3, 5, 7), (64, 64, 64)])
def test_int8_matmul_padding_is_exact(m, k, n):
    """cuda_ops.int8_matmul pads to torch._int_mm's CUDA constraints; the padding runs on the CPU too."""
    from int8wb.kernels import reference

    generator = torch.Generator().manual_seed(m + k + n)
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=generator)
    b = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=generator)
    result = cuda_ops.int8_matmul(a, b)
    assert result.shape == (m, n) and result.is_contiguous()
    assert torch.equal(result, reference.int8_matmul(a, b))


def test_importing_the_ops_api_loads_neither_cupy_nor_cuda():
    code = (
        "import sys, torch, int8wb.kernels.ops;"
        "int8wb.kernels.ops.quantize_rowwise(torch.ones(2, 3));"
        "assert 'cupy' not in sys.modules, 'cupy imported';"
        "assert not torch.cuda.is_initialized(), 'CUDA initialised'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_ops_keep_the_reference_signatures():
    import inspect

    from int8wb.kernels import ops

    assert list(ops.REGISTRY) == ops.__all__
    for name, op in ops.REGISTRY.items():
        dispatcher = inspect.signature(getattr(ops, name), follow_wrapped=False)
        assert dispatcher == inspect.signature(op.reference), name
        if op.cuda is not None:
            assert list(inspect.signature(op.cuda).parameters) == list(dispatcher.parameters), name


def test_the_probe_fetches_an_entry_point_that_each_source_defines():
    assert set(cuda_loader.PROBE_ENTRY_POINTS) == {name.removesuffix(".cu") for name in SOURCES}
    for module, entry_point in cuda_loader.PROBE_ENTRY_POINTS.items():
        assert entry_point in ptx_parameters(module), f"{entry_point} is not defined in {module}.cu"


def test_dlpack_producer_shares_memory_with_a_consumer():
    """The producer that cuda_loader hands to cupy.from_dlpack, read here by NumPy on the CPU."""
    tensor = torch.arange(6, dtype=torch.bfloat16)
    view = np.from_dlpack(cuda_loader._OnCurrentStream(tensor.reshape(-1).view(torch.uint8)))
    assert view.dtype == np.uint8 and view.shape == (12,)
    tensor[0] = 1.0  # bfloat16 1.0 is 0x3F80: low byte 0x80, high byte 0x3F
    assert view[:2].tolist() == [0x80, 0x3F]
