"""What one job may ask of a model: sequences no longer than its context, activations that fit in memory.

Both are checked before any work, so a request for 10^9 tokens or a window of a
million is a `BadInput` that says what fits, not an index error deep inside the
model or the kernel's out-of-memory killer. The activation estimate is a floor
(the largest tensors of one forward pass and the cached hidden states), not a
plan: a job that passes may still come close to the limit.
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


def check_fits(needed: int, device: str, what: str, advice: str) -> None:
    free = available_bytes(device)
    if free is not None and needed > free:
        raise BadInput(
            f"{what} needs at least {needed / 1e9:,.1f} GB of memory for activations, {free / 1e9:,.1f} GB "
            f"are free on {device}: {advice}"
        )


def check_scan(model, seq_len: int, batch_size: int, tokens: int, device: str) -> None:
    """A calibration scan keeps every token's hidden state, and runs `batch_size` sequences at a time."""
    check_sequence_length(model, seq_len, "a calibration sequence")
    config, element = getattr(model, "config", None), next(model.parameters()).element_size()
    hidden = getattr(config, "hidden_size", 0) or 0
    width = max(getattr(config, "intermediate_size", 0) or 0, hidden)
    heads = getattr(config, "num_attention_heads", 1) or 1
    cached = 2 * tokens * hidden * element  # inputs and outputs of the layer being scanned
    per_batch = batch_size * seq_len * (width * element + heads * seq_len * 4)
    check_fits(cached + per_batch, device, f"a scan of {tokens:,} tokens", "ask for fewer tokens or a smaller batch")


def check_evaluation(model, window: int, batch_size: int, device: str) -> None:
    """Perplexity computes the logits of every position of `batch_size` windows at once."""
    check_sequence_length(model, window, "an evaluation window")
    vocabulary = getattr(getattr(model, "config", None), "vocab_size", 0) or 0
    needed = LOGIT_COPIES * batch_size * window * vocabulary * 4
    check_fits(needed, device, f"evaluating windows of {window:,} tokens", "use a smaller window or batch")
