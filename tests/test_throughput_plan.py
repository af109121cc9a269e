"""Planned decode throughput: bytes per step by hand, tokens/s per card, the bound batch, the 70B figures.

The small architecture is test_planner's TINY (hidden 8, 2 layers, 2 heads / 1 KV head of 4, MLP 16,
vocabulary 10, untied): 576 Linear weights per layer, 1152 in all; 200 floating-point elements
(norms 32, embedding 80, final norm 8, lm_head 80).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from int8wb.engine.cli import plan as plan_command
from int8wb.engine.planning import plan_memory, presets, throughput
from int8wb.engine.planning.planner import Settings
from int8wb.engine.task import Task
from int8wb.engine.vocabulary import GPU_BANDWIDTH, GPU_PEAK_OPS, GPUS
from tests.test_planner import TINY, TINY_INVENTORY

FP16 = Settings(context=5, batch=3, dtype="float16")


@pytest.fixture(scope="module")
def llama70():
    arch, inventory, _ = presets.from_config_dict(presets.preset_config("llama-2-70b"), "llama-2-70b")
    return arch, inventory


def test_every_card_has_a_bandwidth_and_peaks():
    assert set(GPU_BANDWIDTH) == set(GPUS) == set(GPU_PEAK_OPS)
    for peaks in GPU_PEAK_OPS.values():
        assert peaks["int8"] == pytest.approx(2 * peaks["float16"], rel=0.01)


def test_untied_read_by_hand():
    """The embedding table is not read, only a row per sequence: 400 - 160 bytes of floats remain."""
    baseline = throughput.decode_read(TINY, TINY_INVENTORY, "baseline", FP16)
    assert baseline.shared == {"float weight": 2304, "float (not quantized)": 240}
    # KV of one sequence: 2 x 2 layers x 5 tokens x 1 KV head x 4 x 2 bytes; its embedding row: 8 x 2 bytes
    assert baseline.per_sequence == {"KV cache read": 160, "input embedding rows": 16}
    assert baseline.step_bytes(3) == 2304 + 240 + 3 * 176
    assert baseline.terms(3)["KV cache read"] == 480
    vectorwise = throughput.decode_read(TINY, TINY_INVENTORY, "vectorwise", FP16)
    assert vectorwise.shared == {"int8 weight": 1152, "scales": 128 * 4, "float (not quantized)": 240}
    assert throughput.decode_ops(TINY, TINY_INVENTORY, FP16) == {
        "Linear weights": 2 * 1152,
        "LM head": 2 * 10 * 8,
        "attention": 4 * 2 * 5 * 2 * 4,
    }


def test_tied_read_is_every_stored_weight():
    tied = replace(TINY, tie_word_embeddings=True)
    inventory = presets.llama_inventory(tied)
    read = throughput.decode_read(tied, inventory, "baseline", FP16)
    assert read.shared == {"float weight": 2304, "float (not quantized)": (32 + 80 + 8) * 2}
    assert read.per_sequence == {"KV cache read": 160}


def test_rate_and_the_batch_where_compute_takes_over(llama70):
    arch, inventory = llama70
    settings = Settings(context=256, batch=1)
    section = throughput.decode_plan(arch, inventory, "baseline", settings, ("H100-80GB",))
    card = section["gpus"][0]
    assert card["tokens_per_s_per_sequence"] == pytest.approx(3350e9 / section["bytes_per_step"])
    bound = card["bound_batch"]
    assert 200 < bound < 500
    below = throughput.decode_plan(arch, inventory, "baseline", replace(settings, batch=bound - 1), ("H100-80GB",))
    at = throughput.decode_plan(arch, inventory, "baseline", replace(settings, batch=bound), ("H100-80GB",))
    assert below["gpus"][0]["bandwidth_bound"] and not at["gpus"][0]["bandwidth_bound"]
    assert at["gpus"][0]["tokens_per_s_batch"] == pytest.approx(bound * at["gpus"][0]["tokens_per_s_per_sequence"])
    # weights alone: FP16 reads 2 bytes for 2 operations per sequence, so the card's peak over its bandwidth
    assert card["bound_batch_without_kv"] == math.ceil(989e12 / 3350e9 * (1 + 1e-3))


def test_the_70b_preset_reads_about_140_gb_in_fp16_and_70_gb_in_int8(llama70):
    result = plan_memory.run({"preset": "llama-2-70b", "context": 4096, "batch": 1}, Task())
    decode = {entry["method"]: entry["decode"] for entry in result["methods"]}
    assert 135e9 < decode["baseline"]["bytes_per_token"] < 142e9
    for method in ("vectorwise", "llm-int8-dynamic", "weight-only"):
        assert 68e9 < decode[method]["bytes_per_token"] < 72e9
    against = decode["vectorwise"]["against_baseline"]
    assert against["speedup"] == pytest.approx(
        decode["baseline"]["bytes_per_step"] / decode["vectorwise"]["bytes_per_step"]
    )
    assert 1.9 < against["speedup"] < 2.0
    steps = [step["term"] for step in against["steps"]]
    assert steps == ["Linear weights", "scales", "kept in floating point", "KV cache"]
    assert against["steps"][0]["speedup_so_far"] == 2.0
    assert against["steps"][-1]["speedup_so_far"] == pytest.approx(against["speedup"])
    assert "outlier columns" in [step["term"] for step in decode["llm-int8"]["against_baseline"]["steps"]]
    # With GQA's 1.34 GB of KV cache per sequence at 4096 tokens, no batch makes a step compute-bound.
    for card in decode["baseline"]["gpus"]:
        assert card["bound_batch"] is None and card["bound_batch_without_kv"] > 100
    h100 = {card["gpu"]: card for card in decode["baseline"]["gpus"]}["H100-80GB"]
    assert 23 < h100["tokens_per_s_per_sequence"] < 25
    # a batch of 16 sequences reads 16 KV caches: the INT8 advantage falls below 1.8x
    batch = plan_memory.run({"preset": "llama-2-70b", "batch": 16, "methods": ["vectorwise"]}, Task())
    assert batch["methods"][0]["decode"]["against_baseline"]["speedup"] < 1.8


def test_a_new_methods_terms_are_explained_after_the_known_ones():
    baseline = {"float weight": 200, "float (not quantized)": 50}
    method = {"int8 weight": 100, "smoothing factors": 10, "float (not quantized)": 50}
    steps = throughput.ratio_steps(baseline, method)
    assert [step["term"] for step in steps] == ["Linear weights", "kept in floating point", "smoothing factors"]
    assert [round(step["speedup_so_far"], 4) for step in steps] == [2.0, round(250 / 150, 4), round(250 / 160, 4)]


def test_the_plan_command_prints_the_decode_terms(capsys):
    code = plan_command.main(
        plan_command.add_parser(_subparsers()).parse_args(
            ["--preset", "llama-2-70b", "--method", "vectorwise", "--gpu", "H100-80GB"]
        )
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "decode at batch 1, context 4096" in out and "KV cache read" in out
    assert "H100-80GB   3,350 GB/s" in out and "fewer bytes per token than the baseline" in out


def _subparsers():
    import argparse

    return argparse.ArgumentParser().add_subparsers()


@pytest.mark.slow
def test_default_model_bytes_per_token_are_its_stored_bytes_plus_the_kv_read(default_model, default_scan):
    """SmolLM2-135M (tied) in float32: what a step reads is every stored tensor once, plus the planned KV cache."""
    from int8wb.engine.planning import memory
    from int8wb.engine.quant import quantize

    counts = {name: int(len(d)) for name, d in default_scan.outlier_dims(6.0).items()}
    params = {"preset": "smollm2-135m", "dtype": "float32", "outlier_counts": counts, "context": 300, "batch": 2}
    entries = {entry["method"]: entry for entry in plan_memory.run(params, Task())["methods"]}
    assert entries["baseline"]["decode"]["bytes_per_step"] == (
        memory.tensor_bytes(default_model.model)["state_bytes"] + entries["baseline"]["kv_cache"]["bytes"]
    )
    for method in quantize.METHODS:
        model = quantize.run({"method": method}, Task(), default_model, default_scan).model
        decode = entries[method]["decode"]
        planned_kv = entries[method]["kv_cache"]["bytes"]
        assert decode["bytes_per_step"] == memory.tensor_bytes(model)["state_bytes"] + planned_kv, method
        assert decode["bytes_per_token"] == decode["bytes_per_step"] / 2
