"""Which implementation each op runs, and what it costs the host, checked without a GPU.

- The registry (`kernels.ops`) picks each op's CUDA implementation on what that implementation
  needs: `int8_matmul` (torch._int_mm) on any CUDA device, even without CuPy; the compiled kernels
  only where they load. The condition is read from the arguments, so stand-ins for CUDA tensors
  (objects with `is_cuda`, `dtype`, `device`) exercise it on the CPU.
- The device probe: a cubin the driver rejects makes the device fall back to the reference, with
  the reason, instead of failing at the first launch. CuPy is replaced by a stand-in.
- Host synchronisations: a torch function mode records the calls that make the host wait for a
  CUDA device (`nonzero`, `bincount`, `.item()`, boolean-mask indexing, ...). Run on CPU tensors,
  it shows which synchronisations an op would cost on the GPU; the GPU tests check the same
  with torch's own sync debug mode.
"""

from __future__ import annotations

import contextlib
import sys
import types

import pytest
import torch
from torch.overrides import TorchFunctionMode

from int8wb.kernels import cuda_loader, cuda_ops, ops, reference

# torch functions whose CUDA implementation waits for the device: a size or a value goes to the host.
SYNCING_FUNCTIONS = {
    "nonzero",
    "bincount",
    "item",
    "tolist",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "masked_select",
    "unique",
    "unique_consecutive",
    "repeat_interleave",
    "cpu",
    "numpy",
    "equal",
    "allclose",
}
INDEXING_FUNCTIONS = {"__getitem__", "__setitem__", "index_put", "index_put_"}  # with a boolean mask: a nonzero


class SyncRecorder(TorchFunctionMode):
    """Records, in order, every call inside the `with` block that would synchronise with a CUDA device."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNCING_FUNCTIONS or (name in INDEXING_FUNCTIONS and _has_boolean_mask(args)):
            self.syncs.append(name)
        return func(*args, **(kwargs or {}))


def _has_boolean_mask(args) -> bool:
    flat = [item for arg in args for item in (arg if isinstance(arg, tuple | list) else (arg,))]
    return any(isinstance(item, torch.Tensor) and item.dtype == torch.bool for item in flat)


def syncs_of(function, *args) -> list[str]:
    with SyncRecorder() as recorder:
        function(*args)
    return recorder.syncs


def on_cuda(dtype: torch.dtype, index: int = 0) -> types.SimpleNamespace:
    """A stand-in for a CUDA tensor, as far as the registry's conditions look."""
    return types.SimpleNamespace(is_cuda=True, dtype=dtype, device=torch.device("cuda", index))


@pytest.fixture
def kernels(monkeypatch):
    """Whether the compiled kernels load: set `.available`; `.asked` counts the probes."""
    state = types.SimpleNamespace(available=True, asked=0)

    def kernels_available(device):
        state.asked += 1
        return state.available

    monkeypatch.delenv(cuda_loader.DISABLE_ENV, raising=False)
    monkeypatch.setattr(cuda_loader, "kernels_available", kernels_available)
    return state


# --- the registry's conditions --------------------------------------------------------------------


def test_int8_matmul_needs_cuda_and_not_the_compiled_kernels(kernels):
    kernels.available = False  # no CuPy, or no cubin for this GPU
    a = on_cuda(torch.int8)
    assert ops.REGISTRY["int8_matmul"].uses_cuda(a, a)
    assert kernels.asked == 0
    assert not ops.REGISTRY["int8_matmul"].uses_cuda(on_cuda(torch.float16), a)


def test_kernel_ops_run_on_cuda_only_where_the_kernels_load(kernels):
    x = on_cuda(torch.bfloat16)
    kernels.available = False
    assert not ops.REGISTRY["quantize_rowwise"].uses_cuda(x)
    assert not ops.REGISTRY["outlier_columns"].uses_cuda(x, 6.0)
    kernels.available = True
    assert ops.REGISTRY["quantize_rowwise"].uses_cuda(x)
    assert ops.REGISTRY["outlier_columns"].uses_cuda(x, 6.0)
    assert not ops.REGISTRY["quantize_rowwise"].uses_cuda(on_cuda(torch.float64))  # no kernel for float64


def test_the_output_dtype_is_read_positionally_or_by_keyword(kernels):
    epilogue, rowwise = ops.REGISTRY["dequantize_epilogue"], ops.REGISTRY["dequantize_rowwise"]
    acc, scale = on_cuda(torch.int32), on_cuda(torch.float32)
    assert epilogue.uses_cuda(acc, scale, scale)  # the default, float32
    assert epilogue.uses_cuda(acc, scale, scale, None, None, torch.bfloat16)
    assert not epilogue.uses_cuda(acc, scale, scale, out_dtype=torch.float64)
    assert rowwise.uses_cuda(on_cuda(torch.int8), scale, dtype=torch.float16)
    assert not rowwise.uses_cuda(on_cuda(torch.int8), scale, torch.float64)


