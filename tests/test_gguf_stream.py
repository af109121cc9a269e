"""GGUF converted one tensor at a time (engine.pipeline.gguf_stream) is transformers' whole-model conversion."""

from __future__ import annotations

import json

import pytest
import torch

from int8wb.engine.pipeline import gguf_stream, loading
from int8wb.engine.task import Task
from tests.support.tiny_models import read_tensors

pytestmark = pytest.mark.slow


@pytest.mark.heavy
def test_the_default_model_converts_to_the_same_files(tmp_path):
    gguf = loading.default_gguf_path()
    streamed, whole = tmp_path / "streamed", tmp_path / "whole"
    streamed.mkdir()
    whole.mkdir()
    gguf_stream.convert(gguf, streamed, Task())
    loading.convert_whole(gguf, whole)
    assert sorted(p.name for p in streamed.iterdir()) == sorted(p.name for p in whole.iterdir())
    for name in ("config.json", "generation_config.json"):
        assert json.loads((streamed / name).read_text()) == json.loads((whole / name).read_text()), name
    expected, actual = read_tensors(whole), read_tensors(streamed)
    assert expected.keys() == actual.keys()
    assert all(expected[k].dtype == actual[k].dtype and torch.equal(expected[k], actual[k]) for k in expected)
