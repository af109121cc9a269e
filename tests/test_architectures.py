"""Every architecture a user brings, as a user brings it: a tiny random model of each family, built from
transformers' own config and saved as an ordinary model directory, then loaded, scanned, quantized,
evaluated and exported through the same Session the CLI and the GUI use.

GPT-2's Conv1D is quantized as the Linear it is; Qwen3-MoE's fused 3-D experts and the ModuleList experts
of a Mixtral-style model are quantized per expert; the share of the decoder in INT8 that every result
states is checked against the tensors actually stored.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from int8wb.engine.errors import BadInput
from int8wb.engine.process.session import Session
from int8wb.engine.task import Task
from tests.support.tiny_models import ARCHITECTURES, save_tiny

SCAN = {"tokens": 128, "seq_len": 32, "threshold": 2.5}
EVAL = {"tokens": 256, "window": 32}
DECODER = {
    "opt": "model.decoder.layers.",
    "gpt2": "transformer.h.",
    "falcon": "transformer.h.",
    "bloom": "transformer.h.",
    "gpt_neox": "gpt_neox.layers.",
}


def stored_share(model, prefix: str) -> float:
    """INT8 share of the decoder's matrix weights, counted from the stored tensors themselves."""
    int8 = matrix = 0
    for name, tensor in model.state_dict().items():
        if not name.startswith(prefix) or tensor.dim() < 2 or name.endswith("outlier_weight"):
            continue
        matrix += tensor.numel()
        int8 += tensor.numel() if tensor.dtype == torch.int8 else 0
    return int8 / matrix


def session_for(directory, methods) -> Session:
    session = Session()
    session.load_model({"model": str(directory), "device": "cpu"}, Task())
    session.scan(SCAN, Task())
    session.quantize({"methods": methods, "threshold": SCAN["threshold"]}, Task())
    return session


def reopen(directory) -> Session:
    session = Session()
    session.load_model({"model": str(directory), "device": "cpu"}, Task())
    return session


def load_in_bitsandbytes(directory):
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bitsandbytes warns that it casts float32 inputs to float16
        return AutoModelForCausalLM.from_pretrained(directory, device_map="cpu", output_loading_info=True)


def logits(model, ids):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model(input_ids=ids).logits


@pytest.mark.slow
@pytest.mark.parametrize("family", ARCHITECTURES)
def test_every_family_is_quantized_whole_and_exported(family, tmp_path):
    session = session_for(save_tiny(tmp_path / family, family), ["vectorwise", "llm-int8"])
    prefix = DECODER.get(family, "model.layers.")
    vectorwise = session.quantized["vectorwise"]
    summary = vectorwise.summary()
    assert summary["int8_share"] >= 0.9
    assert summary["int8_share"] == pytest.approx(stored_share(vectorwise.model, prefix), abs=1e-12)
    assert summary["warnings"] == [] and summary["int8_bytes"] > 0
    assert all(group["reason"] == "router" for group in summary["kept_float"])

    rows = {row["method"]: row for row in session.evaluate(EVAL, Task())["rows"]}
    assert math.isfinite(rows["llm-int8"]["perplexity"]) and math.isfinite(rows["baseline"]["perplexity"])
    assert rows["llm-int8"]["int8_share"] == summary["int8_share"]

    out = tmp_path / "export"
    exported = session.export({"method": "llm-int8", "out": str(out)}, Task())
    original = session.quantized["llm-int8"].model
    again = reopen(out).loaded.model
    expected, actual = original.state_dict(), again.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits(original, ids), logits(again, ids))

    theirs, info = load_in_bitsandbytes(out)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    error = float((logits(theirs, ids) - logits(original, ids)).norm() / logits(original, ids).norm())
    assert error < 0.05, f"transformers + bitsandbytes differ from the workbench by {error:.3%}"
    if family == "qwen3_moe":  # bitsandbytes cannot hold fused experts: floating point, said so, loads
        assert exported["int8_share"] < 0.5 and exported["warnings"] and exported["notes"]
        assert any(
            g["reason"] == "format" and g["modules"] == "model.layers.*.mlp.experts" for g in exported["kept_float"]
        )
        skip = theirs.config.quantization_config.llm_int8_skip_modules
        assert "model.layers.0.mlp.experts" in skip and "model.layers.1.mlp.gate" in skip
        expert = original.model.layers[1].mlp.experts[3].gate_up_proj
        assert torch.equal(theirs.model.layers[1].mlp.experts.gate_up_proj[3], expert.float_weight())
    elif family == "falcon":  # FalconLinear is not an nn.Linear to bitsandbytes' loader: floating point, said so
        assert exported["int8_share"] == 0.0 and exported["warnings"]
        assert {g["why"] for g in exported["kept_float"]} == {
            "the export format has no INT8 layout for it (FalconLinear)"
        }
        dense = original.transformer.h[0].self_attention.dense
        assert torch.equal(theirs.transformer.h[0].self_attention.dense.weight, dense.float_weight())
    else:
        assert exported["int8_share"] == pytest.approx(summary["int8_share"])


