"""The sensitivity sweep, the skip list it builds, and exports with a skip list that bitsandbytes loads."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from int8wb.engine.errors import BadInput
from int8wb.engine.measure import evaluate, sensitivity
from int8wb.engine.process.session import Session
from int8wb.engine.quant import quantize, skip_list
from int8wb.engine.task import Task
from tests.support.tiny_models import save_tiny_llama, tiny_llama, tiny_loaded

TARGET = 0.3  # percent: the tiny random model is far from text, so INT8 moves its perplexity little
SWEEP = {"tokens": 256, "holdout_tokens": 256, "window": 64, "batch_size": 4, "threshold": 6.0}


@pytest.fixture(scope="module")
def planted():
    return tiny_loaded(dim=5, factor=60.0)


def test_names_resolve_to_linears():
    model = tiny_llama()
    q = "model.layers.0.self_attn.q_proj"
    assert skip_list.resolve(model, [q]) == [q]
    assert len(skip_list.resolve(model, "model.layers.1")) == 7
    assert skip_list.resolve(model, "down_proj") == [f"model.layers.{i}.mlp.down_proj" for i in range(2)]
    assert skip_list.resolve(model, "model.layers.0.mlp, down_proj")[-1] == "model.layers.1.mlp.down_proj"


def test_unknown_names_are_refused_with_the_closest_real_ones():
    model = tiny_llama()
    with pytest.raises(BadInput, match="closest: model.layers.0.self_attn.q_proj"):
        skip_list.resolve(model, ["model.layers.0.self_attn.qproj"])
    with pytest.raises(BadInput, match="list of module names"):
        skip_list.resolve(model, [3])


def test_names_in_floating_point_already_are_accepted_with_a_note():
    model = tiny_llama()
    assert skip_list.resolve(model, ["lm_head", "model.norm", "down_proj"]) == [
        f"model.layers.{i}.mlp.down_proj" for i in range(2)
    ]
    (note,) = skip_list.notes(model, "lm_head, model.norm, down_proj")
    assert note.startswith("lm_head, model.norm: already in floating point")
    assert skip_list.notes(model, "down_proj") == []
    with pytest.raises(BadInput, match="no module named 'model.nrom'"):
        skip_list.notes(model, "lm_head, model.nrom")


def test_every_printed_form_of_a_list_resolves_to_the_same_linears():
    model = tiny_llama()
    kept = skip_list.resolve(model, "model.layers.1.mlp")
    for names in skip_list.tool_forms(kept).values():
        for printed in (names, ",".join(names), str(names), json.dumps(names), json.dumps(names, indent=1)):
            assert skip_list.resolve(model, printed) == kept, printed


def test_tool_forms_keep_lm_head():
    forms = skip_list.tool_forms(["model.layers.0.mlp.down_proj"])
    assert forms["llm_int8_skip_modules"] == ["model.layers.0.mlp.down_proj", "lm_head"]
    assert forms["ignore"] == forms["llm_int8_skip_modules"]


def test_groups_by_layer_by_input_and_by_linear():
    model = tiny_llama()
    layers = sensitivity.groups_of(model, "layer")
    assert list(layers) == ["model.layers.0", "model.layers.1"] and all(len(v) == 7 for v in layers.values())
    assert len(sensitivity.groups_of(model, "linear")) == 14
    inputs = sensitivity.groups_of(model, "input")
    assert list(inputs)[:4] == [
        "model.layers.0.self_attn.q_proj+k_proj+v_proj",
        "model.layers.0.self_attn.o_proj",
        "model.layers.0.mlp.gate_proj+up_proj",
        "model.layers.0.mlp.down_proj",
    ]
    assert len(inputs) == 8 and sorted(n for v in inputs.values() for n in v) == sorted(
        layers["model.layers.0"] + layers["model.layers.1"]
    )


def test_a_list_that_splits_what_vllm_fuses_says_so_and_whole_sets_do_not(tmp_path):
    model = tiny_llama()
    v_alone = ["model.layers.1.self_attn.v_proj", "model.layers.0.mlp.down_proj"]
    assert skip_list.split_fused_sets(model, v_alone) == [[f"model.layers.1.self_attn.{p}_proj" for p in "qkv"]]
    (note,) = skip_list.vllm_notes(model, v_alone)
    assert "model.layers.1.self_attn.q_proj" in note and "--group input" in note
    whole = [name for members in sensitivity.groups_of(model, "input").values() for name in members if ".1." in name]
    assert skip_list.vllm_notes(model, whole) == [] and skip_list.vllm_notes(model, []) == []
    source = save_tiny_llama(tmp_path / "tiny", intermediate=128)
    session = Session()
    session.load_model({"model": str(source), "device": "cpu"}, Task())
    session.quantize({"methods": ["vectorwise"], "skip_modules": v_alone}, Task())
    exported = session.export(
        {"method": "vectorwise", "format": "compressed-tensors", "out": str(tmp_path / "ct")}, Task()
    )
    assert any("refuses a checkpoint" in n for n in exported["notes"])
    exported = session.export({"method": "vectorwise", "out": str(tmp_path / "bnb")}, Task())
    assert not any("vLLM" in n for n in exported["notes"])  # transformers + bitsandbytes load each Linear alone


def test_kept_in_float_puts_everything_back(planted):
    variant = quantize.run({"method": "vectorwise"}, Task(), planted)
    name = "model.layers.0.mlp.down_proj"
    before = variant.model.get_submodule(name)
    with sensitivity.kept_in_float(variant.model, planted.model, [name]):
        assert variant.model.get_submodule(name) is planted.model.get_submodule(name)
    assert variant.model.get_submodule(name) is before


def assert_replay_measures_what_running_measures(model, outputs, batches, reference):
    """`model` measured running every layer, and again with layer 0 replayed from `outputs`: the same, and layer 0
    not run the second time. Returns the measurement."""
    computed = sensitivity._against(model, batches, reference, Task())
    first_layer_calls = []
    handle = outputs.blocks[0].register_forward_pre_hook(lambda *_: first_layer_calls.append(1))
    with outputs.replaying(1):
        replayed = sensitivity._against(model, batches, reference, Task())
    handle.remove()
    assert first_layer_calls == []
    assert torch.equal(computed.nll, replayed.nll) and computed.kl_divergence == replayed.kl_divergence
    return computed


def test_replayed_layers_measure_exactly_what_running_them_measures(planted):
    """A group in layer 1 measured with layer 0 replayed from the fully quantized pass: same NLL, layer 0 not run."""
    from int8wb.engine.model.replay import LayerOutputs

    variant = quantize.run({"method": "vectorwise"}, Task(), planted)
    windows, _ = evaluate.evaluation_windows(evaluate.EvalSettings(tokens=256, window=64), planted.tokenizer)
    batches = windows.split(2)
    reference = sensitivity._reference(planted.model, batches, Task())
    recorded = LayerOutputs(variant.model)
    with recorded.recording():
        sensitivity._against(variant.model, batches, reference, Task())
    names = ["model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj"]
    assert recorded.layer_of(names[0]) == 1 and recorded.layer_of("lm_head") == 0
    with sensitivity.kept_in_float(variant.model, planted.model, names):
        assert_replay_measures_what_running_measures(variant.model, recorded, batches, reference)
    assert isinstance(variant.model.model.layers[0], type(planted.model.model.layers[0]))  # put back


def test_the_upper_bound_of_a_change_covers_other_texts_95_times_in_100():
    """A list whose log-likelihood change has a known mean: the bound from one text (its divergences and NLL
    differences) is above another text's change about 95 times in 100."""
    generator = torch.Generator().manual_seed(0)

    def text():
        return 0.01 + 0.3 * torch.randn(2048, generator=generator, dtype=torch.float64)

    covered = 0
    for _ in range(400):
        divergences = 0.01 + 0.002 * torch.randn(2048, generator=generator, dtype=torch.float64)
        expected, upper = sensitivity.change_bounds(divergences, text())
        assert upper > expected == pytest.approx(100 * math.expm1(float(divergences.mean())))
        covered += 100 * math.expm1(float(text().mean())) <= upper
    assert 0.90 <= covered / 400 <= 0.99
    constant = torch.full((512,), 0.02, dtype=torch.float64)
    assert sensitivity.change_bounds(constant, constant) == pytest.approx((100 * math.expm1(0.02),) * 2)


