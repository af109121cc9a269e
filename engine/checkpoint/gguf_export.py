"""Write a model quantized with `q8_0` as one GGUF file that llama.cpp, ollama and transformers read.

The Linear weights are stored as GGUF Q8_0 straight from the workbench's INT8
values and float16 block scales (engine.quant.schemes: the same quantization as
llama.cpp's and the `gguf` package's, bit for bit), so the file is the model the
workbench evaluated. Every other tensor is written in floating point (1-D ones
in float32, as llama.cpp expects), under the names of the `gguf` package's tensor
map for the architecture, with llama.cpp's conventions: Llama's q/k rows in its
rotary order, Gemma's norms as 1 + weight.

Metadata and tokenizer: a model loaded from a GGUF file (the embedded default
model is one) keeps every key of its source, the tokenizer included, and any
tensor of the source that has no counterpart in the loaded model (such as
`rope_freqs`) is copied as it was. A Hugging Face directory gets the keys
transformers and llama.cpp read for Llama, Qwen2 and Gemma 3, and its tokenizer
through the `gguf` package's vocabulary readers; anything else is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from int8wb.engine.errors import BadInput

GGUF_NAME = "model-q8_0.gguf"
MOSTLY_Q8_0 = 7  # llama.cpp's general.file_type of a Q8_0 model (gguf.LlamaFileType.MOSTLY_Q8_0)
QUANTIZATION_VERSION = 2
_SKIPPED_KEYS = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version")

# Hugging Face model_type -> GGUF architecture, and the metadata keys of each: (key, config attribute).
_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "gemma3": "gemma3", "gemma3_text": "gemma3"}
_COMMON_KEYS = (
    ("context_length", "max_position_embeddings"),
    ("block_count", "num_hidden_layers"),
    ("feed_forward_length", "intermediate_size"),
    ("embedding_length", "hidden_size"),
    ("rope.freq_base", "rope_theta"),
    ("attention.head_count", "num_attention_heads"),
    ("attention.head_count_kv", "num_key_value_heads"),
    ("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
    ("vocab_size", "vocab_size"),
)
_ARCH_KEYS = {
    "llama": (("rope.dimension_count", "head_dim"),),
    "qwen2": (),
    "gemma3": (
        ("attention.key_length", "head_dim"),
        ("attention.value_length", "head_dim"),
        ("attention.sliding_window", "sliding_window"),
    ),
}


@dataclass
class GgufPlan:
    """What the file will hold: architecture, metadata source and every tensor (made when written)."""

    arch: str
    quantized: Any  # engine.quant.quantize.QuantizedModel (method q8_0)
    source_gguf: Path | None  # the GGUF file the model was loaded from, if any
    source_dir: Path | None  # else the Hugging Face directory, for the tokenizer
    names: dict[str, str] = field(default_factory=dict)  # state-dict key -> GGUF tensor name
    q8_0: set[str] = field(default_factory=set)  # Linear names stored as Q8_0

    def total_bytes(self) -> int:
        """About what the file takes: INT8 values, 2 bytes per block, float tensors as stored."""
        return sum(t.numel() * t.element_size() for t in self.quantized.model.state_dict().values())

    def breakdown(self, files: list[dict[str, Any]]) -> dict[str, int]:
        """Where the bytes of the file go."""
        q8_0 = sum(self._linear(name).weight_int8.numel() * 34 // 32 for name in self.q8_0)
        total = sum(f["bytes"] for f in files)
        gguf_bytes = next(f["bytes"] for f in files if f["name"] == GGUF_NAME)
        return {"q8_0_weights": q8_0, "other_tensors_and_metadata": gguf_bytes - q8_0, "total_on_disk": total}

    def _linear(self, name: str):
        return self.quantized.model.get_submodule(name)


def plan(loaded, quantized) -> GgufPlan:
    """Check that the model can be written as GGUF and name every tensor; nothing is read or written yet."""
    import gguf

    from int8wb.engine.quant.int8_linear import Int8Linear

    model = quantized.model
    config = model.config
    source_gguf = Path(loaded.source) if str(loaded.source).lower().endswith(".gguf") else None
    arch = _gguf_arch(source_gguf) if source_gguf else _ARCHITECTURES.get(config.model_type)
    if arch is None or arch not in gguf.MODEL_ARCH_NAMES.values():
        raise BadInput(
            f"GGUF export is not supported for this architecture ({config.model_type}): it writes "
            f"{', '.join(sorted(set(_ARCHITECTURES.values())))} from a Hugging Face directory, or any "
            "architecture loaded from a GGUF file"
        )
    source_dir = None if source_gguf else Path(str(config.name_or_path))
    tensor_map = gguf.get_tensor_name_map(_arch_enum(arch), config.num_hidden_layers)
    result = GgufPlan(arch, quantized, source_gguf, source_dir)
    quantized_names = {name for name, m in model.named_modules() if isinstance(m, Int8Linear)}
    for key in _stored_keys(model, quantized_names):
        gguf_name = tensor_map.get_name(key, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise BadInput(f"the tensor {key} has no GGUF name for the {arch} architecture: not supported")
        result.names[key] = gguf_name
    result.q8_0 = quantized_names
    return result


def _stored_keys(model, quantized_names: set[str]) -> list[str]:
    """State-dict keys the file stores: each quantized Linear's weight (and bias), the rest once."""
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    keys = []
    for key in model.state_dict():
        owner, _, leaf = key.rpartition(".")
        if owner in quantized_names and leaf not in ("weight_int8", "bias"):
            continue
        if key in tied:
            continue
        keys.append(f"{owner}.weight" if leaf == "weight_int8" else key)
    return keys


