"""Layer types beyond nn.Linear: GPT-2's Conv1D, fused and ModuleList experts, routers, and what is not supported.

Fast checks on tiny models in memory; tests/test_architectures.py runs every family end to end.
"""

from __future__ import annotations

import json

import pytest
import torch

from int8wb.engine.errors import BadInput
from int8wb.engine.model.experts import ExpertLinears, unfuse_experts
from int8wb.engine.model.layers import decoder_layers, expert_index, is_router, linear_kind, linear_layers
from int8wb.engine.quant import coverage, quantize
from int8wb.engine.quant.int8_linear import Int8Linear
from int8wb.engine.task import Task
from tests.support.tiny_models import TinyLoaded, WordTokenizer, save_tiny, tiny_model


@pytest.mark.parametrize(
    "name, kind",
    [
        ("transformer.h.3.attn.c_attn", "attn_in"),
        ("transformer.h.3.attn.c_proj", "attn_out"),
        ("transformer.h.3.mlp.c_fc", "mlp_in"),
        ("transformer.h.3.mlp.c_proj", "mlp_down"),
        ("model.layers.2.mlp.experts.17.gate_up_proj", "expert_in"),
        ("model.layers.2.mlp.experts.17.down_proj", "expert_down"),
        ("model.layers.2.mlp.experts.5.w3", "expert_in"),
        ("model.layers.2.mlp.experts.5.w2", "expert_down"),
        ("model.layers.2.mlp.shared_expert.gate_proj", "mlp_in"),
        ("model.decoder.layers.0.fc2", "mlp_down"),
    ],
)
def test_every_input_kind_is_named(name, kind):
    assert linear_kind(name) == kind


def test_expert_numbers_and_routers():
    model = tiny_model("mixtral_list")
    assert expert_index("model.layers.2.mlp.experts.17.down_proj") == 17
    assert expert_index("model.layers.2.mlp.shared_expert.down_proj") is None
    assert is_router(model, "model.layers.0.mlp.gate") and not is_router(model, "model.layers.0.self_attn.q_proj")
    names = [name for name, _ in linear_layers(model)]
    assert "model.layers.0.mlp.gate" not in names and "model.layers.1.mlp.experts.3.w2" in names
    assert decoder_layers(model)[0] == "model.layers"  # not a block's longer list of experts


def test_unfused_experts_compute_the_same_function_on_the_same_tensors():
    model = tiny_model("qwen3_moe")
    fused = model.model.layers[1].mlp.experts.gate_up_proj  # (E, 2I, H)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        notes = unfuse_experts(model)
        after = model(input_ids=ids).logits
    experts = model.model.layers[1].mlp.experts
    assert isinstance(experts, ExpertLinears) and len(experts) == 4 and "one Linear per expert" in notes[0]
    assert experts[2].gate_up_proj.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
    assert torch.equal(experts[2].gate_up_proj.weight, fused[2])
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_conv1d_is_quantized_as_its_transposed_weight():
    conv = tiny_model("gpt2").transformer.h[0].attn.c_attn  # weight (in, out) = (64, 192)
    linear = torch.nn.Linear(64, 192)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.t())
        linear.bias.copy_(conv.bias)
    for method in ("absmax-tensor", "vectorwise", "llm-int8-dynamic", "weight-only"):
        ours, theirs = Int8Linear.from_linear(conv, method), Int8Linear.from_linear(linear, method)
        assert (ours.out_features, ours.in_features) == (192, 64)
        assert torch.equal(ours.weight_int8, theirs.weight_int8) and torch.equal(ours.weight_scale, theirs.weight_scale)
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert float((ours(x) - conv(x)).norm() / conv(x).norm()) < 0.01


def test_gpt2_is_quantized_whole():
    variant = quantize.run({"method": "vectorwise"}, Task(), TinyLoaded(tiny_model("gpt2"), WordTokenizer(257)))
    summary = variant.summary()
    assert summary["int8_share"] == 1.0 and summary["kept_float"] == [] and summary["warnings"] == []
    assert summary["int8_bytes"] == 2 * (64 * 192 + 64 * 64 + 64 * 256 + 256 * 64)


def gpt_oss() -> TinyLoaded:
    """GPT-OSS: its experts are transposed, biased and gated their own way, which the workbench does not take."""
    model = tiny_model("gpt_oss")
    notes = unfuse_experts(model)
    assert notes == [
        "not supported: GptOssExperts (is_concatenated, is_transposed, has_bias) in model.layers.0.mlp.experts, "
        "model.layers.1.mlp.experts (2 modules): they stay in floating point"
    ]
    return TinyLoaded(model, WordTokenizer(257))


def test_unsupported_experts_are_listed_with_a_warning():
    summary = quantize.run({"method": "vectorwise"}, Task(), gpt_oss()).summary()
    groups = {group["reason"]: group for group in summary["kept_float"]}
    assert groups["unsupported"]["why"] == "not supported: GptOssExperts in model.layers.*.mlp.experts"
    assert groups["unsupported"]["count"] == 2 and groups["router"]["modules"] == "model.layers.*.mlp.router"
    attention = 2 * (64 * 64 + 2 * 32 * 64 + 64 * 64)
    assert summary["int8_matrix_weights"] == attention and summary["int8_share"] < 0.5
    assert summary["int8_share"] == attention / (attention + 2 * (4 * 64 * 64 + 4 * 32 * 64) + 2 * 4 * 64)
    assert len(summary["warnings"]) == 1 and "only 33.1%" in summary["warnings"][0]
    assert "not supported: GptOssExperts" in summary["warnings"][0]