def test_the_divergence_a_few_positions_at_a_time_is_the_elementwise_one():
    """KL(p || q) at each position, p from the kept float16 log-probabilities, against float64 elementwise."""
    generator = torch.Generator().manual_seed(3)
    reference = torch.log_softmax(3 * torch.randn(2, 37, 1000, generator=generator), dim=-1)
    other = torch.log_softmax(reference + 0.2 * torch.randn(2, 37, 1000, generator=generator), dim=-1)
    kept = reference.half()
    log_p = kept.double()
    elementwise = (log_p.exp() * (log_p - other.double())).sum(-1).flatten()
    for rows in (1, 5, 32, 100):
        per_position = sensitivity._divergence(kept, other, rows=rows)
        assert per_position.dtype == torch.float64 and per_position.shape == (74,)
        torch.testing.assert_close(per_position, elementwise, rtol=1e-5, atol=1e-9)
    assert float(sensitivity._divergence(kept, reference.half().float()).abs().max()) < 1e-9


def test_the_walk_measures_once_a_share_of_the_divergence_is_added():
    ranking = [{"group": name, "kl_divergence": kl} for name, kl in [("a", 0.5), ("b", 0.2), ("c", 0.15), ("d", 0.1)]]
    steps = [[entry["group"] for entry in step] for step in sensitivity.walk_steps(ranking, 0.3)]
    assert steps == [["a"], ["b", "c"], ["d"]]  # the last step takes what is left
    assert [len(step) for step in sensitivity.walk_steps(ranking, 0.0)] == [1, 1, 1, 1]