def _gguf_arch(path: Path) -> str:
    import gguf

    reader = gguf.GGUFReader(path)
    return reader.fields["general.architecture"].contents()


def _arch_enum(arch: str):
    import gguf

    return next(enum for enum, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)


def write(staging: Path, plan: GgufPlan, task) -> None:
    """Write `GGUF_NAME` into `staging` (its caller renames the folder when it is complete)."""
    import gguf
    import torch

    writer = gguf.GGUFWriter(staging / GGUF_NAME, plan.arch)
    source = gguf.GGUFReader(plan.source_gguf) if plan.source_gguf else None
    if source is not None:
        _copy_metadata(writer, source)
    else:
        _write_metadata(writer, plan)
    writer.add_file_type(MOSTLY_Q8_0)
    writer.add_quantization_version(QUANTIZATION_VERSION)
    state = plan.quantized.model.state_dict()
    written = set()
    with torch.no_grad():
        for i, (key, gguf_name) in enumerate(plan.names.items()):
            task.check_cancelled()
            array, raw_dtype = _tensor(plan, key, gguf_name, state)
            writer.add_tensor(gguf_name, array, raw_dtype=raw_dtype)
            written.add(gguf_name)
            task.progress(0.8 * (i + 1) / len(plan.names), f"prepared {gguf_name}")
    for tensor in source.tensors if source is not None else ():
        if tensor.name not in written:  # e.g. rope_freqs: part of the architecture, not of the loaded model
            writer.add_tensor(
                tensor.name, tensor.data, raw_shape=list(reversed(tensor.shape)), raw_dtype=tensor.tensor_type
            )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _fsync(staging / GGUF_NAME)
    task.progress(1.0, f"wrote {GGUF_NAME}")


def _tensor(plan: GgufPlan, key: str, gguf_name: str, state: dict[str, Any]):
    """(numpy array, GGML type or None) of one tensor in llama.cpp's conventions."""
    import gguf
    import torch

    owner = key.rpartition(".")[0]
    if key.endswith(".weight") and owner in plan.q8_0:
        linear = plan.quantized.model.get_submodule(owner)
        array = _q8_0_bytes(linear.weight_int8, linear.weight_scale)
        return _rotary_order(plan, gguf_name, array), gguf.GGMLQuantizationType.Q8_0
    tensor = state[key].detach().cpu()
    if plan.arch == "gemma3" and "norm" in gguf_name:
        tensor = tensor.float() + 1.0  # llama.cpp's Gemma norms multiply by the stored weight
    if tensor.dim() <= 1 or tensor.dtype != torch.float16:  # float16 matrices stay F16, the rest F32
        tensor = tensor.float()
    return _rotary_order(plan, gguf_name, tensor.numpy()), None


