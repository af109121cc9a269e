"""The super weight finder and its experiment on tiny Llamas with a planted super weight, and keeping it.

The planted model is built so that it depends on one weight the way real models do (engine.measure.super_weight):
every embedding carries a constant feature, which the first MLP turns into an input spike in one intermediate
dimension; one weight of the first down projection writes that spike into one residual dimension (a massive
activation on every token), and the output head reads that dimension as the text's byte frequencies. Without
that one weight the model knows nothing.
"""

from __future__ import annotations

import math

import pytest
import torch

from int8wb.engine.errors import BadInput
from int8wb.engine.measure import super_weight
from int8wb.engine.model import corpus
from int8wb.engine.quant import quantize
from int8wb.engine.quant.int8_linear import Int8Linear
from int8wb.engine.task import Task
from tests.support.tiny_models import TinyLoaded, WordTokenizer, tiny_llama

CONSTANT_DIM, SPIKE_DIM, MASSIVE_DIM, SUPER_WEIGHT = 3, 17, 41, 10.0
SETTINGS = {"find_tokens": 64, "candidates": 3, "tokens": 128, "window": 64, "batch_size": 2}


def planted_model(plant: bool = True) -> TinyLoaded:
    """A tiny Llama with (or, `plant` False, without) the planted super weight at layer 0, [MASSIVE_DIM, SPIKE_DIM]."""
    model = tiny_llama(seed=3, tie=False)
    tokenizer = WordTokenizer(model.config.vocab_size)
    if plant:
        ids = corpus.tokenize(tokenizer, corpus.load_split(None).evaluation, 4096)
        counts = torch.bincount(ids, minlength=model.config.vocab_size).float() + 1.0
        with torch.no_grad():
            model.model.embed_tokens.weight[:, CONSTANT_DIM] = 1.0
            mlp = model.model.layers[0].mlp
            mlp.gate_proj.weight[SPIKE_DIM, CONSTANT_DIM] = 2.0
            mlp.up_proj.weight[SPIKE_DIM, CONSTANT_DIM] = 2.0
            mlp.down_proj.weight[MASSIVE_DIM, SPIKE_DIM] = SUPER_WEIGHT
            hidden = model.config.hidden_size
            model.lm_head.weight[:, MASSIVE_DIM] = (counts / counts.sum()).log() / math.sqrt(hidden)
    return TinyLoaded(model, tokenizer)


@pytest.fixture(scope="module")
def planted():
    return planted_model()


@pytest.fixture(scope="module")
def planted_result(planted):
    return super_weight.run(SETTINGS, Task(), planted)


def test_the_finder_names_the_planted_weight_first(planted):
    ids = corpus.tokenize(planted.tokenizer, corpus.load_split(None).calibration, 64).reshape(1, -1)
    first = super_weight.find_candidates(planted.model, ids, 3)[0]
    assert (first.module, first.row, first.col) == ("model.layers.0.mlp.down_proj", MASSIVE_DIM, SPIKE_DIM)
    assert first.weight == pytest.approx(SUPER_WEIGHT)
    assert first.input_ratio > 1000


def test_zeroing_the_planted_weight_destroys_the_model_and_its_control_does_not(planted_result):
    first = planted_result["candidates"][0]
    assert first["super_weight"] and first["zeroed"] > 2 * planted_result["baseline"]
    assert first["control"] < planted_result["baseline"] * (1 + super_weight.MATERIAL_INCREASE)
    assert planted_result["super_weights"] == [
        {"module": "model.layers.0.mlp.down_proj", "row": MASSIVE_DIM, "col": SPIKE_DIM, "weight": SUPER_WEIGHT}
    ]
    assert [c["super_weight"] for c in planted_result["candidates"]] == [True, False]  # one per down projection


def test_the_experiment_puts_every_weight_back(planted):
    before = {n: p.clone() for n, p in planted.model.named_parameters()}
    super_weight.run({**SETTINGS, "candidates": 1, "tokens": 64}, Task(), planted)
    assert all(torch.equal(before[n], p) for n, p in planted.model.named_parameters())


