"""The one factory of tiny models for the tests: random Llamas in memory or saved as model directories.

`tiny_llama` builds one in memory; `save_tiny_llama` writes one as a Hugging Face directory with a byte-level
tokenizer (what `int8wb --model DIR` loads), `save_tiny` a Llama, Qwen2 or Gemma 3 one (for the export formats); `tiny_loaded` plants an outlier dimension. Planting: scale dimension `dim` of every `input_layernorm` weight by `factor`
and divide column `dim` of the q/k/v weights that read it by the same factor.
The floating-point model computes exactly the same function (up to float
rounding), but the attention input now carries a feature that is `factor`
times larger than the rest, in the same dimension on every token: the shape
of the problem LLM.int8() solves.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TinyLoaded:
    """Stands where engine.model.loaded.LoadedModel stands, for a model built in memory."""

    model: object
    tokenizer: object
    name: str = "tiny-llama"
    device: str = "cpu"
    dtype: str = "float32"


class WordTokenizer:
    """Maps each byte of the text to a token id: enough for corpus.tokenize on a tiny model."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def __call__(self, text: str, add_special_tokens: bool = False):
        return {"input_ids": [b % self.vocab_size for b in text.encode("utf-8")]}

    def decode(self, ids) -> str:
        """Token ids back to text, one byte each (ids of a vocabulary over 256 wrap)."""
        return bytes(int(i) % 256 for i in ids).decode("utf-8", errors="replace")


def tiny_llama(
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    vocab: int = 256,
    intermediate: int | None = None,
    heads: int = 4,
    kv_heads: int = 2,
    tie: bool = True,
    **config,
):
    """A random LlamaForCausalLM in eval mode without gradients; `config` adds LlamaConfig fields."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        **config,
    )
    model = LlamaForCausalLM(config).eval()
    model.requires_grad_(False)
    return model


def byte_tokenizer():
    """A byte-level tokenizer with no merges: every byte is a token, saved and re-read like a real one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|eos|>")


def save_tiny_llama(path, seed: int = 0, tie: bool = True, random_biases: bool = False, max_shard_size=None, **shape):
    """A tiny Llama saved as a Hugging Face model directory (safetensors, config, tokenizer); returns the path.

    `random_biases` adds attention biases drawn at random: zero biases would not tell a copied bias from a
    missing one. `shape` takes `tiny_llama`'s size arguments.
    """
    import torch
    from transformers import GenerationConfig

    tokenizer = byte_tokenizer()
    extra = {"attention_bias": True} if random_biases else {}
    model = tiny_llama(seed, vocab=len(tokenizer), tie=tie, eos_token_id=tokenizer.eos_token_id, **extra, **shape)
    if random_biases:
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("bias"):
                    param.normal_(0.0, 0.02)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    tokenizer.save_pretrained(path)
    GenerationConfig(eos_token_id=tokenizer.eos_token_id, max_new_tokens=8).save_pretrained(path)
    return path


def plant_outlier(model, dim: int, factor: float) -> None:
    """Scale `dim` of each attention input by `factor`, compensated in q/k/v: same function, new outlier."""
    import torch

    with torch.no_grad():
        for block in model.model.layers:
            block.input_layernorm.weight[dim] *= factor
            for proj in (block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj):
                proj.weight[:, dim] /= factor


def tiny_loaded(dim: int = 5, factor: float = 60.0, seed: int = 0) -> TinyLoaded:
    model = tiny_llama(seed)
    plant_outlier(model, dim, factor)
    return TinyLoaded(model, WordTokenizer(model.config.vocab_size))


def save_tiny(path, architecture: str = "llama", seed: int = 0):
    """A random 2-layer model of `architecture` (llama, qwen2, gemma3) saved with its tokenizer at `path`."""
    import torch
    import transformers

    classes = {
        "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
        "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 16, "sliding_window": 16}),
    }
    config_class, model_class, extra = classes[architecture]
    torch.manual_seed(seed)
    tokenizer = byte_tokenizer()
    config = getattr(transformers, config_class)(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )
    getattr(transformers, model_class)(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
