"""Streaming export (engine.checkpoint.stream_export) against the in-memory export (engine.checkpoint.export).

A tiny random Llama (with attention biases, so bias tensors stream too) is
saved with save_pretrained in several safetensors shards; both paths export
it and the results must match tensor for tensor, re-open to the same model,
and the streaming path must never hold more than one output shard.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import pytest
import torch

from engine.checkpoint import export, stream_export
from engine.errors import BadInput
from engine.model.loading import load
from engine.session import Session
from engine.task import Task
from tests.tiny_models import byte_tokenizer

THRESHOLD = 2.5
SOURCE_SHARD = "60KB"  # the tiny model is about 240 KB in float32: four source files
OUT_SHARD = 40_000  # bytes: several output shards


def _save_tiny(path: Path, tie: bool) -> Path:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    tokenizer = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
        attention_bias=True,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.02)  # zero biases would not tell a copied bias from a missing one
    model.save_pretrained(path, max_shard_size=SOURCE_SHARD)
    tokenizer.save_pretrained(path)
    GenerationConfig(eos_token_id=tokenizer.eos_token_id, max_new_tokens=8).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    path = _save_tiny(tmp_path_factory.mktemp("stream") / "tiny-llama", tie=True)
    assert len(list(path.glob("*.safetensors"))) >= 3  # really sharded
    return path


@pytest.fixture(scope="module")
def in_memory(tiny_dir) -> Session:
    session = Session()
    session.load_model({"model": str(tiny_dir), "device": "cpu"}, Task())
    session.quantize({"methods": list(stream_export.STREAMING_METHODS), "threshold": THRESHOLD}, Task())
    return session


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            tensors.update({key: handle.get_tensor(key) for key in handle.keys()})
    return tensors


class ShardWatch:
    """Wraps export._save: records each shard's tensors weakly and checks earlier shards are gone."""

    def __init__(self, monkeypatch, limit: int) -> None:
        self.limit = limit
        self.shards: list[list[weakref.ref]] = []
        self.sizes: list[int] = []
        self.counts: list[int] = []
        original = export._save

        def save(path, tensors, metadata):
            import gc

            gc.collect()
            alive = [i for i, refs in enumerate(self.shards) if any(ref() is not None for ref in refs)]
            assert alive == [], f"shards {alive} still held while writing {path.name}"
            self.sizes.append(sum(t.numel() * t.element_size() for t in tensors.values()))
            self.counts.append(len(tensors))
            self.shards.append([weakref.ref(t) for t in tensors.values()])
            original(path, tensors, metadata)

        monkeypatch.setattr(export, "_save", save)


@pytest.mark.parametrize("method", stream_export.STREAMING_METHODS)
def test_streaming_matches_in_memory_bit_for_bit(tiny_dir, in_memory, tmp_path, monkeypatch, method):
    memory_out, stream_out = tmp_path / "memory", tmp_path / "stream"
    in_memory.export({"method": method, "out": str(memory_out), "max_shard_size": OUT_SHARD}, Task())
    watch = ShardWatch(monkeypatch, OUT_SHARD)
    result = stream_export.run(
        {
            "model": str(tiny_dir),
            "method": method,
            "threshold": THRESHOLD,
            "out": str(stream_out),
            "max_shard_size": OUT_SHARD,
        },
        Task(),
    )

    assert len(watch.sizes) >= 3
    for size, count in zip(watch.sizes, watch.counts):  # bounded, but for a single tensor past the bound
        assert size <= OUT_SHARD or count == 1, (size, count)
    expected, actual = _tensors(memory_out), _tensors(stream_out)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert (expected[name].dtype, expected[name].shape) == (actual[name].dtype, actual[name].shape), name
        assert torch.equal(expected[name], actual[name]), name
    assert any(name.endswith("q_proj.bias") for name in actual)

    sidecar = [json.loads((out / export.SIDECAR_NAME).read_text()) for out in (memory_out, stream_out)]
    for manifest in sidecar:
        manifest.pop("created")
    assert sidecar[0] == sidecar[1]  # layers, settings, files, tensor dtypes and shapes
    configs = [json.loads((out / "config.json").read_text()) for out in (memory_out, stream_out)]
    assert configs[0]["quantization_config"] == configs[1]["quantization_config"]
    assert sorted(p.name for p in memory_out.iterdir()) == sorted(p.name for p in stream_out.iterdir())
    index = json.loads((stream_out / export.WEIGHTS_INDEX_NAME).read_text())
    assert index == json.loads((memory_out / export.WEIGHTS_INDEX_NAME).read_text())
    assert result.total_bytes == sum(p.stat().st_size for p in stream_out.iterdir())
    assert result.breakdown["int8_weights"] == sum(t.numel() for t in actual.values() if t.dtype == torch.int8)

    reopened = load({"model": str(stream_out), "device": "cpu"}, Task())
    assert reopened.quantized.method == method
    original = in_memory.quantized[method].model
    ids = torch.randint(0, 200, (2, 24))
    with torch.no_grad():
        assert torch.equal(original(ids).logits, reopened.model(ids).logits)


def test_untied_head_is_copied_in_floating_point(tmp_path):
    source = _save_tiny(tmp_path / "untied", tie=False)
    out = tmp_path / "out"
    stream_export.run({"model": str(source), "method": "vectorwise", "out": str(out)}, Task())
    tensors = _tensors(out)
    assert tensors["lm_head.weight"].dtype == torch.float32
    assert "lm_head.SCB" not in tensors
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["llm_int8_skip_modules"] == ["lm_head"]
    assert torch.equal(tensors["lm_head.weight"], _tensors(source)["lm_head.weight"])


def test_static_llm_int8_is_refused_with_the_way_out(tiny_dir, tmp_path):
    with pytest.raises(BadInput, match="in-memory export"):
        stream_export.run({"model": str(tiny_dir), "method": "llm-int8", "out": str(tmp_path / "x")}, Task())
    assert list(tmp_path.iterdir()) == []


def test_bad_sources_are_refused(tiny_dir, tmp_path):
    with pytest.raises(BadInput, match="not one"):
        stream_export.run(
            {"model": str(tmp_path / "missing"), "method": "vectorwise", "out": str(tmp_path / "o")}, Task()
        )
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((tiny_dir / "config.json").read_text())
    with pytest.raises(BadInput, match="no \\*.safetensors"):
        stream_export.run({"model": str(bare), "method": "vectorwise", "out": str(tmp_path / "o")}, Task())


def test_cli_streaming(tiny_dir, tmp_path, capsys):
    from engine.cli import main

    out = tmp_path / "cli"
    code = main(
        [
            "export",
            "--model",
            str(tiny_dir),
            "--streaming",
            "--method",
            "weight-only",
            "--out",
            str(out),
            "--max-shard-size",
            "50KB",
            "--quiet",
            "--json",
        ]
    )
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["method"] == "weight-only" and Path(payload["path"]) == out.resolve()
    assert (out / export.WEIGHTS_INDEX_NAME).is_file()
