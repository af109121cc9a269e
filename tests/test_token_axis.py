"""The scan's token axis on tiny Llamas: a planted massive activation is found where it was planted, none on a
plain model, and a value past FP16's range raises the precision alarm (in the scan and in the load probe)."""

from __future__ import annotations

import numpy as np
import pytest

from int8wb.engine.cli.scan import token_axis_summary
from int8wb.engine.quant import precision, scan
from int8wb.engine.quant.token_axis import MASSIVE_MIN_ABS
from int8wb.engine.task import Task
from tests.support.tiny_models import TinyLoaded, WordTokenizer, tiny_llama

PARAMS = {"tokens": 256, "seq_len": 64, "batch_size": 2}
PLANTED_TOKEN = ord(",")  # a byte the first 256 tokens of the calibration text hold a few times
PLANTED_DIM = 11


def planted_model(value: float) -> TinyLoaded:
    """A tiny Llama whose embedding of PLANTED_TOKEN holds `value` in PLANTED_DIM: the residual stream carries it
    on that token, in that dimension, from the embeddings on (the residual connections pass it along)."""
    model = tiny_llama(seed=0)
    model.model.embed_tokens.weight[PLANTED_TOKEN, PLANTED_DIM] = value
    return TinyLoaded(model, WordTokenizer(model.config.vocab_size))


@pytest.fixture(scope="module")
def massive():
    loaded = planted_model(5000.0)
    return loaded, scan.run(PARAMS, Task(), loaded)


@pytest.fixture(scope="module")
def plain():
    model = tiny_llama(seed=0)
    return scan.run(PARAMS, Task(), TinyLoaded(model, WordTokenizer(model.config.vocab_size)))


def _calibration_ids(loaded) -> np.ndarray:
    settings = scan.ScanSettings.from_params(PARAMS)
    batches, _, _ = scan.calibration_batches(settings, loaded.model, loaded.tokenizer, "cpu")
    return np.concatenate([b.numpy() for b in batches])  # (sequences, seq_len)


def test_the_planted_massive_activation_is_found_on_its_tokens_in_its_dimension(massive):
    loaded, result = massive
    ids = _calibration_ids(loaded)
    planted_at = {tuple(p) for p in np.argwhere(ids == PLANTED_TOKEN).tolist()}
    assert 0 < len(planted_at) < ids.size / 10
    found = result.massive_activations()
    layers = len(loaded.model.model.layers)
    for layer in range(layers + 1):  # entering every layer, and leaving the last
        here = [m for m in found if m["layer"] == layer]
        assert {(m["sequence"], m["position"]) for m in here} == planted_at
        assert {m["dim"] for m in here} == {PLANTED_DIM}
        assert {m["token"] for m in here} == {","}
        assert all(m["value"] > 1000 and m["ratio"] > 10_000 for m in here)
    assert {m["layer"] for m in found} == set(range(layers + 1))


def test_a_plain_model_has_no_massive_activation_and_no_alarm(plain):
    assert plain.massive_activations() == []
    assert plain.precision_alarms() == []
    assert all(r.peak < MASSIVE_MIN_ABS for r in plain.residual)


def test_the_token_axis_holds_every_token_of_every_layer(massive):
    loaded, result = massive
    sequences, seq_len = _calibration_ids(loaded).shape
    assert [r.layer for r in result.residual] == list(range(len(loaded.model.model.layers) + 1))
    for residual in result.residual:
        assert residual.token_absmax.shape == residual.token_argmax.shape == (sequences, seq_len)
        assert residual.dim_absmax.shape == (loaded.model.config.hidden_size,)
        assert residual.token_absmax.max() == pytest.approx(residual.dim_absmax.max())
        assert residual.dim_absmax.argmax() == PLANTED_DIM
        assert residual.profile_dims.shape == residual.profile_values.shape == (seq_len, 16)
        assert np.all(np.diff(residual.profile_values, axis=1) <= 0)  # largest first
        assert np.allclose(residual.profile_values[:, 0], residual.token_absmax[0])
    for stats in result.layers:  # each Linear input: one largest |x| per calibration token, the same overall maximum
        assert stats.token_absmax.shape == (sequences * seq_len,)
        assert stats.token_absmax.max() == pytest.approx(stats.absmax.max())
        assert set(stats.output_absmax) == set(stats.names)
    payload = result.to_payload()["token_axis"]
    assert payload["tokens"] == [chr(b) for b in _calibration_ids(loaded)[0]]
    assert "Sun et al." in payload["massive_criterion"]


def test_a_value_past_fp16_range_raises_the_alarm_in_the_scan_and_in_the_load_probe():
    loaded = planted_model(80_000.0)
    result = scan.run(PARAMS, Task(), loaded)
    overflow = [a for a in result.precision_alarms() if a["problem"] == "fp16_overflow"]
    assert [a["where"] for a in overflow] == ["residual"]
    assert overflow[0]["first_layer"] == 0
    assert overflow[0]["value"] == pytest.approx(80_000.0, rel=0.01)
    assert "FP16 overflows there" in overflow[0]["message"]
    assert "80,0" in overflow[0]["message"]
    probed = precision.precision_alarms(precision.probe(loaded.model, loaded.tokenizer))
    assert precision.fp16_overflows(probed)
    assert precision.choose_compute_dtype(probed, "float16", requested=False, bf16_native=True)[0] == "bfloat16"
    assert precision.choose_compute_dtype(probed, "float16", requested=False, bf16_native=False)[0] == "float32"
    assert precision.choose_compute_dtype(probed, "float16", requested=True, bf16_native=True)[0] == "float16"


def test_bfloat16_rounding_steps_and_its_alarm():
    assert precision.bf16_step(22_500.0) == 128.0
    assert precision.bf16_step(255.0) == 1.0  # 8 significant bits: every integer below 256 is exact
    alarms = precision.precision_alarms(
        [
            precision.Reading("input", 3, "model.layers.3.mlp.down_proj", 9000.0),
            precision.Reading("residual", 1, "", 100.0),
        ]
    )
    assert [(a["problem"], a["where"], a["layer"]) for a in alarms] == [("bf16_precision", "input", 3)]
    assert "steps of 64" in alarms[0]["message"]
    assert precision.choose_compute_dtype(alarms, "float16", requested=False, bf16_native=True)[0] == "float16"


def test_scan_json_lists_the_massive_activations_with_the_criterion(massive):
    _, result = massive
    summary = token_axis_summary(result.to_payload())
    assert summary["massive_activations"] and {m["dim"] for m in summary["massive_activations"]} == {PLANTED_DIM}
    assert "1,000x the median" in summary["massive_criterion"]
    assert len(summary["residual"]) == len(result.residual)
    first = summary["residual"][0]
    assert first["max_abs"] == pytest.approx(result.residual[0].peak)
    assert len(first["position_max_abs"]) == result.seq_len
    assert first["top_dims"][0]["dim"] == PLANTED_DIM


def test_the_load_summary_carries_the_alarm_and_keeps_float32_on_the_cpu():
    loaded = planted_model(80_000.0)
    dtype, notes = precision.check_at_load(loaded.model, loaded.tokenizer, "cpu", "float32", None)
    assert dtype == "float32"
    assert any("FP16 overflows there" in note for note in notes)
    plain = tiny_llama(seed=0)
    assert precision.check_at_load(plain, WordTokenizer(256), "cpu", "float32", None) == ("float32", [])
