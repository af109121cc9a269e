"""The real embedded model end to end on a small budget: load, scan, quantize, evaluate."""

from __future__ import annotations

import numpy as np
import pytest

from int8wb.engine.measure import evaluate
from int8wb.engine.quant import quantize, scan
from int8wb.engine.task import Task

pytestmark = pytest.mark.slow


def test_default_model_is_the_documented_llama(default_model):
    info = default_model.describe()
    assert info["architecture"] == "LlamaForCausalLM"
    assert info["parameters"] == 134_515_008
    assert (info["layers"], info["hidden_size"]) == (30, 576)
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert any("4-bit" in note for note in info["notes"])


def test_scan_finds_dimension_247_in_the_middle_attention_inputs(default_scan):
    assert len(default_scan.layers) == 30 * 4  # q/k/v and gate/up each share one input
    q_inputs = {s.layer: s for s in default_scan.layers if s.names[0].endswith("q_proj")}
    layers_with_247 = [layer for layer, s in q_inputs.items() if s.absmax[247] > 6.0]
    assert len(layers_with_247) >= 10
    assert all(9 <= layer <= 24 for layer in layers_with_247)
    # The same dimension, not a different one per layer: 247 is the largest in most of them.
    assert sum(int(np.argmax(q_inputs[layer].absmax)) == 247 for layer in layers_with_247) >= 10


def test_scan_finds_the_massive_activation_on_the_first_token_in_dimension_507_from_layer_12(default_scan):
    massive = default_scan.massive_activations()
    first_tokens = [m for m in massive if m["position"] == 0]
    assert {m["dim"] for m in first_tokens} == {507}
    assert min(m["layer"] for m in first_tokens) == 12
    # It holds through layer 28 (the last layers' medians grow past a thousandth of it), and the down
    # projection of layer 11 reads the spike that writes it: its input's largest dimension is 1229,
    # on the first token.
    assert set(range(12, 29)) <= {m["layer"] for m in first_tokens}
    down_11 = next(s for s in default_scan.layers if s.names == ["model.layers.11.mlp.down_proj"])
    assert int(np.argmax(down_11.absmax)) == 1229
    assert int(np.argmax(down_11.token_absmax)) % default_scan.seq_len == 0


def test_down_proj_inputs_carry_far_more_outlier_columns_than_attention_inputs(default_scan):
    by_kind = {}
    for stats in default_scan.layers:
        by_kind.setdefault(stats.kind, []).append(int((stats.absmax > 6.0).sum()))
    assert np.mean(by_kind["mlp_down"]) > 10 * np.mean(by_kind["attn_in"])


def test_the_four_methods_rank_as_expected_on_1024_tokens(default_model, default_scan):
    methods = ("absmax-tensor", "vectorwise", "llm-int8", "weight-only")
    variants = {m: quantize.run({"method": m, "threshold": 6.0}, Task(), default_model, default_scan) for m in methods}
    result = evaluate.run({"tokens": 1024, "window": 512}, Task(), default_model, variants)
    ppl = {row["method"]: row["perplexity"] for row in result["rows"]}
    assert result["settings"]["tokens"] == 1024
    assert ppl["absmax-tensor"] > 1.5 * ppl["baseline"]
    assert ppl["llm-int8"] < ppl["vectorwise"] < ppl["absmax-tensor"]
    assert abs(ppl["llm-int8"] / ppl["baseline"] - 1) < 0.05
    assert abs(ppl["weight-only"] / ppl["baseline"] - 1) < 0.01
    rows = {row["method"]: row for row in result["rows"]}
    assert rows["vectorwise"]["int8_bytes"] == sum(
        m.weight.numel()
        for n, m in default_model.model.named_modules()
        if type(m).__name__ == "Linear" and n != "lm_head"
    )
    assert rows["llm-int8"]["outlier_dims"] > 0 and rows["vectorwise"]["outlier_dims"] == 0


def test_naive_loses_more_than_vectorwise_which_loses_at_least_llm_int8_and_where_the_outliers_are(default_model):
    """Each Linear's own error on the default model: the ordering LLM.int8() predicts, and where it lives."""
    methods = ["absmax-tensor", "vectorwise", "llm-int8"]
    result = scan.run({"tokens": 1024, "error_methods": methods, "error_tokens": 128}, Task(), default_model)
    figures = [s.sqnr_db[name] for s in result.layers for name in s.names]
    ordered = [f["absmax-tensor"] < f["vectorwise"] <= f["llm-int8"] for f in figures]
    assert len(figures) == 210 and sum(ordered) >= 0.9 * len(figures)
    summary = result.error_payload()["errors"]
    assert summary["vectorwise"]["loss_vs_outliers"] > 0.1  # vectorwise loses where the outlier columns are
    assert summary["llm-int8"]["loss_vs_outliers"] < summary["vectorwise"]["loss_vs_outliers"]
