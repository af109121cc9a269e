"""Exports for serving, checked by the programs that read them: compressed-tensors (the `compressed-tensors`
library through transformers' CompressedTensorsConfig, as vLLM reads the format) and GGUF Q8_0 (the `gguf`
package's reader and transformers' `gguf_file=` loader). llama.cpp itself is not run here."""

from __future__ import annotations

import json

import pytest
import torch

from int8wb.engine.errors import BadInput
from int8wb.engine.process.session import Session
from int8wb.engine.quant.int8_linear import Int8Linear
from int8wb.engine.task import Task
from int8wb.engine.vocabulary import FORMAT_METHODS, METHODS
from tests.support.tiny_models import save_tiny

TINY_THRESHOLD = 2.5


def _session(directory, methods) -> Session:
    session = Session()
    session.load_model({"model": str(directory), "device": "cpu"}, Task())
    session.scan({"tokens": 256, "seq_len": 64, "threshold": TINY_THRESHOLD}, Task())
    session.quantize({"methods": list(methods), "threshold": TINY_THRESHOLD}, Task())
    return session


@pytest.fixture(scope="module")
def tiny_llama_session(tmp_path_factory) -> Session:
    path = save_tiny(tmp_path_factory.mktemp("tiny") / "llama")
    return _session(path, FORMAT_METHODS["compressed-tensors"] + ("weight-only",))


def _load_compressed(path):
    """The export decompressed to floating point by transformers + compressed-tensors (dequantize=True)."""
    import warnings

    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    with warnings.catch_warnings():  # "the quantization_config from the model will be used": as intended
        warnings.filterwarnings("ignore", message="You passed `quantization_config`")
        return AutoModelForCausalLM.from_pretrained(
            path,
            quantization_config=CompressedTensorsConfig(dequantize=True),
            dtype=torch.float32,
            output_loading_info=True,
        )


def _assert_weights_are_the_workbench_ones(quantized_model, loaded_model) -> None:
    for name, module in quantized_model.named_modules():
        if isinstance(module, Int8Linear):
            assert torch.equal(
                loaded_model.get_submodule(name).weight.detach(), module.dequantized_weight(torch.float32)
            )
    theirs = loaded_model.state_dict()
    for key, tensor in quantized_model.state_dict().items():  # norms (smoothed ones too) and embeddings
        if key in theirs and tensor.dtype.is_floating_point and tensor.shape == theirs[key].shape:
            assert torch.equal(theirs[key], tensor), key


@pytest.mark.parametrize("method", FORMAT_METHODS["compressed-tensors"])
def test_compressed_tensors_loads_in_the_library_with_the_workbench_weights(tiny_llama_session, tmp_path, method):
    from compressed_tensors.quantization import QuantizationConfig

    out = tmp_path / method
    result = tiny_llama_session.export({"method": method, "format": "compressed-tensors", "out": str(out)}, Task())
    assert result["format"] == "compressed-tensors"
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    parsed = QuantizationConfig.model_validate(config)
    assert parsed.quant_method == "compressed-tensors"
    assert config["ignore"] == ["lm_head"]
    group = config["config_groups"]["group_0"]
    assert group["weights"]["strategy"] == "channel" and group["weights"]["num_bits"] == 8
    if method == "weight-only":  # W8A16: vLLM reads it packed
        assert config["format"] == "pack-quantized" and group["input_activations"] is None
    else:  # W8A8 with dynamic per-token activations
        assert config["format"] == "int-quantized"
        assert group["input_activations"]["strategy"] == "token" and group["input_activations"]["dynamic"]
    model, info = _load_compressed(out)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    quantized = tiny_llama_session.quantized[method]
    _assert_weights_are_the_workbench_ones(quantized.model, model)


def test_decompressed_w8a8_model_is_the_weight_only_model(tiny_llama_session, tmp_path):
    """The server quantizes activations; decompressed on the CPU, vectorwise's weights run as weight-only's do."""
    out = tmp_path / "vectorwise"
    tiny_llama_session.export({"method": "vectorwise", "format": "compressed-tensors", "out": str(out)}, Task())
    model, _ = _load_compressed(out)
    ids = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = model(ids).logits
        ours = tiny_llama_session.quantized["weight-only"].model(ids).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("method", "fmt", "words"),
    [
        ("llm-int8", "compressed-tensors", "outlier columns"),
        ("llm-int8-dynamic", "compressed-tensors", "outlier columns"),
        ("absmax-tensor", "compressed-tensors", "per-tensor activation scale"),
        ("q8_0", "bitsandbytes", "one per block of 32"),
        ("vectorwise", "gguf-q8_0", "--method q8_0"),
    ],
)
def test_methods_a_format_cannot_carry_are_refused_before_anything_is_written(tmp_path, capsys, method, fmt, words):
    from int8wb.engine.checkpoint.layout import check_format
    from int8wb.engine.cli import main

    with pytest.raises(BadInput, match=words):
        check_format(fmt, method)
    out = tmp_path / "out"
    assert main(["export", "--method", method, "--format", fmt, "--out", str(out), "--quiet"]) == 2
    assert words in capsys.readouterr().err
    assert not out.exists()


