"""The one factory of tiny models for the tests: random models in memory or saved as model directories.

`tiny_llama` builds one in memory; `save_tiny_llama` writes one as a Hugging Face directory with a byte-level
tokenizer (what `int8wb --model DIR` loads); `tiny_model` and `save_tiny` do so for every other architecture
family the workbench takes (ARCHITECTURES, and Qwen2, Gemma 3 for the serving exports); `tiny_loaded` plants an
outlier dimension. Planting: scale dimension `dim` of every `input_layernorm` weight by `factor`
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


def save_tiny_llama(
    path,
    seed: int = 0,
    tie: bool = True,
    random_biases: bool = False,
    max_shard_size=None,
    dtype: str | None = None,
    outlier_dim: int | None = None,
    **shape,
):
    """A tiny Llama saved as a Hugging Face model directory (safetensors, config, tokenizer); returns the path.

    `random_biases` adds attention biases drawn at random: zero biases would not tell a copied bias from a
    missing one. `dtype` stores the weights in that dtype; `outlier_dim` is planted in every attention
    input (`plant_outlier`). `shape` takes `tiny_llama`'s size arguments.
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
    if outlier_dim is not None:
        plant_outlier(model, outlier_dim, 60.0)
    if dtype is not None:
        model.to(getattr(torch, dtype))
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


# --- every architecture family, as a user would bring it: a saved model directory ------------------------

ARCHITECTURES = ("opt", "gpt2", "mistral", "phi3", "gpt_neox", "falcon", "bloom", "qwen3_moe", "mixtral_list")
"""Families the workbench must quantize whole; `mixtral_list` holds its experts as a ModuleList of Linears.
`gpt_oss` (transposed, biased experts with their own gating) is built too: the workbench does not support
its experts and must say so."""

LIST_MOE_TYPE = "int8wb-list-moe"
HIDDEN = 64


def tiny_config(family: str, vocab_size: int, eos_token_id: int):
    """A two-layer config of `family`, hidden size 64, from transformers' own config class."""
    import transformers as hf

    common = {"vocab_size": vocab_size, "bos_token_id": eos_token_id, "eos_token_id": eos_token_id}
    llama_like = {
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
    }
    moe = {"num_experts_per_tok": 2, "intermediate_size": HIDDEN // 2}
    tied = {**llama_like, "tie_word_embeddings": True, "eos_token_id": eos_token_id, "vocab_size": vocab_size}
    del tied["max_position_embeddings"]
    configs = {
        "llama": lambda: hf.LlamaConfig(**tied),
        "qwen2": lambda: hf.Qwen2Config(**tied),
        "gemma3": lambda: hf.Gemma3TextConfig(**tied, head_dim=16, sliding_window=16),
        "opt": lambda: hf.OPTConfig(
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            ffn_dim=2 * HIDDEN,
            num_attention_heads=4,
            max_position_embeddings=256,
            word_embed_proj_dim=HIDDEN,
            pad_token_id=eos_token_id,
            **common,
        ),
        "gpt2": lambda: hf.GPT2Config(n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=256, **common),
        "mistral": lambda: hf.MistralConfig(**llama_like, **common),
        "phi3": lambda: hf.Phi3Config(**llama_like, pad_token_id=eos_token_id, **common),
        "gpt_neox": lambda: hf.GPTNeoXConfig(
            hidden_size=HIDDEN,
            intermediate_size=2 * HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=256,
            **common,
        ),
        "falcon": lambda: hf.FalconConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, **common),
        "bloom": lambda: hf.BloomConfig(hidden_size=HIDDEN, n_layer=2, n_head=4, **common),
        "qwen3_moe": lambda: hf.Qwen3MoeConfig(
            **{**llama_like, "head_dim": 16},
            num_experts=4,
            moe_intermediate_size=HIDDEN // 2,
            num_experts_per_tok=2,
            **common,
        ),
        "mixtral_list": lambda: ListMoeConfig(**{**llama_like, **moe}, num_local_experts=4, **common),
        "gpt_oss": lambda: hf.GptOssConfig(
            **{**llama_like, **moe, "head_dim": 16}, num_local_experts=4, pad_token_id=eos_token_id, **common
        ),
    }
    return configs[family]()


def tiny_model(family: str, vocab_size: int = 257, eos_token_id: int = 256, seed: int = 0):
    """A random model of `family` (see ARCHITECTURES), in eval mode, without gradients."""
    import torch
    from transformers import AutoModelForCausalLM

    register_list_moe()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, vocab_size, eos_token_id)).eval()
    model.requires_grad_(False)
    return model