def test_groups_rank_by_the_damage_they_do_alone_per_byte():
    measured = [
        {"group": "small damage", "kl_divergence": 0.1, "float_bytes": 1},
        {"group": "large but big", "kl_divergence": 0.6, "float_bytes": 4},
        {"group": "worst per byte", "kl_divergence": 0.5, "float_bytes": 2},
        {"group": "none", "kl_divergence": 0.0, "float_bytes": 1},
    ]
    ranked = [entry["group"] for entry in sensitivity.rank_groups(measured)]
    assert ranked == ["worst per byte", "large but big", "small damage", "none"]


def test_a_group_quantized_alone_measures_the_same_with_the_float_layers_before_it_replayed(planted):
    """Layer 1 quantized alone, layer 0 replayed from the floating-point model's pass: same NLL, layer 0 not run."""
    from int8wb.engine.model.replay import LayerOutputs

    variant = quantize.run({"method": "vectorwise"}, Task(), planted)
    windows, _ = evaluate.evaluation_windows(evaluate.EvalSettings(tokens=256, window=64), planted.tokenizer)
    batches = windows.split(2)
    float_outputs = LayerOutputs(variant.model)
    with float_outputs.recording(of=planted.model):
        reference = sensitivity._reference(planted.model, batches, Task())
    layer_0 = sensitivity.groups_of(planted.model, "layer")["model.layers.0"]
    with sensitivity.kept_in_float(variant.model, planted.model, layer_0):
        computed = assert_replay_measures_what_running_measures(variant.model, float_outputs, batches, reference)
    assert computed.kl_divergence > 0  # layer 1 is quantized
    with (
        pytest.raises(ValueError, match="decoder layers"),
        LayerOutputs(variant.model).recording(of=tiny_llama(layers=3)),
    ):
        pass


