"""Divergence from the float model with the weights on disk (engine.pipeline.layer_pass) against the model in memory:
the same numbers in the same pass, and a reference saved by one read by the other."""

from __future__ import annotations

import pytest

from int8wb.engine.process.session import Session
from int8wb.engine.task import Task
from tests.support.tiny_models import save_tiny_llama

METHOD = "absmax-tensor"
EVAL = {"tokens": 512, "window": 128, "batch_size": 2}
COMPARED = ("kl_mean", "kl_p999", "kl_max", "same_top", "rms_dp", "relative_change", "change_low", "change_high")


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    path = save_tiny_llama(tmp_path_factory.mktemp("divergence") / "tiny", seed=3, max_shard_size="100KB")
    pair = []
    for offload in ("none", "disk"):
        session = Session()
        session.load_model({"model": str(path), "device": "cpu", "offload": offload}, Task())
        session.quantize({"methods": [METHOD]}, Task())
        pair.append(session)
    assert pair[1].layerwise and not pair[0].layerwise
    return pair


def _row(result, method=METHOD):
    return next(row for row in result["rows"] if row["method"] == method)


def test_layer_by_layer_gives_the_divergence_of_the_model_in_memory(sessions):
    memory, disk = (session.evaluate(EVAL, Task()) for session in sessions)
    for name in COMPARED:
        assert _row(disk)[name] == pytest.approx(_row(memory)[name], rel=1e-3, abs=1e-7), name
    assert disk["token_detail"]["methods"][METHOD]["kl"].shape == memory["token_detail"]["methods"][METHOD]["kl"].shape


def test_a_reference_saved_in_memory_is_read_layer_by_layer_and_back(sessions, tmp_path):
    memory, disk = sessions
    saved_in_memory, saved_on_disk = tmp_path / "memory.npz", tmp_path / "disk.npz"
    memory.evaluate({**EVAL, "save_reference": str(saved_in_memory)}, Task())
    disk.evaluate({**EVAL, "save_reference": str(saved_on_disk)}, Task())
    exact = memory.evaluate(EVAL, Task())
    for session, path in ((disk, saved_in_memory), (memory, saved_on_disk)):
        against = session.evaluate({**EVAL, "reference": str(path)}, Task())
        assert against["reference"]["file"] == str(path)
        for name in COMPARED:
            assert _row(against)[name] == pytest.approx(_row(exact)[name], rel=1e-3, abs=1e-7), name


def test_layer_by_layer_kl_is_exact_whatever_the_saved_reference_keeps(sessions, tmp_path, monkeypatch):
    """The disk path's KL beside a reference saved with its top 8 only is the model in memory's exact KL."""
    from int8wb.engine.measure import divergence

    exact = sessions[0].evaluate(EVAL, Task())
    monkeypatch.setattr(divergence, "TOP_K", 8)
    disk = sessions[1].evaluate({**EVAL, "save_reference": str(tmp_path / "top8.npz")}, Task())
    assert disk["reference"]["k"] == 8
    for name in COMPARED:
        assert _row(disk)[name] == pytest.approx(_row(exact)[name], rel=1e-3, abs=1e-7), name