def test_every_method_has_a_format():
    assert {m for methods in FORMAT_METHODS.values() for m in methods} == set(METHODS)


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gemma3"])
def test_gguf_q8_0_reads_back_as_the_workbench_q8_0_model(tmp_path, architecture):
    import gguf
    from transformers import AutoModelForCausalLM

    session = _session(save_tiny(tmp_path / architecture, architecture), ["q8_0"])
    out = tmp_path / "gguf"
    result = session.export({"method": "q8_0", "format": "gguf-q8_0", "out": str(out)}, Task())
    assert {f["name"] for f in result["files"]} == {"model-q8_0.gguf", "int8wb_serving.json"}
    reader = gguf.GGUFReader(out / "model-q8_0.gguf")
    types = {t.name: t.tensor_type for t in reader.tensors}
    linears = [n for n in types if n.endswith(("attn_q.weight", "attn_output.weight", "ffn_down.weight"))]
    assert len(linears) == 3 * 2
    for name, tensor_type in types.items():
        expected = gguf.GGMLQuantizationType.Q8_0 if _is_linear(name) else gguf.GGMLQuantizationType.F32
        assert tensor_type == expected, name
    assert reader.fields["general.architecture"].contents() == architecture
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file="model-q8_0.gguf", dtype=torch.float32).eval()
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, session.quantized["q8_0"].model(ids).logits)


def test_a_serving_export_can_be_overwritten_but_not_a_stranger(tiny_llama_session, tmp_path):
    out = tmp_path / "w8a8"
    params = {"method": "vectorwise", "format": "compressed-tensors", "out": str(out)}
    tiny_llama_session.export(params, Task())
    assert json.loads((out / "int8wb_serving.json").read_text())["method"] == "vectorwise"
    tiny_llama_session.export({**params, "method": "smoothquant", "overwrite": True}, Task())
    assert json.loads((out / "int8wb_serving.json").read_text())["method"] == "smoothquant"
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(BadInput, match="not an export of this workbench"):
        tiny_llama_session.export({**params, "out": str(stranger), "overwrite": True}, Task())
    assert (stranger / "notes.txt").read_text() == "mine"


def _is_linear(gguf_name: str) -> bool:
    return gguf_name.endswith(
        tuple(f"{n}.weight" for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"))
    )


def test_gguf_export_refuses_an_architecture_it_does_not_know(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.support.tiny_models import byte_tokenizer

    path = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=1, n_head=2, vocab_size=256)).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    session = Session()
    session.load_model({"model": str(path), "device": "cpu"}, Task())
    session.quantize({"methods": ["q8_0"]}, Task())
    with pytest.raises(BadInput, match="not supported for this architecture"):
        session.export({"method": "q8_0", "format": "gguf-q8_0", "out": str(tmp_path / "out")}, Task())


# --- the embedded default model -------------------------------------------------------------------------------

EVAL_TOKENS = 2048


@pytest.fixture(scope="module")
def default_session() -> Session:
    session = Session()
    session.load_model({"device": "cpu"}, Task())
    session.quantize({"methods": ["vectorwise", "weight-only", "q8_0"]}, Task())
    return session


@pytest.fixture(scope="module")
def eval_windows(default_session):
    from int8wb.engine.measure.evaluate import EvalSettings, evaluation_windows

    windows, _ = evaluation_windows(EvalSettings(tokens=EVAL_TOKENS), default_session.loaded.tokenizer)
    return windows


def _perplexity(model, windows) -> float:
    from int8wb.engine.measure.evaluate import perplexity

    return perplexity(model, windows, 4, Task())["perplexity"]


@pytest.mark.slow
def test_default_model_compressed_tensors_perplexity_is_weight_only(default_session, eval_windows, tmp_path):
    out = tmp_path / "smollm2-w8a8"
    default_session.export({"method": "vectorwise", "format": "compressed-tensors", "out": str(out)}, Task())
    model, info = _load_compressed(out)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    _assert_weights_are_the_workbench_ones(default_session.quantized["vectorwise"].model, model)
    ours = _perplexity(default_session.quantized["weight-only"].model, eval_windows)
    theirs = _perplexity(model.eval(), eval_windows)
    print(f"\nperplexity on {eval_windows.numel()} tokens: weight-only {ours:.4f}, decompressed W8A8 {theirs:.4f}")
    assert abs(theirs / ours - 1) < 0.001


@pytest.mark.slow
@pytest.mark.heavy
def test_default_model_gguf_q8_0_perplexity_is_the_q8_0_method(default_session, eval_windows, tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM

    out = tmp_path / "smollm2-q8_0"
    default_session.export({"method": "q8_0", "format": "gguf-q8_0", "out": str(out)}, Task())
    reader = gguf.GGUFReader(out / "model-q8_0.gguf")
    source = gguf.GGUFReader(default_session.loaded.source)
    assert reader.fields["tokenizer.ggml.tokens"].contents() == source.fields["tokenizer.ggml.tokens"].contents()
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert sum(t == gguf.GGMLQuantizationType.Q8_0 for t in types.values()) == 7 * 30
    assert all(t == gguf.GGMLQuantizationType.Q8_0 for n, t in types.items() if _is_linear(n))
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file="model-q8_0.gguf", dtype=torch.float32).eval()
    ours = _perplexity(default_session.quantized["q8_0"].model, eval_windows)
    theirs = _perplexity(model, eval_windows)
    print(
        f"\nperplexity on {eval_windows.numel()} tokens: workbench q8_0 {ours:.4f}, GGUF in transformers {theirs:.4f}"
    )
    assert abs(theirs / ours - 1) < 0.005
