"""The default model layer by layer from disk gives the in-memory numbers: scan, perplexity, exported tensors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from int8wb.engine.checkpoint import export
from int8wb.engine.measure import evaluate
from int8wb.engine.process.session import Session
from int8wb.engine.quant import quantize
from int8wb.engine.task import Task
from int8wb.engine.vocabulary import FORMAT_METHODS, METHODS
from tests.support.tiny_models import read_tensors

pytestmark = pytest.mark.slow

SCAN = {"tokens": 1024, "seq_len": 512}  # the default_scan fixture's settings
EVAL = {"tokens": 1024, "window": 512}


@pytest.fixture(scope="module")
def disk_session(default_model) -> Session:
    session = Session()
    info = session.load_model({"offload": "disk"}, Task())
    assert info["offload"]["mode"] == "disk" and info["offload"]["layers"] == 30
    session.scan_payload = session.scan(SCAN, Task())
    session.quantize({"methods": list(METHODS), "threshold": 6.0}, Task())
    return session


@pytest.fixture(scope="module")
def in_memory_variants(default_model, default_scan):
    return {m: quantize.run({"method": m, "threshold": 6.0}, Task(), default_model, default_scan) for m in METHODS}


def test_scan_statistics_equal_the_in_memory_scan(disk_session, default_scan):
    layers = disk_session.scan_payload["layers"]
    assert len(layers) == len(default_scan.layers) == 30 * 4
    for stats, payload in zip(default_scan.layers, layers):
        assert stats.names == payload["names"]
        assert np.array_equal(stats.absmax, payload["absmax"])
        assert np.array_equal(stats.count_over, payload["count_over"])
        assert np.array_equal(stats.hist, payload["hist"])


@pytest.mark.heavy
def test_perplexity_of_every_method_equals_the_in_memory_value(disk_session, default_model, in_memory_variants):
    memory = evaluate.run(EVAL, Task(), default_model, in_memory_variants)
    disk = disk_session.evaluate(EVAL, Task())
    for a, b in zip(memory["rows"], disk["rows"]):
        assert a["method"] == b["method"]
        assert abs(b["perplexity"] / a["perplexity"] - 1) < 1e-6, (a["method"], a["perplexity"], b["perplexity"])


@pytest.mark.parametrize("method", FORMAT_METHODS["bitsandbytes"])
def test_every_exported_tensor_is_byte_identical(disk_session, default_model, in_memory_variants, tmp_path, method):
    memory_out, disk_out = tmp_path / "memory", tmp_path / "disk"
    export.run({"out": str(memory_out)}, Task(), default_model, in_memory_variants[method], None)
    disk_session.export({"method": method, "out": str(disk_out)}, Task())
    expected, actual = read_tensors(memory_out), read_tensors(disk_out)
    assert expected.keys() == actual.keys()
    for name in expected:
        a, b = expected[name], actual[name]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8)), name
    sidecars = [json.loads((out / export.SIDECAR_NAME).read_text()) for out in (memory_out, disk_out)]
    assert sidecars[0]["layers"] == sidecars[1]["layers"]
