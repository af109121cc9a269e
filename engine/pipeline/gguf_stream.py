"""Convert a GGUF file to a safetensors model directory one tensor at a time.

transformers reads a GGUF file by dequantizing every tensor into one float32 model, which a 7B
model in float32 (27 GB) does not leave room for on a 24 GB machine. This converter uses the same
pieces transformers uses (the `gguf` package's reader and `dequantize`, transformers' name map and
tensor processors, which undo llama.cpp's q/k permutation), but takes one tensor at a time: each is
memory-mapped from the GGUF file, dequantized, processed and written to its place in the output
files (engine.checkpoint.tensor_files), then released. The result is what transformers' own
conversion saves (tests/test_gguf_stream.py compares the two on the default model).

The name map and the output shapes are known from the file's header and the model built from its
config before anything is dequantized; the header is checked first (engine.model.gguf_header) and
the model built on the meta device may need no more values than the file stores. Architectures whose processor merges several GGUF tensors
into one (mixtures of experts) cannot go one tensor at a time; `StreamingNotPossible` says so and
the caller converts them whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from int8wb.engine.model import gguf_header
from int8wb.engine.model.dependencies import load_failure
from int8wb.engine.model.source_checks import check_against_stored

MAX_SHARD_SIZE = "50GB"


class StreamingNotPossible(Exception):
    """The file's tensors do not map one to one onto the model's: convert it whole."""


def convert(gguf: Path, out_dir: Path, task) -> None:
    """Write the model of `gguf` (config, tokenizer, float32 safetensors) into `out_dir`, one tensor at a time."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    header = gguf_header.read(gguf)
    try:
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        reader, processor = _reader(gguf, config)
    except Exception as exc:  # a damaged header fails in many ways; the file is what the user must hear about
        raise load_failure(exc, f"could not read the GGUF file {gguf}") from exc
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the tensors are written dequantized
    model = _skeleton(config)
    check_against_stored(model, {}, header.stored_elements(), str(gguf))  # GGUF names differ: _plan maps shapes
    sources = _plan(reader, processor, model)
    _write(sources, processor, out_dir, task)
    config.dtype = torch.float32  # what transformers' save_pretrained of the loaded model records
    config.architectures = [type(model).__name__]
    config.save_pretrained(out_dir)
    GenerationConfig.from_model_config(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _skeleton(config):
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.tie_weights()
    return model


def _reader(gguf: Path, config):
    """(GGUFReader, transformers' tensor processor for the file's architecture, given the model's config)."""
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, read_field

    reader = GGUFReader(str(gguf))
    architecture = read_field(reader, "general.architecture")[0]
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config.to_dict())
    return reader, processor


def _plan(reader, processor, model) -> dict[str, tuple[Any, str]]:
    """Output name -> (GGUF tensor, its GGUF name) for every tensor the model saves, checked by shape."""
    from transformers.modeling_gguf_pytorch_utils import get_gguf_hf_weights_map

    key_map = get_gguf_hf_weights_map(model, processor)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items() if key not in tied}
    sources: dict[str, tuple[Any, str]] = {}
    for tensor in reader.tensors:
        name = key_map.get(tensor.name)
        if name is None or name not in expected:
            continue
        if tuple(int(n) for n in reversed(tensor.shape)) != expected[name]:
            raise StreamingNotPossible(f"{tensor.name} does not map onto {name} as it is")
        sources[name] = (tensor, tensor.name)
    missing = [key for key in expected if key not in sources]
    if missing:
        raise StreamingNotPossible(f"{len(missing)} tensors are not stored one to one, the first {missing[0]}")
    return {key: sources[key] for key in expected}


def _write(sources, processor, out_dir: Path, task) -> None:
    import numpy as np
    import torch
    from gguf import dequantize

    from int8wb.engine.checkpoint.export import WEIGHTS_INDEX_NAME, parse_size, plan_shards, write_json
    from int8wb.engine.checkpoint.tensor_files import PlannedFiles

    specs = {
        name: torch.empty(tuple(int(n) for n in reversed(t.shape)), dtype=torch.float32, device="meta")
        for name, (t, _) in sources.items()
    }
    split = plan_shards(specs, parse_size(MAX_SHARD_SIZE))
    metadata = {"format": "pt"}
    files = PlannedFiles(out_dir, dict(split.filename_to_tensors), specs, metadata)
    parsed: dict[str, Any] = {"tensors": {}}  # where merging processors would collect; must stay empty
    for i, (name, (tensor, gguf_name)) in enumerate(sources.items()):
        task.check_cancelled()
        weights = dequantize(tensor.data, tensor.tensor_type)
        processed = processor.process(weights=weights, name=gguf_name, tensor_key_mapping={}, parsed_parameters=parsed)
        if parsed["tensors"]:
            raise StreamingNotPossible(f"the processor of {gguf_name} merges tensors")
        files.write(name, torch.from_numpy(np.copy(processed.weights)))
        task.progress((i + 1) / len(sources), f"converted {name}")
    files.close()
    if split.is_sharded:
        total = sum(t.numel() * 4 for t in specs.values())
        write_json(
            out_dir / WEIGHTS_INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": split.tensor_to_filename}
        )
