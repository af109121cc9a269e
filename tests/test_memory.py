"""Measured memory, and the planner's weight bytes against the quantized model's real tensors."""

from __future__ import annotations

import mmap

import numpy as np
import pytest
import torch

from int8wb.engine.planning import memory, plan_memory
from int8wb.engine.quant import quantize
from int8wb.engine.task import Task
from tests.support import tiny_models


class PickedOutliers:
    """Static llm-int8 takes its outlier columns from a scan; here they are picked by hand."""

    def __init__(self, dims: dict[str, np.ndarray]) -> None:
        self.dims = dims

    def outlier_dims(self, threshold: float) -> dict[str, np.ndarray]:
        return self.dims

    def absmax_of(self) -> dict[str, np.ndarray]:
        """No activation statistics: smoothquant leaves every Linear unsmoothed."""
        return {}


class Loaded:
    def __init__(self, model) -> None:
        self.model = model


@pytest.fixture(scope="module")
def tiny_llama():
    return tiny_models.tiny_llama(hidden=32, intermediate=48, vocab=40)


def test_tensor_bytes_by_dtype_counts_tied_once():
    embed = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = embed.weight
    model = torch.nn.ModuleDict({"embed": embed, "head": head, "norm": torch.nn.LayerNorm(4).to(torch.float16)})
    model.norm.register_buffer("table", torch.zeros(3, dtype=torch.float64), persistent=False)
    sizes = memory.tensor_bytes(model)
    assert sizes["state_by_dtype"] == {"float32": 40 * 4, "float16": 8 * 2}
    assert sizes["runtime_buffers"] == {"norm.table": {"dtype": "float64", "bytes": 24}}


def test_cpu_phase_sees_an_allocation():
    recorder = memory.MemoryRecorder()
    with recorder.phase("allocate") as phase:
        # Fresh anonymous pages: memory the allocator kept from earlier tests could be resident already.
        block = mmap.mmap(-1, 300 * 2**20)
        for offset in range(0, len(block), 4096):  # touch every page so it becomes resident
            block[offset] = 1
    assert phase.cpu_rss_at_end - phase.cpu_rss_at_start >= 280 * 2**20
    assert phase.cpu_peak_rss >= phase.cpu_rss_at_start + 280 * 2**20  # maxrss lags statm by a few pages
    assert recorder.as_dict()["phases"][0]["phase"] == "allocate"
    block.close()


def _quantize_all(model, dims):
    loaded, scan = Loaded(model), PickedOutliers(dims)
    return {method: quantize.run({"method": method}, Task(), loaded, scan).model for method in quantize.METHODS}


def test_planned_weight_bytes_equal_the_quantized_tensors(tiny_llama):
    """float32 on the CPU: planned bytes per method == parameters + persistent buffers of the quantized model."""
    rng = np.random.default_rng(0)
    names = [name for name, _ in quantize.linear_layers(tiny_llama)]
    dims = {name: np.sort(rng.choice(32, size=int(rng.integers(0, 5)), replace=False)) for name in names}
    quantized = _quantize_all(tiny_llama, dims)
    counts = {name: int(len(d)) for name, d in dims.items()}
    plan = plan_memory.run({"model": tiny_llama, "context": 8, "outlier_counts": counts}, Task())
    planned = {m["method"]: m["weights"]["bytes"] for m in plan["methods"]}
    for method, model in quantized.items():
        measured = memory.tensor_bytes(model)
        assert planned[method] == measured["state_bytes"], method
        # the only other tensors are the rotary tables, rebuilt at load time: 4 float32 each for head_dim 8
        assert measured["runtime_buffers"] == {
            f"model.rotary_emb.{name}": {"dtype": "float32", "bytes": 16} for name in ("inv_freq", "original_inv_freq")
        }
        assert sum(quantize.tensor_bytes(model).values()) == measured["state_bytes"] + 32
    assert planned["baseline"] == memory.tensor_bytes(tiny_llama)["state_bytes"]
    # planning from the quantized model itself reads its real outlier columns
    again = plan_memory.run({"model": quantized["llm-int8"], "context": 8, "methods": ["llm-int8"]}, Task())
    assert again["methods"][0]["weights"]["bytes"] == planned["llm-int8"]


@pytest.mark.slow
def test_default_model_planned_equals_measured():
    """The embedded SmolLM2-135M in float32, quantized by each method, against the preset's plan."""
    from int8wb.engine.pipeline import loading
    from int8wb.engine.quant import scan

    loaded = loading.load({}, Task())
    found = scan.run({"tokens": 256, "seq_len": 128, "batch_size": 2}, Task(), loaded)
    dims = found.outlier_dims(6.0)
    counts = {name: int(len(d)) for name, d in dims.items()}
    plan = plan_memory.run({"preset": "smollm2-135m", "dtype": "float32", "outlier_counts": counts}, Task())
    planned = {m["method"]: m["weights"]["bytes"] for m in plan["methods"]}
    assert planned["baseline"] == memory.tensor_bytes(loaded.model)["state_bytes"] == 134_515_008 * 4
    for method in quantize.METHODS:
        model = quantize.run({"method": method}, Task(), loaded, found).model
        assert planned[method] == memory.tensor_bytes(model)["state_bytes"], method


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@pytest.mark.quick
@cuda
def test_cuda_phase_peak_is_reset_per_phase():
    recorder = memory.MemoryRecorder()
    with recorder.phase("big", "cuda"):
        block = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
        del block
    with recorder.phase("small", "cuda"):
        block = torch.empty(16 * 2**20, dtype=torch.uint8, device="cuda")
        del block
    big, small = recorder.phases
    assert big.cuda_peak_allocated - big.cuda_allocated_at_start >= 256 * 2**20
    assert small.cuda_peak_allocated - small.cuda_allocated_at_start < 64 * 2**20
    assert big.cuda_peak_reserved >= big.cuda_peak_allocated


@pytest.mark.gpu
@pytest.mark.quick
@cuda
def test_cuda_planned_total_within_ten_percent_of_measured_peak():
    """Weights + KV cache + workspace of a forward pass, planned against torch's peak allocated bytes."""
    from transformers import DynamicCache

    recorder = memory.MemoryRecorder()
    with recorder.phase("load", "cuda"):
        model = tiny_models.tiny_llama(
            hidden=2048,
            intermediate=5632,
            layers=8,
            heads=16,
            kv_heads=4,
            vocab=32000,
            tie=False,
            attn_implementation="sdpa",
        ).to("cuda", torch.float16)
    batch, context = 2, 2048
    ids = torch.randint(0, 32000, (batch, context), device="cuda")
    with torch.no_grad(), recorder.phase("forward", "cuda"):
        model(ids, past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)
    plan = plan_memory.run({"model": model, "context": context, "batch": batch, "methods": ["baseline"]}, Task())
    planned = plan["methods"][0]["total_bytes"]
    measured = recorder.phases[1].cuda_peak_allocated
    print(f"\nVRAM planned {planned:,} B, measured peak {measured:,} B ({planned / measured - 1:+.1%})")
    assert abs(planned - measured) <= 0.10 * measured, (planned, measured)
