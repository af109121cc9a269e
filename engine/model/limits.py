"""What one job may ask of a model: sequences no longer than its context, buffers that fit in memory.

Both are checked before any work, so a request for 10^9 tokens, a window of a
million, a batch of 10^12 or a bandwidth copy of 3 TB is a `BadInput` that says
what fits, not an allocator's error deep inside the model or the kernel's
out-of-memory killer. Every size a request carries is counted: a scan's tokens,
sequence length and batch; an evaluation's window and batch; a sensitivity sweep's
tokens, window and batch; a decoding benchmark's copy, batch, prompt and new tokens.
The estimates are floors (the largest tensors a job holds at once), not plans: a
job that passes may still come close to the limit.
"""

from __future__ import annotations

from int8wb.engine.errors import BadInput

CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
LOGIT_COPIES = 3  # the logits, their float32 copy and the cross entropy's softmax


def context_length(model) -> int | None:
    """The longest sequence the model's config allows, if it says."""
    config = getattr(model, "config", None)
    for name in CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_sequence_length(model, length: int, what: str) -> None:
    limit = context_length(model)
    if limit is not None and length > limit:
        raise BadInput(f"{what} of {length:,} tokens is longer than the model's context of {limit:,} tokens")


def available_bytes(device: str) -> int | None:
    """Free memory of `device` (CUDA: the driver's count; CPU: the kernel's MemAvailable), None if unknown."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits(needed: int, device: str, what: str, advice: str, purpose: str = "activations") -> None:
    free = available_bytes(device)
    if free is not None and needed > free:
        raise BadInput(
            f"{what} needs at least {needed / 1e9:,.1f} GB of memory for {purpose}, {free / 1e9:,.1f} GB "
            f"are free on {device}: {advice}"
        )


def check_scan(model, seq_len: int, batch_size: int, tokens: int, device: str) -> None:
    """A calibration scan keeps every token's hidden state, and runs `batch_size` sequences at a time."""
    check_sequence_length(model, seq_len, "a calibration sequence")
    sizes, element = _shape(model)
    cached = 2 * tokens * sizes["hidden"] * element  # inputs and outputs of the layer being scanned
    per_batch = batch_size * seq_len * (sizes["width"] * element + sizes["heads"] * seq_len * 4)
    check_fits(cached + per_batch, device, f"a scan of {tokens:,} tokens", "ask for fewer tokens or a smaller batch")


def check_evaluation(model, window: int, batch_size: int, device: str) -> None:
    """Perplexity computes the logits of every position of `batch_size` windows at once."""
    check_sequence_length(model, window, "an evaluation window")
    needed = LOGIT_COPIES * batch_size * window * _shape(model)[0]["vocabulary"] * 4
    check_fits(needed, device, f"evaluating windows of {window:,} tokens", "use a smaller window or batch")


def _shape(model) -> tuple[dict[str, int], int]:
    """The config's sizes a job's buffers scale with (0 where the config does not say), and the weights' bytes
    per element."""
    config = getattr(model, "config", None)

    def size(name: str) -> int:
        value = getattr(config, name, 0)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

    hidden, heads = size("hidden_size"), size("num_attention_heads") or 1
    sizes = {
        "hidden": hidden,
        "width": max(size("intermediate_size"), hidden),
        "heads": heads,
        "kv_width": (size("num_key_value_heads") or heads) * (size("head_dim") or hidden // heads),
        "layers": size("num_hidden_layers"),
        "vocabulary": size("vocab_size"),
    }
    return sizes, next(model.parameters()).element_size()


def check_decode(model, device: str, batch: int, prompt_tokens: int, new_tokens: int, copy_bytes: int) -> None:
    """Timing greedy decoding copies two buffers of `copy_bytes` (on the embedding's device, before the models
    run), then holds per model the KV cache of `batch` sequences at their full length, the prompt's logits
    and the prefill's widest activations. Sequences are counted at most as long as the model's context
    (longer ones are refused once the prompt is tokenized)."""
    copy_device = str(next(model.parameters()).device)
    check_fits(
        2 * copy_bytes,
        copy_device,
        f"a bandwidth copy of {copy_bytes / 2**20:,.0f} MiB",
        "ask for a smaller copy_mib",
        "its two buffers",
    )
    sizes, element = _shape(model)
    limit = context_length(model)
    positions = prompt_tokens + new_tokens if limit is None else min(prompt_tokens + new_tokens, limit)
    prompt = min(prompt_tokens, positions)
    cache = 2 * sizes["layers"] * batch * positions * sizes["kv_width"] * element
    prefill = batch * prompt * (sizes["vocabulary"] * 4 + sizes["width"] * element + 8)
    attention = batch * sizes["heads"] * prompt * prompt * 4
    check_fits(
        cache + prefill + attention,
        device,
        f"decoding {batch:,} sequences of up to {positions:,} tokens",
        "ask for a smaller batch or fewer tokens",
        "its KV cache and activations",
    )


def check_sensitivity(model, tokens: int, window: int, batch_size: int, device: str) -> None:
    """The sensitivity sweep keeps, for its `tokens`, the float model's log-probabilities (float16) and every
    decoder layer's output of the float and of the quantized model (to replay them); each batch of
    `batch_size` windows adds its logits (as an evaluation's)."""
    check_sequence_length(model, window, "an evaluation window")
    sizes, element = _shape(model)
    kept = tokens * (sizes["vocabulary"] * 2 + 2 * sizes["layers"] * sizes["hidden"] * element)
    per_batch = LOGIT_COPIES * batch_size * window * sizes["vocabulary"] * 4
    check_fits(
        kept + per_batch,
        device,
        f"a sensitivity sweep over {tokens:,} tokens",
        "ask for fewer tokens or a smaller batch",
        "the log-probabilities and layer outputs it keeps",
    )
