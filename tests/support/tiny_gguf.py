"""A tiny GGUF file, written with the `gguf` package: a real source for the loaders, small enough to patch byte by byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np

HIDDEN, LAYERS, VOCAB = 64, 2, 64


def write_tiny_gguf(path: Path, heads: int = 4, kv_heads: int = 2, inter: int = 128) -> Path:
    """A float32 Llama GGUF of 21 tensors (about 330 KB) with the metadata transformers reads."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HIDDEN // heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([chr(33 + i) for i in range(VOCAB)])
    writer.add_token_types([1] * VOCAB)
    writer.add_token_scores([0.0] * VOCAB)
    writer.add_token_merges([])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    rng = np.random.default_rng(0)
    kv = kv_heads * HIDDEN // heads

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))

    tensor("token_embd.weight", VOCAB, HIDDEN)
    for i in range(LAYERS):
        for name, shape in {
            "attn_norm": (HIDDEN,),
            "ffn_norm": (HIDDEN,),
            "attn_q": (HIDDEN, HIDDEN),
            "attn_k": (kv, HIDDEN),
            "attn_v": (kv, HIDDEN),
            "attn_output": (HIDDEN, HIDDEN),
            "ffn_gate": (inter, HIDDEN),
            "ffn_up": (inter, HIDDEN),
            "ffn_down": (HIDDEN, inter),
        }.items():
            tensor(f"blk.{i}.{name}.weight", *shape)
    tensor("output_norm.weight", HIDDEN)
    tensor("output.weight", VOCAB, HIDDEN)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
