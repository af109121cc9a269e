"""SmoothQuant (engine.quant.smoothing): exact folding, what alpha does, and what it buys on a planted outlier."""

from __future__ import annotations

import pytest
import torch

from int8wb.engine.errors import BadInput
from int8wb.engine.measure.evaluate import smoothing_note
from int8wb.engine.process.session import Session
from int8wb.engine.quant import quantize, scan, smoothing
from int8wb.engine.task import Task
from tests.support.tiny_models import save_tiny, tiny_loaded

SCAN = {"tokens": 256, "seq_len": 64, "batch_size": 2, "threshold": 6.0}


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (4, 64), generator=torch.Generator().manual_seed(1))


def _relative_error(reference, candidate, ids) -> float:
    with torch.no_grad():
        expected, got = reference(input_ids=ids).logits, candidate(input_ids=ids).logits
    return float((got - expected).norm() / expected.norm())


@pytest.fixture(scope="module")
def planted():
    loaded = tiny_loaded(dim=5, factor=60.0)
    return loaded, scan.run(SCAN, Task(), loaded)


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gemma3"])
def test_smoothing_alone_leaves_the_float_model_unchanged(tmp_path, architecture):
    session = Session()
    session.load_model({"model": str(save_tiny(tmp_path / architecture, architecture)), "device": "cpu"}, Task())
    found = scan.run(SCAN, Task(), session.loaded)
    model = session.loaded.model
    copy = quantize.share_tensors_copy(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = smoothing.smooth(copy, found, 0.5)
    assert _relative_error(model, copy, _ids(model.config.vocab_size)) < 1e-4
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
    assert sorted(n.rsplit(".", 1)[-1] for n in report["unsmoothed"]) == ["o_proj", "o_proj"]
    assert len(report["smoothed"]) == 2 * 6  # q, k, v, gate, up, down in two layers
    assert report["smoothed"]["model.layers.1.mlp.down_proj"] == "model.layers.1.mlp.up_proj"


def test_alpha_moves_the_difficulty_between_activations_and_weights(planted):
    loaded, found = planted
    at_zero = quantize.share_tensors_copy(loaded.model)
    smoothing.smooth(at_zero, found, 0.0)
    groups, _ = smoothing.groups(at_zero)
    sources = {group.source for group in groups}
    # alpha 0: every weight column of a group reaches abs-max 1 (gate/up's up_proj is rescaled by row afterwards,
    # when down_proj's factors fold into it)
    for group in (g for g in groups if not sources & set(g.members)):
        column_max = smoothing.weight_column_absmax(at_zero, group.members)
        torch.testing.assert_close(column_max, torch.ones_like(column_max), rtol=1e-5, atol=0)
    at_one = quantize.share_tensors_copy(loaded.model)
    report = smoothing.smooth(at_one, found, 1.0)
    rescanned = scan.run(SCAN, Task(), type(loaded)(at_one, loaded.tokenizer))
    checked = 0
    for stats in rescanned.layers:  # alpha 1: every smoothed input channel reaches abs-max 1
        if any(name in report["smoothed"] for name in stats.names):
            assert abs(float(stats.absmax.max()) - 1.0) < 1e-4, stats.names
            checked += 1
    assert checked == 2 * 3  # per layer: the q/k/v input, the gate/up input, down_proj's input


def test_smoothquant_flattens_the_planted_outlier_that_vectorwise_suffers_from(planted):
    loaded, found = planted
    ids = _ids(loaded.model.config.vocab_size)
    vectorwise = quantize.run({"method": "vectorwise"}, Task(), loaded, found)
    smoothed = quantize.run({"method": "smoothquant", "alpha": 0.5}, Task(), loaded, found)
    assert _relative_error(loaded.model, smoothed.model, ids) < 0.3 * _relative_error(
        loaded.model, vectorwise.model, ids
    )
    summary = smoothed.summary()["smoothing"]
    assert summary["alpha"] == 0.5 and summary["smoothed"] == 12 and len(summary["unsmoothed"]) == 2
    assert "smoothing" not in vectorwise.summary()
    assert smoothing_note("smoothquant", summary).endswith("12 Linears smoothed, 2 unsmoothed (o_proj)")


def test_smoothquant_needs_a_scan_and_a_valid_alpha(planted):
    loaded, found = planted
    with pytest.raises(BadInput, match="scan first"):
        quantize.run({"method": "smoothquant"}, Task(), loaded, None)
    for alpha in (-0.1, 1.5, float("nan"), "half", True):
        with pytest.raises(BadInput, match="alpha"):
            quantize.run({"method": "smoothquant", "alpha": alpha}, Task(), loaded, found)