def test_nothing_in_int8_is_an_error_that_names_what_is_missing():
    with pytest.raises(BadInput) as caught:
        quantize.run({"method": "vectorwise", "skip_modules": ["model.layers"]}, Task(), gpt_oss())
    message = str(caught.value)
    assert "none of the decoder's matrix weights could be stored as INT8" in message
    assert "not supported: GptOssExperts in model.layers.*.mlp.experts" in message
    assert "skipped by the user" in message


def test_the_share_is_counted_over_the_decoder_only():
    loaded = TinyLoaded(tiny_model("mistral"), WordTokenizer(257))
    measured = coverage.measure(
        quantize.run({"method": "weight-only", "skip_modules": ["down_proj"]}, Task(), loaded).model
    )
    down = 2 * 64 * 128
    assert measured.matrix_weights == 2 * (64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 128 * 64)  # no embedding, no head
    assert measured.int8_weights == measured.matrix_weights - down
    assert measured.kept_float == [
        {
            "modules": "model.layers.*.mlp.down_proj",
            "count": 2,
            "layer_type": "Linear",
            "reason": "skipped",
            "why": "skipped by the user",
            "weights": down,
        }
    ]


def test_planner_counts_conv1d_and_every_expert():
    from int8wb.engine.planning import presets
    from int8wb.engine.planning.planner import active_parameters

    arch, inventory = presets.from_model(tiny_model("gpt2"))
    shapes = {s.name.split(".", 3)[-1]: (s.out_features, s.in_features) for s in inventory.linears if ".h.0." in s.name}
    assert shapes == {"attn.c_attn": (192, 64), "attn.c_proj": (64, 64), "mlp.c_fc": (256, 64), "mlp.c_proj": (64, 256)}

    model = tiny_model("qwen3_moe")
    unfuse_experts(model)
    arch, inventory = presets.from_model(model)
    experts = [s for s in inventory.linears if s.expert is not None]
    assert (arch.num_experts, arch.experts_per_token, len(experts)) == (4, 2, 2 * 4 * 2)
    assert inventory.parameters == sum(p.numel() for p in model.parameters())
    expert_weights = sum(s.out_features * s.in_features for s in experts)
    assert active_parameters(arch, inventory) == inventory.parameters - expert_weights // 2


def test_layer_by_layer_refuses_fused_experts(tmp_path):
    """Checkpoints store fused experts per expert under other names: the disk mode says so, in-memory loads."""
    from int8wb.engine.process.session import Session

    source = save_tiny(tmp_path / "moe", "qwen3_moe")
    with pytest.raises(
        BadInput, match=r"cannot run layer by layer: not supported: Qwen3MoeExperts .* in model\.layers\.0"
    ):
        Session().load_model({"model": str(source), "device": "cpu", "offload": "disk"}, Task())


@pytest.mark.slow
def test_moe_presets_match_published_parameter_counts():
    """Published: Mixtral 8x7B 46.7B total, 12.9B active (Mistral AI); Qwen3-30B-A3B 30.5B / 3.3B and
    Qwen3-235B-A22B 235B / 22B (Qwen model cards). The presets count every tensor transformers builds."""
    from int8wb.engine.planning import plan_memory, presets

    published = {  # billions, and the unit of the last digit given
        "mixtral-8x7b": (46.7, 12.9, 0.1),
        "qwen3-30b-a3b": (30.5, 3.3, 0.1),
        "qwen3-235b-a22b": (235, 22, 1),
    }
    rows = {row["name"]: row for row in presets.list_presets()}
    for name, (total, active, unit) in published.items():
        arch = plan_memory.run({"preset": name, "methods": ["baseline"], "gpus": ["H200-141GB"]}, Task())[
            "architecture"
        ]
        assert (arch["parameters"], arch["active_parameters"]) == (
            rows[name]["parameters"],
            rows[name]["active_parameters"],
        )
        assert abs(arch["parameters"] / 1e9 - total) < unit
        assert abs(arch["active_parameters"] / 1e9 - active) < unit
        assert arch["num_experts"] > arch["experts_per_token"] > 0


@pytest.mark.slow
def test_cli_states_the_share_and_warns(tmp_path, capsys):
    from int8wb.engine.cli import main

    gpt2 = save_tiny(tmp_path / "gpt2", "gpt2")
    assert main(["quantize", "--model", str(gpt2), "--methods", "vectorwise", "--json", "--quiet"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["models"]
    assert row["int8_bytes"] > 0 and row["int8_share"] == 1.0 and row["warnings"] == []

    oss = save_tiny(tmp_path / "gpt-oss", "gpt_oss")
    assert main(["quantize", "--model", str(oss), "--methods", "vectorwise", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "warning: vectorwise: only 33.1%" in captured.err
    assert "not supported: GptOssExperts in model.layers.*.mlp.experts" in captured.out
