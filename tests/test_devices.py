"""Device and dtype choices for GPUs, checked without one: torch.cuda's queries are replaced by a
described machine (how many GPUs, their compute capabilities, what each has allocated)."""

from __future__ import annotations

import pytest
import torch

from int8wb.engine.errors import BadInput
from int8wb.engine.model import loaded
from int8wb.engine.pipeline import loading
from int8wb.engine.planning import memory
from int8wb.engine.vocabulary import ALL_GPUS


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine has GPUs: call with their compute capabilities; returns the allocator's
    per-GPU figures, which the test may set, and the indices each query was asked about."""

    def install(*capabilities: tuple[int, int]):
        state = {"allocated": {i: 0 for i in range(len(capabilities))}, "peak": {}, "asked": set()}

        def ask(index):
            state["asked"].add(index)
            return index

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: capabilities[ask(index)])
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)  # as on a T4
        monkeypatch.setattr(torch.cuda, "synchronize", lambda index=None: ask(index))
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda index: state["peak"].update({index: 0}))
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda index: state["allocated"][ask(index)])
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda index: state["peak"][ask(index)])
        monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda index: 2 * state["peak"][ask(index)])
        return state

    return install


def test_an_explicit_gpu_is_honoured_and_never_spread(gpus):
    gpus((9, 0), (9, 0))
    assert loaded.pick_device("cuda:1") == "cuda:1"
    assert loading.placement("cuda:1") == {}
    assert loading.placement("cuda") == {}
    assert loaded.pick_device(ALL_GPUS) == ALL_GPUS
    assert loading.placement(ALL_GPUS) == {"device_map": "auto"}


def test_a_gpu_that_does_not_exist_is_a_clear_error(gpus):
    gpus((9, 0), (9, 0))
    with pytest.raises(BadInput, match="has 2 CUDA device"):
        loaded.pick_device("cuda:2")


def test_no_gpu_no_cuda_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loaded.pick_device("auto") == "cpu"
    with pytest.raises(BadInput, match="no CUDA device"):
        loaded.pick_device(ALL_GPUS)


@pytest.mark.parametrize(
    "capabilities, device, expected",
    [
        (((9, 0),), "cuda", torch.bfloat16),  # H100, H200
        (((8, 0),), "cuda:0", torch.bfloat16),  # A100
        (((7, 5),), "cuda", torch.float16),  # T4: is_bf16_supported() says yes, but only emulates it
        (((7, 0),), "cuda:0", torch.float16),  # V100
        (((9, 0), (7, 5)), "cuda:0", torch.bfloat16),  # the GPU asked for decides
        (((9, 0), (7, 5)), "cuda:1", torch.float16),
        (((9, 0), (7, 5)), ALL_GPUS, torch.float16),  # spread: every GPU must have it
    ],
)
def test_bfloat16_only_from_compute_capability_8(gpus, capabilities, device, expected):
    gpus(*capabilities)
    assert loaded.pick_dtype(device) == expected
    assert loaded.pick_dtype(device, "float32") == torch.float32


def test_memory_of_a_model_spread_over_gpus_is_measured_on_all_of_them(gpus):
    state = gpus((9, 0), (9, 0), (9, 0))
    state["allocated"] = {0: 100, 1: 200, 2: 300}
    record = memory.PhaseMemory("forward", ALL_GPUS)
    with memory.measure(record):
        state["peak"] = {0: 1000, 1: 2000, 2: 4000}
    assert record.cuda_allocated_at_start == 600
    assert record.cuda_peak_allocated == 7000 and record.cuda_peak_reserved == 14000
    assert state["asked"] == {0, 1, 2}


def test_memory_of_one_gpu_is_measured_on_that_gpu(gpus):
    state = gpus((9, 0), (9, 0))
    record = memory.PhaseMemory("forward", "cuda:1")
    with memory.measure(record):
        state["peak"] = {0: 5, 1: 50}
    assert record.cuda_peak_allocated == 50 and state["asked"] == {1}