@pytest.fixture(scope="module")
def sweep(planted):
    """The sweep on the planted model, and how many evaluations (passes over the sweep or held-out tokens) it ran."""
    calls = []
    originals = [(evaluate, "perplexity"), (sensitivity, "_reference"), (sensitivity, "_against")]

    def counting(original):
        def counted(*args, **kwargs):
            calls.append(original.__name__)
            return original(*args, **kwargs)

        return counted

    saved = [(module, name, getattr(module, name)) for module, name in originals]
    for module, name, original in saved:
        setattr(module, name, counting(original))
    try:
        result = sensitivity.run(
            {**SWEEP, "method": "absmax-tensor", "group": "linear", "target": TARGET}, Task(), planted
        )
    finally:
        for module, name, original in saved:
            setattr(module, name, original)
    return result, len(calls)


def test_the_sweep_finds_the_planted_outlier_and_reaches_the_target(sweep):
    result, _ = sweep
    top = result["ranking"][:3]
    assert {name.rsplit(".", 1)[-1] for name in top} <= {"q_proj", "k_proj", "v_proj"}
    goal = result["baseline"] * (1 + TARGET / 100)
    assert result["quantized"] > goal  # there was something to repair
    last = result["curve"][-1]
    assert result["reached"] and last["expected_pct"] <= last["upper_pct"] <= TARGET
    assert [p["float_bytes"] for p in result["curve"]] == sorted(p["float_bytes"] for p in result["curve"])
    assert result["float_bytes"] == result["curve"][-1]["float_bytes"] > 0
    holdout = result["holdout"]
    assert abs(holdout["with_skip_list"] - holdout["baseline"]) < abs(holdout["quantized"] - holdout["baseline"])
    assert result["forms"]["llm_int8_skip_modules"][-1] == "lm_head"


def test_the_sweep_costs_one_evaluation_per_group(sweep):
    result, evaluations = sweep
    greedy_steps = len(result["curve"]) - 1
    assert evaluations == 2 + len(result["groups"]) + greedy_steps + 3


@pytest.mark.parametrize(
    "params, message",
    [
        ({"target": -1.0}, "below what keeping everything"),
        ({"tokens": 32}, "at least one window"),
        ({"holdout_tokens": 0}, "positive integer"),
        ({"group": "block"}, "group must be"),
        ({"method": "nope"}, "unknown method"),
    ],
)
def test_bad_sweep_settings(planted, params, message):
    with pytest.raises(BadInput, match=message):
        sensitivity.run({**SWEEP, "method": "vectorwise", **params}, Task(), planted)


