"""Per-Linear error of every method, measured in the scan with each Linear's true floating-point input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from int8wb.engine.errors import BadInput
from int8wb.engine.quant import layer_errors, scan
from int8wb.engine.task import CallbackTask, Task
from int8wb.engine.vocabulary import METHODS
from tests.support.tiny_models import tiny_loaded

OUTLIER_DIM = 5
PARAMS = {"tokens": 256, "seq_len": 64, "batch_size": 2, "threshold": 6.0, "error_tokens": 128}


@pytest.fixture(scope="module")
def planted():
    return tiny_loaded(dim=OUTLIER_DIM, factor=60.0)


@pytest.fixture(scope="module")
def scanned(planted):
    return scan.run({**PARAMS, "error_methods": list(METHODS)}, Task(), planted)


def per_linear(result):
    """(Linear name, input kind, {method: dB}) for every Linear: a scanned input carries each reader's figures."""
    return [(name, s.kind, s.sqnr_db[name]) for s in result.layers for name in s.names]


def test_sqnr_of_a_known_noise():
    reference = torch.ones(100)
    assert layer_errors.sqnr_db(reference, reference.clone()) is None
    noisy = reference + 0.1  # signal 100, noise 100 * 0.01 -> 20 dB
    assert layer_errors.sqnr_db(reference, noisy) == pytest.approx(20.0)
    assert layer_errors.sqnr_db(torch.zeros(3), torch.ones(3)) == -math.inf


def test_rank_correlation():
    assert layer_errors.rank_correlation(np.arange(5), np.arange(5) * 3) == pytest.approx(1.0)
    assert layer_errors.rank_correlation(np.arange(5), -np.arange(5)) == pytest.approx(-1.0)
    assert layer_errors.rank_correlation(np.array([1.0, 2.0]), np.array([1.0, 2.0])) is None
    assert layer_errors.rank_correlation(np.ones(4), np.arange(4)) is None


def test_every_linear_gets_every_methods_sqnr(scanned):
    for _, _, figures in per_linear(scanned):
        assert set(figures) == set(METHODS)
        assert all(value is not None and math.isfinite(value) for value in figures.values())


def test_naive_int8_loses_most_where_the_outlier_is_and_llm_int8_keeps_it(scanned):
    """The attention inputs carry the planted dimension: per-tensor scales waste the range there."""
    for errors in (figures for _, kind, figures in per_linear(scanned) if kind == "attn_in"):
        assert errors["absmax-tensor"] < errors["vectorwise"] - 3.0
        assert errors["vectorwise"] < errors["llm-int8"]
    others = [figures for _, kind, figures in per_linear(scanned) if kind != "attn_in"]
    planted_loss = np.mean([f["vectorwise"] for _, kind, f in per_linear(scanned) if kind == "attn_in"])
    assert planted_loss < np.mean([e["vectorwise"] for e in others])


def test_smoothquant_moves_the_outlier_into_the_weights(scanned):
    """Smoothing divides the planted channel before INT8: the attention inputs gain over vector-wise."""
    for figures in (f for _, kind, f in per_linear(scanned) if kind == "attn_in"):
        assert figures["smoothquant"] > figures["vectorwise"]
    o_proj = [f for name, _, f in per_linear(scanned) if name.endswith("o_proj")]  # cannot be smoothed exactly
    assert o_proj and all(f["smoothquant"] == pytest.approx(f["vectorwise"]) for f in o_proj)


def test_the_error_is_that_linears_own_not_inherited(planted, scanned):
    """Measured again by hand on the floating-point input of the first q_proj (the same evenly spread
    rows of every calibration batch), the figure is the same."""
    from int8wb.engine.quant.int8_linear import Int8Linear

    first = next(f for name, _, f in per_linear(scanned) if name.endswith("layers.0.self_attn.q_proj"))
    captured = []
    q_proj = planted.model.model.layers[0].self_attn.q_proj
    handle = q_proj.register_forward_pre_hook(lambda m, args: captured.append(args[0].reshape(-1, m.in_features)))
    from int8wb.engine.model import corpus

    split = corpus.load_split(None)
    ids = corpus.tokenize(planted.tokenizer, split.calibration, PARAMS["tokens"])
    sequences = corpus.windows(ids, PARAMS["seq_len"], PARAMS["tokens"])
    with torch.no_grad():
        for batch in sequences.split(PARAMS["batch_size"]):
            planted.model(input_ids=batch, use_cache=False)
    handle.remove()
    per_call = -(-PARAMS["error_tokens"] // len(captured))  # the probe keeps an even share of every batch
    x = torch.cat([batch[:: max(1, batch.shape[0] // per_call)][:per_call] for batch in captured])
    quantized = Int8Linear.from_linear(q_proj, "vectorwise", 6.0)
    expected = layer_errors.sqnr_db(q_proj(x), quantized(x))
    assert first["vectorwise"] == pytest.approx(expected, rel=1e-6)


def test_payload_and_summary_carry_the_errors(scanned):
    payload = scanned.to_payload()
    assert payload["error_methods"] == list(METHODS)
    assert all(set(layer["sqnr_db"][name]) == set(METHODS) for layer in payload["layers"] for name in layer["names"])
    summary = payload["errors"]
    assert summary["absmax-tensor"]["median_sqnr_db"] < summary["weight-only"]["median_sqnr_db"]
    assert summary["vectorwise"]["worst_linear"].split(".")[-1] in ("q_proj", "k_proj", "v_proj")


def test_errors_stream_with_the_scan_statistics(planted):
    seen = []
    task = CallbackTask(on_partial=lambda kind, payload: seen.append(payload))
    scan.run({**PARAMS, "error_methods": "vectorwise,llm-int8"}, task, planted)
    assert seen and all(
        set(payload["sqnr_db"][name]) == {"vectorwise", "llm-int8"} for payload in seen for name in payload["names"]
    )


def test_a_scan_without_errors_sends_none(planted):
    result = scan.run(PARAMS, Task(), planted)
    assert all(s.sqnr_db is None for s in result.layers)
    assert "errors" not in result.to_payload()


@pytest.mark.parametrize("bad", [["nope"], [3], "vectorwise,nope"])
def test_bad_error_methods_are_refused(planted, bad):
    with pytest.raises(BadInput, match="method"):
        scan.run({**PARAMS, "error_methods": bad}, Task(), planted)


def test_bad_error_token_budget_is_refused(planted):
    with pytest.raises(BadInput, match="error_tokens"):
        scan.run({**PARAMS, "error_methods": ["vectorwise"], "error_tokens": 0}, Task(), planted)
