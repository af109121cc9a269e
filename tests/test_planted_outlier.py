"""On a tiny Llama with a planted outlier: naive INT8 breaks, LLM.int8() holds, the scan finds the dimension."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from int8wb.engine.quant import quantize, scan
from int8wb.engine.task import CallbackTask, Task
from tests.support.tiny_models import tiny_llama, tiny_loaded

OUTLIER_DIM = 5
TEXT_PARAMS = {"tokens": 256, "seq_len": 64, "batch_size": 2, "threshold": 6.0}


@pytest.fixture(scope="module")
def planted():
    return tiny_loaded(dim=OUTLIER_DIM, factor=60.0)


@pytest.fixture(scope="module")
def planted_scan(planted):
    return scan.run(TEXT_PARAMS, Task(), planted)


def _tokens(vocab: int, n: int = 4, length: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, vocab, (n, length), generator=generator)


def _relative_logit_error(reference, candidate, ids) -> float:
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        got = candidate(input_ids=ids).logits
    return float((got - expected).norm() / expected.norm())


def test_planting_leaves_the_float_model_unchanged():
    plain, planted = tiny_llama(seed=0), tiny_loaded(dim=OUTLIER_DIM, factor=60.0, seed=0).model
    ids = _tokens(plain.config.vocab_size)
    assert _relative_logit_error(plain, planted, ids) < 1e-4


def test_scan_finds_the_planted_dimension_in_every_attention_input(planted_scan):
    attention_inputs = [s for s in planted_scan.layers if s.kind == "attn_in"]
    assert len(attention_inputs) == 2  # one input per layer, read by q, k and v
    assert [s.names[0].rsplit(".", 1)[1] for s in attention_inputs] == ["q_proj", "q_proj"]
    assert all(len(s.names) == 3 and s.out_features == [64, 32, 32] for s in attention_inputs)
    for stats in attention_inputs:
        assert np.flatnonzero(stats.absmax > 6.0).tolist() == [OUTLIER_DIM]
        assert stats.count_over[OUTLIER_DIM] > 0.9 * planted_scan.n_tokens
    others = [s for s in planted_scan.layers if s.kind != "attn_in"]
    assert all(OUTLIER_DIM not in np.flatnonzero(s.absmax > 6.0) for s in others)


def test_scan_streams_one_partial_per_distinct_input_in_order(planted):
    seen = []
    task = CallbackTask(on_partial=lambda kind, payload: seen.append((kind, payload["index"], payload["layer"])))
    result = scan.run(TEXT_PARAMS, task, planted)
    assert [s[1] for s in seen] == list(range(len(result.layers))) == list(range(8))  # 14 Linears, 8 inputs
    assert [s[2] for s in seen] == [0] * 4 + [1] * 4
    assert sum(len(s.names) for s in result.layers) == 14
    assert set(result.outlier_dims(6.0)) == {name for s in result.layers for name in s.names}
    assert {s[0] for s in seen} == {"scan_layer"}


def test_naive_int8_is_ruined_by_the_outlier_and_llm_int8_is_not(planted, planted_scan):
    ids = _tokens(planted.model.config.vocab_size)
    errors = {}
    for method in ("absmax-tensor", "vectorwise", "llm-int8", "llm-int8-dynamic", "weight-only"):
        variant = quantize.run({"method": method, "threshold": 6.0}, Task(), planted, planted_scan)
        errors[method] = _relative_logit_error(planted.model, variant.model, ids)
    assert errors["llm-int8"] < 0.01
    assert errors["absmax-tensor"] > 5 * errors["llm-int8"]
    assert errors["vectorwise"] > 2 * errors["llm-int8"]
    # Planting divided the outlier's weight column by the factor, so in INT8 with a row
    # scale it keeps only a few levels. Static llm-int8 keeps that column in true floating
    # point; the dynamic mode (like bitsandbytes) and weight-only dequantize it from INT8.
    assert errors["llm-int8"] < errors["llm-int8-dynamic"] < errors["vectorwise"]
    assert errors["weight-only"] < 0.05


def test_static_llm_int8_keeps_the_outlier_weight_columns_in_float(planted, planted_scan):
    variant = quantize.run({"method": "llm-int8", "threshold": 6.0}, Task(), planted, planted_scan)
    q_proj = variant.model.model.layers[0].self_attn.q_proj
    original = planted.model.model.layers[0].self_attn.q_proj
    assert q_proj.outlier_cols.tolist() == [OUTLIER_DIM]
    assert torch.equal(q_proj.outlier_weight[:, 0], original.weight[:, OUTLIER_DIM])
    assert q_proj.weight_int8.dtype == torch.int8


def test_quantizing_leaves_the_float_model_intact(planted, planted_scan):
    before = {k: v.clone() for k, v in planted.model.state_dict().items()}
    quantize.run({"method": "vectorwise"}, Task(), planted, planted_scan)
    after = planted.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(planted.model.model.layers[0].self_attn.q_proj, torch.nn.Linear)


def test_quantized_model_stores_int8_and_shares_the_rest(planted, planted_scan):
    variant = quantize.run({"method": "vectorwise"}, Task(), planted, planted_scan)
    sizes = quantize.tensor_bytes(variant.model)
    linear_weights = sum(
        m.weight.numel() for n, m in planted.model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"
    )
    assert sizes["int8"] == linear_weights
    assert variant.model.model.embed_tokens.weight is planted.model.model.embed_tokens.weight


def test_skip_modules_leave_those_linears_in_float(planted, planted_scan):
    variant = quantize.run({"method": "vectorwise", "skip_modules": ["down_proj"]}, Task(), planted, planted_scan)
    assert isinstance(variant.model.model.layers[1].mlp.down_proj, torch.nn.Linear)
    assert len(variant.skipped) == 2


def test_cancel_stops_the_scan_and_leaves_no_hook_behind(planted):
    from int8wb.engine.errors import Cancelled

    class CancelledInsideALayer(Task):
        """Asks to stop at the 8th check: past the capture, while the first layer's hooks are attached."""

        checks = 0

        def check_cancelled(self) -> None:
            self.checks += 1
            if self.checks == 8:
                self.cancel()
            super().check_cancelled()

    task = CancelledInsideALayer()
    with pytest.raises(Cancelled):
        scan.run(TEXT_PARAMS, task, planted)
    # a hook left attached would run the cancelled task's check and so cancel the next scan
    assert not any(module._forward_pre_hooks for module in planted.model.modules())
    assert len(scan.run(TEXT_PARAMS, Task(), planted).layers) == 2 * 4


def test_static_llm_int8_without_a_scan_is_refused(planted):
    from int8wb.engine.errors import BadInput

    with pytest.raises(BadInput, match="scan first"):
        quantize.run({"method": "llm-int8"}, Task(), planted, None)


def test_nan_weights_are_refused(planted_scan):
    from int8wb.engine.errors import BadInput

    broken = tiny_loaded(dim=OUTLIER_DIM)
    with torch.no_grad():
        broken.model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(BadInput, match="NaN"):
        quantize.run({"method": "vectorwise"}, Task(), broken, planted_scan)


def test_the_next_layer_gets_the_hidden_states_by_position_or_by_keyword():
    from int8wb.engine.model.layerwise import next_layer_call

    assert next_layer_call(("h0", "mask"), {"a": 1}, "h1") == (("h1", "mask"), {"a": 1})
    assert next_layer_call((), {"hidden_states": "h0", "a": 1}, "h1") == ((), {"hidden_states": "h1", "a": 1})