def test_export_with_a_skip_list_loads_in_bitsandbytes(tmp_path):
    """The skipped Linears come back as torch.nn.Linear, lm_head is not quantized, the rest is INT8."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    source = save_tiny_llama(tmp_path / "tiny", intermediate=128)
    session = Session()
    session.load_model({"model": str(source), "device": "cpu"}, Task())
    skipped = ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn"]
    session.quantize({"methods": ["vectorwise"], "skip_modules": skipped}, Task())
    out = tmp_path / "export"
    session.export({"method": "vectorwise", "out": str(out)}, Task())
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    expected = {"model.layers.0.mlp.down_proj", "lm_head"} | {
        f"model.layers.1.self_attn.{p}_proj" for p in ("q", "k", "v", "o")
    }
    assert set(config["llm_int8_skip_modules"]) == expected
    model, info = AutoModelForCausalLM.from_pretrained(out, device_map="cpu", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    for name, module in model.named_modules():
        if name in expected:
            assert type(module) is torch.nn.Linear, name
        elif name.endswith("_proj"):
            assert isinstance(module, bnb.nn.Linear8bitLt), name
    reference = session.quantized["vectorwise"].model
    ids = torch.randint(0, 200, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bitsandbytes warns that it casts float32 inputs to float16
        ours, theirs = reference(input_ids=ids).logits, model.eval()(input_ids=ids).logits
    assert float((theirs - ours).norm() / ours.norm()) < 0.02


def test_cli_export_with_skip_modules_prints_the_lists(tmp_path, capsys):
    from int8wb.engine.cli import main

    source = save_tiny_llama(tmp_path / "tiny", intermediate=128)
    out = tmp_path / "export"
    code = main(
        ["export", "--model", str(source), "--method", "vectorwise", "--out", str(out), "--quiet"]
        + ["--skip-modules", "model.layers.0", "--calibration-tokens", "128", "--seq-len", "64"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "llm_int8_skip_modules: ['model.layers.0.self_attn.q_proj'" in printed and "'lm_head']" in printed
    assert main(["export", "--model", str(source), "--out", str(tmp_path / "x"), "--skip-modules", "qproj"]) == 2
    assert "closest" in capsys.readouterr().err


def test_cli_sensitivity_prints_the_curve_with_its_bound_and_the_lists(tmp_path, capsys):
    from int8wb.engine.cli import main

    source = save_tiny_llama(tmp_path / "tiny", outlier_dim=5)
    common = ["sensitivity", "--model", str(source), "--method", "absmax-tensor", "--group", "linear"]
    sizes = ["--tokens", "256", "--holdout-tokens", "256", "--window", "64", "--quiet"]
    assert main([*common, "--target", "0.3", *sizes, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["confidence"] == 0.95 and result["curve"][0]["added"] == []
    assert all(p["upper_pct"] >= p["expected_pct"] for p in result["curve"])
    assert result["reached"] == (result["curve"][-1]["upper_pct"] <= 0.3)
    assert main([*common, "--target", "0.3", *sizes]) == 0
    printed = capsys.readouterr().out
    assert "float MB kept -> perplexity (measured change; the change its divergence gives" in printed
    assert "at most" in printed
    assert "llm_int8_skip_modules" in printed and "held-out 256 tokens" in printed
    assert main([*common, "--target", "-1", *sizes]) == 2
    assert "below what keeping everything in floating point reaches" in capsys.readouterr().err


@pytest.mark.slow
def test_every_skip_list_the_tool_prints_pastes_back_into_export(tmp_path, capsys):
    """Each list `sensitivity` prints (text and JSON, every tool's form, the `export it` line) and each that
    `export` prints is taken by `export --skip-modules` as it is printed."""
    from int8wb.engine.cli import main
    from int8wb.engine.cli.sensitivity import format_sensitivity

    source = save_tiny_llama(tmp_path / "tiny", outlier_dim=5)
    sweep = ["sensitivity", "--model", str(source), "--method", "absmax-tensor", "--group", "input", "--target"]
    sizes = ["0.3", "--tokens", "128", "--holdout-tokens", "128", "--window", "64", "--quiet", "--json"]
    assert main([*sweep, *sizes]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 < len(result["skip_modules"]) < len(skip_list.resolve(tiny_llama(), "model.layers"))
    lines = format_sensitivity(result).splitlines()
    printed = [line.split(": ", 1)[1] for line in lines if line.startswith(tuple(result["forms"]))]
    printed += [line.split("--skip-modules ", 1)[1] for line in lines if line.startswith("export it:")]
    printed += [json.dumps(names, indent=1) for names in [result["skip_modules"], *result["forms"].values()]]
    assert len(printed) == 2 + 1 + 3

    def export(names: str, out: str) -> str:
        argv = ["export", "--model", str(source), "--method", "vectorwise", "--out", str(tmp_path / out), "--quiet"]
        assert main([*argv, "--skip-modules", names]) == 0, names
        captured = capsys.readouterr()
        assert ("note: lm_head: already in floating point" in captured.err) == ("lm_head" in names)
        return captured.out

    exported = [export(names, f"out{i}") for i, names in enumerate(printed)]
    again = [line.split(": ", 1)[1] for line in exported[0].splitlines() if line.startswith(tuple(result["forms"]))]
    assert len(again) == 2
    for i, names in enumerate(again):
        export(names, f"again{i}")
    kept = json.loads((tmp_path / "again0" / "config.json").read_text())["quantization_config"]
    assert kept["llm_int8_skip_modules"] == result["forms"]["llm_int8_skip_modules"]