def _q8_0_bytes(weight_int8, scale) -> Any:
    """GGUF Q8_0 rows: per block of 32 weights, its float16 scale then the 32 int8 values (out, blocks * 34)."""
    import numpy as np

    rows, cols = weight_int8.shape
    blocks = scale.shape[1]
    values = weight_int8.cpu().numpy().view(np.uint8).reshape(rows, blocks, cols // blocks)
    scales = scale.cpu().numpy().astype(np.float16).view(np.uint8).reshape(rows, blocks, 2)
    return np.concatenate([scales, values], axis=2).reshape(rows, -1)


def _rotary_order(plan: GgufPlan, gguf_name: str, array):
    """Llama's q/k rows as llama.cpp's convert script orders them (transformers' GGUF reader undoes it)."""
    if plan.arch != "llama" or not gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
        return array
    config = plan.quantized.model.config
    heads = config.num_key_value_heads if gguf_name.endswith("attn_k.weight") else config.num_attention_heads
    rows = array.shape[0]
    return array.reshape(heads, 2, rows // heads // 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)


def _copy_metadata(writer, source) -> None:
    """Every key of the source GGUF file but those the writer sets itself."""
    import gguf

    for name, value in source.fields.items():
        if name.startswith(_SKIPPED_KEYS):
            continue
        vtype = value.types[0]
        sub_type = value.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, value.contents(), vtype, sub_type)


def _write_metadata(writer, plan: GgufPlan) -> None:
    """The architecture's keys from config.json, and the tokenizer of the source directory."""
    import gguf

    config = plan.quantized.model.config
    writer.add_name(plan.source_dir.name)
    for key, attribute in _COMMON_KEYS + _ARCH_KEYS[plan.arch]:
        value = _config_value(config, attribute)
        if value is None:
            continue
        full_key = f"{plan.arch}.{key}"
        if isinstance(value, float):
            writer.add_key_value(full_key, value, gguf.GGUFValueType.FLOAT32)
        else:
            writer.add_key_value(full_key, int(value), gguf.GGUFValueType.UINT32)
    _write_tokenizer(writer, plan.source_dir, int(config.vocab_size))


def _config_value(config, attribute: str):
    """A config attribute; transformers 5 keeps rope_theta in rope_parameters."""
    value = getattr(config, attribute, None)
    if value is None and attribute == "rope_theta":
        value = (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
    if attribute == "head_dim" and value is None:
        value = config.hidden_size // config.num_attention_heads
    if attribute == "rope_theta" and value is not None:
        value = float(value)
    return value


def _write_tokenizer(writer, directory: Path, vocab_size: int) -> None:
    """tokenizer.ggml.*: byte-level BPE ("gpt2") or SentencePiece-style BPE ("llama"), padded to the vocabulary."""
    import gguf

    vocab = None
    for reader in (gguf.vocab.BpeVocab, gguf.vocab.LlamaHfVocab):
        try:
            vocab = reader(directory)
            break
        except (FileNotFoundError, TypeError):
            continue
    if vocab is None:
        raise BadInput(
            f"the tokenizer of {directory} is neither a byte-level BPE nor a SentencePiece-style BPE "
            "tokenizer.json: GGUF export of this tokenizer is not supported"
        )
    tokens, scores, types = [], [], []
    for text, score, token_type in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(token_type)
    for index in range(len(tokens), vocab_size):  # embedding rows past the tokenizer: unused, as llama.cpp pads
        tokens.append(f"[PAD{index}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model(vocab.tokenizer_model)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(directory, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=len(tokens))
    special.add_to_gguf(writer, quiet=True)


def _fsync(path: Path) -> None:
    import os

    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