def save_tiny(path, architecture: str = "llama", seed: int = 0, outlier: tuple[int, float] | None = None):
    """A random 2-layer model of `architecture` (llama, qwen2, gemma3 or one of ARCHITECTURES) saved with the
    byte tokenizer at `path`; `outlier` (dim, factor) plants one first (`plant_norm_outlier`)."""
    tokenizer = byte_tokenizer()
    model = tiny_model(architecture, len(tokenizer), tokenizer.eos_token_id, seed)
    if outlier is not None:
        plant_norm_outlier(model, *outlier)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def read_tensors(directory):
    """Every tensor of every safetensors file in `directory`, by name."""
    from pathlib import Path

    from safetensors import safe_open

    tensors = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            tensors.update({key: handle.get_tensor(key) for key in handle.keys()})
    return tensors


def plant_norm_outlier(model, dim: int, factor: float) -> None:
    """A large norm weight in `dim`, compensated in the weights that read it: same function, a new outlier.

    GPT-2: the attention's LayerNorm (weight and bias) and the rows of c_attn's
    (in, out) Conv1D weight. Qwen3-MoE: the MLP's RMSNorm, the router's and every
    expert's gate_up columns (experts fused as (E, 2I, H)).
    """
    import torch

    with torch.no_grad():
        for block in model.transformer.h if hasattr(model, "transformer") else model.model.layers:
            if hasattr(block, "ln_1"):
                block.ln_1.weight[dim] *= factor
                block.ln_1.bias[dim] *= factor
                block.attn.c_attn.weight[dim, :] /= factor
            else:
                block.post_attention_layernorm.weight[dim] *= factor
                block.mlp.gate.weight[:, dim] /= factor
                block.mlp.experts.gate_up_proj[:, :, dim] /= factor


# --- a mixture of experts held as a ModuleList of Linears (Mixtral before transformers 5, remote-code MoEs) ---


def register_list_moe() -> None:
    """Make `int8wb-list-moe` known to transformers' Auto classes (once per process)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoConfig.register(LIST_MOE_TYPE, ListMoeConfig, exist_ok=True)
    AutoModelForCausalLM.register(ListMoeConfig, ListMoeForCausalLM, exist_ok=True)


def _list_moe_classes():
    import torch
    import torch.nn as nn
    from transformers import MixtralConfig, MixtralForCausalLM
    from transformers.activations import ACT2FN

    class ListMoeConfig(MixtralConfig):
        model_type = LIST_MOE_TYPE

    class ListExpert(nn.Module):
        """Mixtral's expert as transformers 4 held it: w1 (gate), w3 (up), w2 (down)."""

        def __init__(self, config) -> None:
            super().__init__()
            self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
            self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
            self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
            self.act_fn = ACT2FN[config.hidden_act]

        def forward(self, x):
            return self.w2(self.act_fn(self.w1(x)) * self.w3(x))

    class ListMoeBlock(nn.Module):
        """Top-k routing over a ModuleList of experts, with an nn.Linear router (`gate`)."""

        def __init__(self, config) -> None:
            super().__init__()
            self.top_k = config.num_experts_per_tok
            self.gate = nn.Linear(config.hidden_size, config.num_local_experts, bias=False)
            self.experts = nn.ModuleList(ListExpert(config) for _ in range(config.num_local_experts))

        def forward(self, hidden_states):
            shape = hidden_states.shape
            x = hidden_states.reshape(-1, shape[-1])  # (T, hidden)
            weights = torch.softmax(self.gate(x), dim=-1, dtype=torch.float)
            weights, chosen = torch.topk(weights, self.top_k, dim=-1)  # (T, k)
            weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
            out = torch.zeros_like(x)
            for index, expert in enumerate(self.experts):
                token, slot = torch.where(chosen == index)
                if token.numel():
                    out.index_add_(0, token, expert(x[token]) * weights[token, slot, None])
            return out.reshape(shape)

    class ListMoeForCausalLM(MixtralForCausalLM):
        config_class = ListMoeConfig

        def __init__(self, config) -> None:
            super().__init__(config)
            for layer in self.model.layers:
                layer.mlp = ListMoeBlock(config)
            self.post_init()

    return ListMoeConfig, ListMoeForCausalLM


ListMoeConfig, ListMoeForCausalLM = _list_moe_classes()
