"""The one declaration of each method's stored tensors (engine.quant.schemes, engine.checkpoint.layout)."""

from __future__ import annotations

import pytest
import torch

from int8wb.engine.checkpoint.layout import layer_record, linear_tensors, rebuild_linear
from int8wb.engine.quant.int8_linear import Int8Linear
from int8wb.engine.quant.schemes import SCHEMES
from int8wb.engine.vocabulary import FORMAT_METHODS, METHODS, NEEDS_SCAN

SAFETENSORS_LAYOUTS = [(fmt, m) for fmt in ("bitsandbytes", "compressed-tensors") for m in FORMAT_METHODS[fmt]]


def _quantized(method: str, bias: bool = True) -> Int8Linear:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=bias)
    cols = torch.tensor([3, 17, 40]) if SCHEMES[method].outliers == "static" else None
    return Int8Linear.from_linear(linear, method, 2.5, cols)


def test_every_method_has_one_scheme_in_the_vocabulary_order():
    assert tuple(SCHEMES) == METHODS
    assert tuple(m for m, s in SCHEMES.items() if s.needs_scan) == NEEDS_SCAN


@pytest.mark.parametrize(("fmt", "method"), SAFETENSORS_LAYOUTS)
@pytest.mark.parametrize("bias", [True, False])
def test_the_planned_layout_is_the_written_one(fmt, method, bias):
    """An empty layer (what the layer-by-layer export plans with) stores the names, dtypes and shapes a real one does."""
    real_main, real_sidecar = linear_tensors("layer", _quantized(method, bias), fmt)
    planned_main, _ = linear_tensors("layer", Int8Linear.empty(method, 48, 64, bias, torch.float32), fmt)

    def described(tensors):
        return {name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()}

    assert list(planned_main) == list(real_main)
    assert described(planned_main) == described(real_main)
    assert all(t.device.type == "meta" for t in planned_main.values())
    assert ("layer.bias" in real_main) == bias
    assert bool(real_sidecar) == (SCHEMES[method].outliers == "static")


@pytest.mark.parametrize("method", FORMAT_METHODS["bitsandbytes"])
def test_rebuild_gives_back_every_tensor(method):
    module = _quantized(method)
    main, sidecar = linear_tensors("layer", module)
    remaining = {**main, **sidecar}
    rebuilt = rebuild_linear(layer_record("layer", module), remaining, 2.5, torch.float32)
    assert remaining == {}
    assert rebuilt.method == method
    for name, tensor in module.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor), name
    x = torch.randn(5, 64) * 3
    assert torch.equal(rebuilt(x), module(x))


def test_q8_0_is_llama_cpp_q8_0_bit_for_bit():
    """The workbench's Q8_0 blocks are the gguf package's (llama.cpp's reference) quantization."""
    import gguf
    import numpy as np

    module = _quantized("q8_0")
    torch.manual_seed(0)
    weight = torch.nn.Linear(64, 48, bias=True).weight.detach()  # the weight _quantized drew
    expected = gguf.quants.quantize(weight.numpy(), gguf.GGMLQuantizationType.Q8_0).reshape(48, 2, 34)
    assert np.array_equal(expected[:, :, :2].copy().view(np.float16)[:, :, 0], module.weight_scale.numpy())
    assert np.array_equal(expected[:, :, 2:].copy().view(np.int8).reshape(48, 64), module.weight_int8.numpy())
    dequantized = gguf.quants.dequantize(expected.reshape(48, 68), gguf.GGMLQuantizationType.Q8_0)
    assert np.array_equal(dequantized, module.dequantized_weight(torch.float32).numpy())


@pytest.mark.parametrize(("fmt", "method"), [("compressed-tensors", "llm-int8"), ("bitsandbytes", "q8_0")])
def test_a_format_refuses_what_it_cannot_carry_and_says_where_to_go(fmt, method):
    from int8wb.engine.checkpoint.layout import check_format
    from int8wb.engine.errors import BadInput

    with pytest.raises(BadInput, match="--format (bitsandbytes|gguf-q8_0)"):
        check_format(fmt, method)
