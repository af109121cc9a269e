"""A kept super weight in the exports: the bitsandbytes export carries it (re-opened bit for bit), the serving
formats refuse it with the reason, and the session keeps only what its experiment found."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from int8wb.engine.errors import BadInput
from int8wb.engine.process.session import Session
from int8wb.engine.task import Task
from tests.support.tiny_models import save_tiny_llama

DOWN = "model.layers.0.mlp.down_proj"
KEPT = [{"module": DOWN, "row": 3, "col": 7}]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", intermediate=128)


@pytest.fixture(scope="module")
def session(tiny_dir) -> Session:
    session = Session()
    session.load_model({"model": str(tiny_dir), "device": "cpu"}, Task())
    return session


@pytest.mark.parametrize("method", ["absmax-tensor", "vectorwise"])
def test_the_bitsandbytes_export_carries_the_kept_super_weight(session, tmp_path, method):
    session.quantize({"methods": [method], "super_weights": KEPT}, Task())
    original = session.quantized[method]
    out = tmp_path / "export"
    session.export({"method": method, "out": str(out)}, Task())
    with safe_open(str(out / "int8wb_extra.safetensors"), "pt") as extra:
        assert extra.get_tensor(f"{DOWN}.super_weight_index").tolist() == [[3, 7]]
    linear, weight = original.model.get_submodule(DOWN), session.loaded.model.get_submodule(DOWN).weight
    step = linear.scheme.steps_at(linear.weight_scale, torch.tensor([3]), torch.tensor([7]))
    with safe_open(str(out / "model.safetensors"), "pt") as main:  # what bitsandbytes reads: rounded, not zero
        assert int(main.get_tensor(f"{DOWN}.weight")[3, 7]) == int(torch.round(weight[3, 7] / step)) != 0
    reopened = Session()
    reopened.load_model({"model": str(out), "device": "cpu"}, Task())
    model = reopened.loaded.model
    expected, actual = original.model.state_dict(), model.state_dict()
    assert expected.keys() == actual.keys() and all(torch.equal(expected[k], actual[k]) for k in expected)
    assert reopened.loaded.quantized.summary()["kept_super_weights"] == KEPT
    ids = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        assert torch.equal(original.model(ids).logits, model(ids).logits)


@pytest.mark.parametrize(("method", "fmt"), [("vectorwise", "compressed-tensors"), ("q8_0", "gguf-q8_0")])
def test_a_serving_format_refuses_a_kept_super_weight_with_the_reason(session, tmp_path, method, fmt):
    session.quantize({"methods": [method], "super_weights": KEPT}, Task())
    out = tmp_path / "export"
    with pytest.raises(BadInput, match=f"{fmt} cannot carry the super weight kept in floating point in {DOWN}"):
        session.export({"method": method, "out": str(out), "format": fmt}, Task())
    assert not out.exists()


def test_keeping_super_weights_needs_an_experiment_that_found_one(session):
    session.super_weights = None
    with pytest.raises(BadInput, match="no super weight experiment ran"):
        session.quantize({"methods": ["vectorwise"], "keep_super_weights": True}, Task())
    with pytest.raises(BadInput, match="keep_super_weights must be true or false"):
        session.quantize({"methods": ["vectorwise"], "keep_super_weights": "yes"}, Task())


def test_the_cli_runs_the_experiment_and_says_when_there_is_no_super_weight(tiny_dir, capsys):
    from int8wb.engine.cli import main

    small = ["--candidates", "2", "--find-tokens", "32", "--tokens", "128", "--window", "64"]
    code = main(["outliers", "--model", str(tiny_dir), "--device", "cpu", "--quiet", "--super-weights", *small])
    out = capsys.readouterr().out
    assert code == 0
    assert "model.layers.0.mlp.down_proj" in out and "model.layers.1.mlp.down_proj" in out
    assert "no super weight found" in out and "criterion: a candidate is a super weight" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [([], "say what to find"), (["--super-weights", "--candidates", "0"], "candidates must be a positive integer")],
)
def test_the_cli_refuses_a_bad_request_before_loading(tiny_dir, capsys, args, message):
    from int8wb.engine.cli import main

    assert main(["outliers", "--model", str(tiny_dir / "missing"), *args]) == 2
    assert message in capsys.readouterr().err