def test_cpu_tensors_never_probe_the_device(kernels):
    for name in ("quantize_rowwise", "int8_matmul", "log_histogram"):
        assert not ops.REGISTRY[name].uses_cuda(torch.zeros(2, 2, dtype=torch.int8))
    assert kernels.asked == 0


def test_the_reference_can_be_forced_for_every_op(kernels, monkeypatch):
    monkeypatch.setenv(cuda_loader.DISABLE_ENV, "reference")
    assert not ops.REGISTRY["int8_matmul"].uses_cuda(on_cuda(torch.int8), on_cuda(torch.int8))


def test_the_histogram_has_no_cuda_copy_because_its_reference_runs_there_as_it_is(kernels):
    assert ops.REGISTRY["log_histogram"].cuda is None
    assert syncs_of(reference.log_histogram, torch.randn(64, 96), -4.0, 5.0, torch.zeros(90, dtype=torch.int64)) == []


# --- the device probe ------------------------------------------------------------------------------


@pytest.fixture
def fake_cupy(monkeypatch, tmp_path):
    """CuPy replaced by a stand-in whose modules record the functions fetched; `.reject` makes the
    driver refuse every cubin, as it does one built by an NVRTC newer than itself."""
    state = types.SimpleNamespace(reject=False, fetched=[])

    class RawModule:
        def __init__(self, path: str) -> None:
            self.path = path

        def get_function(self, name: str):
            if state.reject:
                raise RuntimeError(
                    "CUDA_ERROR_UNSUPPORTED_PTX_VERSION: the provided PTX was compiled with an unsupported toolchain"
                )
            state.fetched.append(name)
            return name

    cupy = types.SimpleNamespace(
        RawModule=RawModule, cuda=types.SimpleNamespace(Device=lambda index: contextlib.nullcontext())
    )
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.delenv(cuda_loader.DISABLE_ENV, raising=False)
    monkeypatch.setattr(cuda_loader, "_device_arch", lambda index: 90)
    monkeypatch.setattr(cuda_loader, "cubins_for", lambda arch: {n: tmp_path / n for n in cuda_loader.cuda_sources()})
    monkeypatch.setattr(cuda_loader, "_availability", {})
    monkeypatch.setattr(cuda_loader, "_modules", {})
    return state


def test_the_probe_loads_one_function_of_every_module(fake_cupy):
    assert cuda_loader.kernels_available(torch.device("cuda", 0))
    assert sorted(fake_cupy.fetched) == sorted(cuda_loader.PROBE_ENTRY_POINTS.values())


def test_a_cubin_the_driver_rejects_falls_back_to_the_reference_with_the_reason(fake_cupy, caplog):
    fake_cupy.reject = True
    assert not cuda_loader.kernels_available(torch.device("cuda", 0))
    reason = cuda_loader.unavailable_reason(torch.device("cuda", 0))
    assert "cannot load" in reason and "sm_90" in reason and "UNSUPPORTED_PTX_VERSION" in reason
    assert "using the torch reference" in caplog.text


# --- host synchronisations ------------------------------------------------------------------------


def test_the_recorder_sees_the_synchronising_calls():
    x = torch.tensor([0, 3, 3, 1])
    calls = lambda: (torch.bincount(x), x.max().item(), x[x > 1], x.nonzero(), x[1:])  # noqa: E731
    assert syncs_of(calls) == ["bincount", "item", "__getitem__", "nonzero"]


def test_outlier_detection_synchronises_once_to_learn_the_number_of_columns(monkeypatch):
    """The number of outlier columns sizes the matrices that follow, so the host must learn it:
    one sync, and the CUDA path (one feature_stats pass, here run by its reference) adds none."""
    monkeypatch.setattr(cuda_ops, "feature_stats", reference.feature_stats)
    x = torch.randn(32, 64) * 2
    assert syncs_of(reference.outlier_columns, x, 6.0) == ["nonzero"]
    assert syncs_of(cuda_ops.outlier_columns, x, 6.0) == ["nonzero"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_cuda_outlier_path_finds_the_reference_columns(monkeypatch, dtype):
    monkeypatch.setattr(cuda_ops, "feature_stats", reference.feature_stats)
    generator = torch.Generator().manual_seed(5)
    x = (torch.randn(40, 300, generator=generator) * 2).to(dtype)
    x[3, 17], x[9, 250], x[0, 5] = 40.0, -7.0, float("nan")
    x[:, 100] = 6.0  # at the threshold: not over it
    expected = reference.outlier_columns(x, 6.0)
    assert 17 in expected.tolist() and 250 in expected.tolist() and 100 not in expected.tolist()
    assert torch.equal(cuda_ops.outlier_columns(x, 6.0), expected)