def test_a_model_without_a_super_weight_has_none_found():
    result = super_weight.run(SETTINGS, Task(), planted_model(plant=False))
    assert len(result["candidates"]) == 2
    assert result["super_weights"] == [] and result["verdict"] == super_weight.NONE_FOUND


@pytest.mark.parametrize("method", ["absmax-tensor", "vectorwise", "llm-int8-dynamic", "weight-only", "q8_0"])
def test_a_kept_super_weight_is_computed_in_floating_point_and_frees_its_scales(method):
    torch.manual_seed(0)
    weight = torch.randn(8, 64) * 0.05
    weight[2, 5] = 20.0
    kept = Int8Linear.from_weight(weight, None, method, super_weights=[(2, 5)])
    plain = Int8Linear.from_weight(weight, None, method)
    assert kept.float_weight()[2, 5] == 20.0
    error_kept = (kept.float_weight() - weight).abs().max()
    assert error_kept < (plain.float_weight() - weight).abs().max() / 10
    x = torch.randn(4, 64) * 0.1
    expected = x @ weight.t()
    assert (kept(x) - expected).abs().max() < (plain(x) - expected).abs().max()
    clipped = kept.weight_int8[2, 5]
    assert abs(int(clipped)) == 127  # a loader that ignores the kept weight reads it clipped, not zero


def test_quantize_keeps_the_found_super_weight_for_the_linear_that_holds_it(planted, planted_result):
    name = "model.layers.0.mlp.down_proj"
    original = planted.model.get_submodule(name).weight
    errors = {}
    for keep in (False, True):
        params = {"method": "absmax-tensor", **({"super_weights": planted_result["super_weights"]} if keep else {})}
        variant = quantize.run(params, Task(), planted)
        linear = variant.model.get_submodule(name)
        errors[keep] = float((linear.float_weight() - original).abs().max())
        assert variant.summary()["kept_super_weights"] == (
            [{"module": name, "row": MASSIVE_DIM, "col": SPIKE_DIM}] if keep else []
        )
        assert variant.model.get_submodule("model.layers.1.mlp.down_proj").super_weight_index is None
        listed = [group["modules"] for group in variant.summary()["kept_float"]]
        assert (f"{name}.weight[{MASSIVE_DIM}, {SPIKE_DIM}]" in listed) == keep  # what the results list in float
    assert errors[True] < errors[False] / 10  # one scale for the tensor no longer stretched by the super weight


@pytest.mark.parametrize(
    "entry",
    [
        {"module": "model.layers.0.mlp.nope", "row": 0, "col": 0},
        {"module": "lm_head", "row": 0, "col": 0},
        {"module": "model.layers.0.mlp.down_proj", "row": 64, "col": 0},
        "layer 0",
    ],
)
def test_a_bad_super_weight_is_refused_by_name(planted, entry):
    with pytest.raises(BadInput, match="super weight"):
        quantize.run({"method": "vectorwise", "super_weights": [entry]}, Task(), planted)


def test_a_conv1d_down_projection_is_read_and_zeroed_as_its_out_in_matrix():
    from int8wb.engine.model.layers import weight_matrix
    from tests.support.tiny_models import tiny_model

    model = tiny_model("gpt2")
    ids = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(0))
    candidate = super_weight.find_candidates(model, ids, 1)[0]
    assert candidate.module.endswith("mlp.c_proj")
    module = model.get_submodule(candidate.module)
    assert float(weight_matrix(module)[candidate.row, candidate.col]) == candidate.weight
    before = module.weight.clone()
    with super_weight.zeroed(model, [(candidate.module, candidate.row, candidate.col)]):
        assert float(weight_matrix(module)[candidate.row, candidate.col]) == 0.0
        assert int((module.weight != before).sum()) == 1
    assert torch.equal(module.weight, before)
