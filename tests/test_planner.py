"""The memory planner against hand-computed numbers, the seed's 70B claim, the LLM.int8() Table 3 case.

The small architecture used for the terms (hidden 8, 2 layers, 2 heads / 1 KV head of 4, MLP 16,
vocabulary 10, untied) has, per layer, Linears q (8, 8), k (4, 8), v (4, 8), o (8, 8),
gate (16, 8), up (16, 8), down (8, 16): 576 weights in 64 rows; two RMSNorms of 8 per layer,
an embedding of 80 and a final norm (8) plus lm_head (80) after the stack: 1352 parameters.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from int8wb.engine.cli import plan as plan_command
from int8wb.engine.errors import BadInput
from int8wb.engine.planning import gpus, plan_memory, planner, presets
from int8wb.engine.planning.planner import Architecture, Settings
from int8wb.engine.task import Task
from int8wb.engine.vocabulary import GIB, GPUS, MIB

TINY = Architecture(
    name="tiny",
    hidden_size=8,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    head_dim=4,
    intermediate_size=16,
    vocab_size=10,
)
TINY_INVENTORY = presets.llama_inventory(TINY)
FP16 = Settings(context=5, batch=3, dtype="float16", outlier_fraction=0.25)


@pytest.fixture(scope="module")
def llama70():
    arch, inventory, notes = presets.from_config_dict(presets.preset_config("llama-2-70b"), "llama-2-70b")
    assert notes == []
    return arch, inventory


def test_tiny_inventory_counts():
    assert TINY_INVENTORY.parameters == 1352
    assert len(TINY_INVENTORY.linears) == 14
    assert TINY_INVENTORY.float_elements_first == 80 and TINY_INVENTORY.float_elements_last == 88


@pytest.mark.parametrize(
    "method, expected",
    [
        ("baseline", {"float weight": 1152 * 2, "float (not quantized)": 200 * 2}),
        ("absmax-tensor", {"int8 weight": 1152, "scales": 14 * 4, "float (not quantized)": 400}),
        ("vectorwise", {"int8 weight": 1152, "scales": 128 * 4, "float (not quantized)": 400}),
        ("weight-only", {"int8 weight": 1152, "scales": 128 * 4, "float (not quantized)": 400}),
        ("llm-int8-dynamic", {"int8 weight": 1152, "scales": 128 * 4, "float (not quantized)": 400}),
        # 0.25 of in=8 is 2 columns, of in=16 (down) 4: per layer 6 x 2 + 4 = 16 indices of 8 bytes,
        # and 8x2 + 4x2 + 4x2 + 8x2 + 16x2 + 16x2 + 8x4 = 144 outlier weights of 2 bytes.
        (
            "llm-int8",
            {
                "int8 weight": 1152,
                "scales": 512,
                "outlier indices": 2 * 16 * 8,
                "outlier weight": 2 * 144 * 2,
                "float (not quantized)": 400,
            },
        ),
    ],
)
def test_weight_terms_by_hand(method, expected):
    assert planner.weight_terms(TINY_INVENTORY, method, FP16) == expected
    assert planner.weight_bytes(TINY_INVENTORY, method, FP16) == sum(expected.values())


def test_biases_and_float32_by_hand():
    shape = planner.LinearShape("fc", out_features=3, in_features=5, bias=True, layer=0, outlier_cols=2)
    assert planner.linear_terms(shape, "baseline", 4, 0.0) == {"bias": 12, "float weight": 60}
    assert planner.linear_terms(shape, "llm-int8", 4, 0.9) == {
        "bias": 12,
        "int8 weight": 15,
        "scales": 12,
        "outlier indices": 16,
        "outlier weight": 24,
    }


def test_kv_cache_by_hand():
    # 2 (K and V) x 2 layers x batch 3 x context 5 x 1 KV head x 4 x 2 bytes
    assert planner.kv_cache_bytes(TINY, FP16) == 480


def test_workspace_by_hand():
    # 15 tokens: residual 2x15x8x2 = 480; attention 15x(2x2 + 2x1)x4x2 = 720; MLP 3x15x16x2 = 1440;
    # logits of the last position 3x10x2 = 60; int8: 15x16 + 15x16x4 = 1200.
    assert planner.workspace_terms(TINY, TINY_INVENTORY, "baseline", FP16) == {"residual": 480, "block": 1440}
    assert planner.workspace_terms(TINY, TINY_INVENTORY, "vectorwise", FP16) == {
        "residual": 480,
        "block": 1440,
        "int8": 1200,
    }
    assert planner.workspace_terms(TINY, TINY_INVENTORY, "weight-only", FP16)["dequant"] == 16 * 8 * 2
    assert planner.workspace_terms(TINY, TINY_INVENTORY, "llm-int8-dynamic", FP16)["outliers"] == 16 * 4 * 2
    eager = Settings(context=20, batch=1, attention="eager")  # 20x6x4x2 + 2x1x2x20x20x2 = 960 + 3200
    assert planner.workspace_terms(TINY, TINY_INVENTORY, "baseline", eager)["block"] == 4160
    big_vocab = replace(TINY, vocab_size=1000)  # all 15 positions x 1000 x 2 bytes beat the MLP
    assert planner.workspace_terms(big_vocab, TINY_INVENTORY, "baseline", replace(FP16, logits="all"))["block"] == 30000


def test_placement_whole_layers():
    # 40 bytes of units in cards of 20: the middle layers cannot share, so 3 cards, not ceil(40/20) = 2.
    assert gpus.place_on_gpus([5, 10, 10, 10, 5], 20) == [15, 20, 5]
    assert gpus.place_on_gpus([5, 21, 5], 20) is None
    assert gpus.place_on_gpus([1], 0) is None


def test_gpu_plan_terms_by_hand():
    card = gpus.gpu_plan(TINY, TINY_INVENTORY, "baseline", FP16, "A100-40GB")
    usable = int(40960 * MIB * 0.9)
    assert card["usable_bytes"] == usable
    assert card["budget_per_gpu_bytes"] == usable - GIB - (480 + 1440)
    assert card["state_bytes"] == 2704 + 480
    assert card["needed"] == 1 and card["per_gpu_bytes"] == [2704 + 480]


def test_seed_claim_70b_at_4096_tokens(llama70):
    """Llama-2-70B, batch 1 x context 4096, float16, 90% usable, 1 GiB overhead: FP16 4 x A100-40GB, INT8 2."""
    arch, inventory = llama70
    settings = Settings(context=4096, batch=1)
    assert inventory.parameters == 68_976_648_192
    fp16 = gpus.gpu_plan(arch, inventory, "baseline", settings, "A100-40GB")
    kv = 2 * 80 * 4096 * 8 * 128 * 2
    assert kv == planner.kv_cache_bytes(arch, settings) == 1_342_177_280
    workspace = 2 * 4096 * 8192 * 2 + 3 * 4096 * 28672 * 2  # residual + MLP block (the largest)
    budget = int(40960 * MIB * 0.9) - GIB - workspace
    assert fp16["budget_per_gpu_bytes"] == budget == 36_742_103_040
    assert fp16["state_bytes"] == 68_976_648_192 * 2 + kv
    assert 3 * budget < fp16["state_bytes"] <= 4 * budget  # why 4 and not 3
    assert fp16["needed"] == 4

    int8 = gpus.gpu_plan(arch, inventory, "vectorwise", settings, "A100-40GB")
    float_elements = 32000 * 8192 * 2 + 80 * 2 * 8192 + 8192  # embeddings, lm_head, norms
    rows = 80 * (8192 + 1024 + 1024 + 8192 + 2 * 28672 + 8192)  # q k v o gate up down
    weights = (68_976_648_192 - float_elements) + 4 * rows + 2 * float_elements
    assert planner.weight_bytes(inventory, "vectorwise", settings) == weights == 69_529_124_864
    int8_budget = budget - (4096 * 28672 + 4096 * 28672 * 4)
    assert int8["budget_per_gpu_bytes"] == int8_budget
    assert int8_budget < weights + kv <= 2 * int8_budget
    assert int8["needed"] == 2


def test_seed_claim_where_it_stops(llama70):
    arch, inventory = llama70
    settings = Settings(context=4096, batch=1)
    limit = gpus.largest_context(arch, inventory, "vectorwise", settings, "A100-40GB", 2)
    assert 4096 < limit < 8192
    assert gpus.fits_on(arch, inventory, "vectorwise", replace(settings, context=limit), "A100-40GB", 2)
    assert not gpus.fits_on(arch, inventory, "vectorwise", replace(settings, context=limit + 1), "A100-40GB", 2)
    fp16_limit = gpus.largest_context(arch, inventory, "baseline", settings, "A100-40GB", 4)
    assert fp16_limit > limit
    # four sequences of 4096 tokens: INT8 needs a third card, FP16 a fifth
    batch4 = replace(settings, batch=4)
    assert gpus.gpu_plan(arch, inventory, "vectorwise", batch4, "A100-40GB")["needed"] == 3
    assert gpus.gpu_plan(arch, inventory, "baseline", batch4, "A100-40GB")["needed"] == 5


def test_llm_int8_table_3_eight_a100_40gb():
    """LLM.int8() Table 3: on 8 x A100-40GB the largest model goes from OPT-66B (16-bit) to the 175B class (8-bit)."""
    names = ["opt-6.7b", "opt-13b", "opt-30b", "opt-66b", "opt-175b", "bloom-176b"]
    candidates = [presets.from_config_dict(presets.preset_config(n), n)[:2] for n in names]
    settings = Settings(context=2048, batch=1)
    assert gpus.largest_fitting(candidates, "baseline", settings, "A100-40GB", 8).name == "opt-66b"
    for method in ("vectorwise", "llm-int8"):
        assert gpus.largest_fitting(candidates, method, settings, "A100-40GB", 8).name == "bloom-176b"
    arch, inventory = candidates[names.index("opt-175b")]
    assert gpus.fits_on(arch, inventory, "llm-int8", settings, "A100-40GB", 8)
    assert not gpus.fits_on(arch, inventory, "baseline", settings, "A100-40GB", 8)


def test_presets_match_published_parameter_counts():
    published = {
        "llama-2-7b": 6_738_415_616,
        "llama-2-70b": 68_976_648_192,
        "mistral-7b": 7_241_732_096,
        "opt-6.7b": 6_658_473_984,
        "bloom-176b": 176_247_271_424,
        "smollm2-135m": 134_515_008,
    }
    rows = {row["name"]: row for row in presets.list_presets()}
    assert {"7B", "13B", "70B", "175B"} <= {row["scale"] for row in rows.values()}
    for name, count in published.items():
        assert rows[name]["parameters"] == count
        assert presets.from_config_dict(presets.preset_config(name), name)[1].parameters == count


def test_config_without_model_type_is_read_as_llama(tmp_path):
    raw = {
        key: value
        for key, value in presets.preset_config("smollm2-135m").items()
        if key not in ("model_type", presets.PRESET_KEY)
    }
    (tmp_path / "config.json").write_text(json.dumps(raw))
    arch, inventory, notes = presets.from_config_dict(presets.read_config(tmp_path), "custom")
    assert "Llama-style" in notes[0]
    _, built, _ = presets.from_config_dict(presets.preset_config("smollm2-135m"), "smollm2-135m")
    assert inventory == built  # the numbers-only layout equals what transformers builds on meta
    assert arch.num_kv_heads == 3 and arch.tie_word_embeddings


def test_plan_from_a_loaded_model_counts_its_tensors():
    from int8wb.engine.planning.memory import tensor_bytes
    from tests.support.tiny_models import tiny_llama

    model = tiny_llama(hidden=32, intermediate=64, vocab=50, tie=False)
    result = plan_memory.run({"model": model, "context": 16}, Task())
    assert result["settings"]["dtype"] == "float32"
    baseline = next(m for m in result["methods"] if m["method"] == "baseline")
    assert baseline["weights"]["bytes"] == tensor_bytes(model)["state_bytes"]
    assert result["architecture"]["quantizable_linears"] == 14


def test_run_result_is_json_and_shows_every_term():
    result = plan_memory.run({"preset": "llama-2-7b", "context": 1024, "batch": 2}, Task())
    text = json.dumps(result)
    assert json.loads(text)["source"] == {"kind": "preset", "name": "llama-2-7b"}
    method = result["methods"][0]
    assert set(method) >= {"weights", "kv_cache", "workspace", "total_bytes", "gpus"}
    assert [card["gpu"] for card in method["gpus"]] == list(GPUS)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"preset": "llama-2-7b", "context": -1}, "context"),
        ({"preset": "llama-2-7b", "batch": 0}, "batch"),
        ({"preset": "llama-2-7b", "usable_fraction": 0}, "usable fraction"),
        ({"preset": "llama-2-7b", "outlier_fraction": 1.5}, "outlier fraction"),
        ({"preset": "llama-2-7b", "gpus": ["A100-20GB"]}, "unknown GPU"),
        ({"preset": "gpt-5"}, "unknown preset"),
        ({"preset": "llama-2-7b", "config": "x"}, "exactly one"),
        ({"config": "/nonexistent/config.json"}, "no config file"),
    ],
)
def test_bad_input(params, message):
    with pytest.raises(BadInput, match=message):
        plan_memory.run(params, Task())


def test_config_missing_fields(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2, "vocab_size": 10}))
    with pytest.raises(BadInput, match="lacks hidden_size, num_heads, intermediate_size"):
        plan_memory.run({"config": str(path)}, Task())
    path.write_text("{not json")
    with pytest.raises(BadInput, match="not a readable JSON"):
        plan_memory.run({"config": str(path)}, Task())


def test_zero_gpus():
    with pytest.raises(BadInput, match="number of GPUs"):
        gpus.fits_on(TINY, TINY_INVENTORY, "baseline", FP16, "A100-40GB", 0)
    with pytest.raises(BadInput, match="COUNTxGPU|number of GPUs"):
        plan_command.largest_on("0xA100-40GB", "opt-6.7b", {})


def test_cli_plan_json_and_errors(capsys):
    from int8wb.engine import cli

    assert cli.main(["plan", "--preset", "llama-2-70b", "--gpu", "A100-40GB", "--method", "baseline", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["methods"][0]["gpus"][0]["needed"] == 4
    assert cli.main(["plan", "--list-presets"]) == 0
    assert "opt-175b" in capsys.readouterr().out
    assert cli.main(["plan", "--preset", "llama-2-7b", "--context", "-5"]) == 2
    assert "context must be" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "plan",
                "--largest-on",
                "8xA100-40GB",
                "--among",
                "opt-66b,opt-175b",
                "--context",
                "2048",
                "--method",
                "baseline",
                "--method",
                "llm-int8",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["largest"] == {"baseline": "opt-66b", "llm-int8": "opt-175b"}


def test_cli_text_shows_the_terms(capsys):
    from int8wb.engine import cli

    assert cli.main(["plan", "--preset", "llama-2-70b", "--gpu", "A100-40GB", "--method", "vectorwise"]) == 0
    text = capsys.readouterr().out
    for term in ("int8 weight", "scales", "KV cache", "workspace", "budget", "2 GPUs"):
        assert term in text


def test_one_machine_layer_by_layer_holds_one_layer_and_reads_the_checkpoint_once():
    from int8wb.engine.planning import layer_by_layer

    result = plan_memory.run({"preset": "llama-2-70b", "context": 4096, "methods": ["baseline", "llm-int8"]}, Task())
    line = result["layer_by_layer"]
    arch, inventory, _ = presets.from_config_dict(presets.preset_config("llama-2-70b"), "llama-2-70b")
    largest_layer = max(planner.layer_weight_bytes(inventory, "baseline", Settings()))
    assert line["terms"]["largest part"] == largest_layer  # 1.6 GiB of a 128 GiB model in fp16
    assert line["streams"] == 3  # the calibration tokens, the baseline, llm-int8
    assert line["peak_bytes"] < 24 * GIB  # a 70B model scans on one 24 GB GPU
    assert line["read_bytes"] == planner.weight_bytes(inventory, "baseline", Settings())
    assert line["read_seconds"] == line["read_bytes"] / layer_by_layer.DEFAULT_DISK_BYTES_PER_S
    assert line["line"].startswith("one machine, layer by layer: peak about")


def test_offload_auto_says_which_way_and_why():
    from int8wb.engine.planning.layer_by_layer import choose_offload

    assert choose_offload("auto", 5 * GIB, 20 * GIB, "of RAM available")[0] == "none"
    mode, reason = choose_offload("auto", 27 * GIB, 20 * GIB, "of RAM available")
    assert mode == "disk" and "27.0 GiB exceeds the 20.0 GiB of RAM available" in reason
    assert choose_offload("none", 27 * GIB, 1, "")[0] == "none" and choose_offload("disk", 1, 27 * GIB, "")[0] == "disk"
    with pytest.raises(BadInput, match="offload must be one of"):
        choose_offload("cloud", 1, 1, "")