@pytest.mark.slow
@pytest.mark.parametrize("family, kind", [("gpt2", "attn_in"), ("qwen3_moe", "expert_in")])
def test_planted_outlier_is_found_and_naive_int8_is_worse(family, kind, tmp_path):
    """A norm weight set large in one dimension (compensated downstream: the same function) is found by the
    scan in every input it feeds, every expert's included, and ruins absmax-tensor but not llm-int8."""
    dim, threshold = 7, 6.0
    session = Session()
    session.load_model(
        {"model": str(save_tiny(tmp_path / family, family, outlier=(dim, 60.0))), "device": "cpu"}, Task()
    )
    scan = session.scan({"tokens": 256, "seq_len": 64, "threshold": threshold}, Task())
    fed = [layer for layer in scan["layers"] if layer["kind"] == kind]
    assert len(fed) == (2 if family == "gpt2" else 2 * 4)  # c_attn per layer; gate_up of 4 experts per layer
    for layer in fed:
        if layer["tokens"]:
            assert dim in np.flatnonzero(layer["absmax"] > threshold)
            assert layer["count_over"][dim] > 0.75 * layer["tokens"]  # |x| over 6 / 60 on most tokens
    if family == "qwen3_moe":  # every token reaches two experts of each layer
        for block in (0, 1):
            assert sum(layer["tokens"] for layer in fed if layer["layer"] == block) == 2 * scan["tokens"]
        assert scan["report"][kind]["top_dims"][0]["dim"] == dim
    # Only the Linears that read the planted dimension are quantized, so the error is theirs.
    skip = ["mlp.c_fc", "mlp.c_proj", "attn.c_proj"] if family == "gpt2" else ["q_proj", "k_proj", "v_proj", "o_proj"]
    session.quantize({"methods": ["absmax-tensor", "llm-int8"], "threshold": threshold, "skip_modules": skip}, Task())
    ids = torch.randint(0, 256, (4, 48), generator=torch.Generator().manual_seed(1))
    reference = logits(session.loaded.model, ids)
    error = {
        method: float((logits(session.quantized[method].model, ids) - reference).norm() / reference.norm())
        for method in ("absmax-tensor", "llm-int8")
    }
    print(
        f"\n{family}: relative logit error absmax-tensor {error['absmax-tensor']:.4f}, llm-int8 {error['llm-int8']:.4f}"
    )
    assert error["absmax-tensor"] > 5 * error["llm-int8"]


@pytest.mark.slow
def test_compressed_tensors_holds_fused_experts_in_float_and_refuses_nothing_in_int8(tmp_path):
    """compressed-tensors matches `Linear` by class name: fused experts are written in floating point and
    ignored, and the export loads; a GPT-2 (all Conv1D) would hold no INT8 at all, which is refused."""
    from tests.test_serving_export import _load_compressed

    session = session_for(save_tiny(tmp_path / "moe", "qwen3_moe"), ["vectorwise"])
    out = tmp_path / "ct"
    result = session.export({"method": "vectorwise", "format": "compressed-tensors", "out": str(out)}, Task())
    groups = {g["modules"]: g for g in result["kept_float"]}
    assert groups["model.layers.*.mlp.experts"]["why"].endswith("(Qwen3MoeExperts (fused experts))")
    assert result["warnings"] and "compressed-tensors cannot hold Qwen3MoeExperts" in result["notes"][0]
    theirs, info = _load_compressed(out)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert (
        "model.layers.0.mlp.experts" in json.loads((out / "config.json").read_text())["quantization_config"]["ignore"]
    )
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    ours = logits(session.quantized["vectorwise"].model, ids)
    assert float((logits(theirs, ids) - ours).norm() / ours.norm()) < 0.05

    gpt2 = session_for(save_tiny(tmp_path / "gpt2", "gpt2"), ["vectorwise"])
    with pytest.raises(BadInput, match=r"none of the decoder's matrix weights could be stored as INT8.*\(Conv1D\)"):
        gpt2.export({"method": "vectorwise", "format": "compressed-tensors", "out": str(tmp_path / "g")}, Task())
    assert not (tmp_path / "g").exists()


@pytest.mark.slow
def test_gpt2_layer_by_layer_equals_in_memory(tmp_path):
    """Conv1D from disk, one decoder layer at a time: the same summaries and the same exported tensors."""
    from tests.support.tiny_models import read_tensors

    source = save_tiny(tmp_path / "gpt2", "gpt2")
    exported = {}
    for offload in ("none", "disk"):
        session = Session()
        session.load_model({"model": str(source), "device": "cpu", "offload": offload}, Task())
        summary = session.quantize({"methods": ["vectorwise"]}, Task())["models"][0]
        out = tmp_path / offload
        result = session.export({"method": "vectorwise", "out": str(out)}, Task())
        assert summary["int8_share"] == result["int8_share"] == 1.0
        exported[offload] = read_tensors(out)
    memory, disk = exported["none"], exported["disk"]
    assert memory.keys() == disk.keys() and "transformer.h.1.attn.c_attn.SCB" in memory
    assert all(torch.equal(memory[k], disk[k]) for k in memory)
