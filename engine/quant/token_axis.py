"""The scan's token axis: the residual stream per decoder layer and token, and the massive activations in it.

LLM.int8()'s outliers are feature dimensions, large on most tokens. Massive activations (Sun et al.
2024, "Massive Activations in Large Language Models") are sharper: a few scalars of the residual stream,
on one or two tokens (the first token, a delimiter) and in one or two dimensions, thousands of times
the median, from an early layer on. The Linear inputs hide them: they are read after a normalisation.
So the scan also watches the residual stream itself, the hidden states between decoder layers before
any normalisation, with a forward pre-hook on every decoder layer (and a forward hook on the last):

- `ResidualStats.layer` i is the residual stream entering decoder layer i (0: the embeddings); one more,
  numbered by the count of layers, is what leaves the last layer, before the final norm. This is the
  numbering of transformers' `output_hidden_states` (whose last entry is normalised on some models).
- per calibration token: its largest |x| over the dimensions and the dimension that holds it,
- per dimension: its largest |x| over the tokens,
- the layer's median |x| (over the first calibration sequence: a median is steady and this keeps it cheap),
- for the tokens of the first calibration sequence (the one the window shows): their `PROFILE_DIMS`
  largest dimensions, the token's dimension profile where it matters.

`massive_activations` applies Sun et al.'s criterion (`MASSIVE_CRITERION`) to every token of every layer.
Tokens are numbered sequence-major: token t of the calibration is position t % seq_len of sequence
t // seq_len.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

MASSIVE_MIN_ABS = 100.0  # Sun et al.: a massive activation is over 100 in magnitude ...
MASSIVE_MIN_RATIO = 1000.0  # ... and about 1,000 times the median |x| of its layer
MASSIVE_CRITERION = (
    f"|x| > {MASSIVE_MIN_ABS:g} and > {MASSIVE_MIN_RATIO:,.0f}x the median |x| of its layer's residual stream "
    "(Sun et al. 2024, Massive Activations in Large Language Models)"
)
PROFILE_DIMS = 16  # the largest dimensions kept per token of the first sequence


@dataclass
class ResidualStats:
    """The residual stream entering one decoder layer (see the module docstring for the numbering)."""

    layer: int
    token_absmax: np.ndarray  # (sequences, seq_len) float32: each token's largest |x|
    token_argmax: np.ndarray  # (sequences, seq_len) int32: the dimension that holds it
    dim_absmax: np.ndarray  # (hidden,) float32: each dimension's largest |x| over all tokens
    median_abs: float  # median |x| over the first calibration sequence
    profile_dims: np.ndarray  # (seq_len, PROFILE_DIMS) int32: first sequence, largest dimensions first
    profile_values: np.ndarray  # (seq_len, PROFILE_DIMS) float32: their |x|

    @property
    def peak(self) -> float:
        return float(self.token_absmax.max()) if self.token_absmax.size else 0.0

    def to_payload(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _Running:
    """What the hooks gather for one layer's residual stream, batch by batch."""

    def __init__(self) -> None:
        self.token_max: list = []
        self.token_dim: list = []
        self.dim_max = None
        self.median = 0.0
        self.profile = None

    def observe(self, hidden) -> None:
        import torch

        from int8wb.kernels import ops

        hidden = hidden.detach()
        batch, seq_len, width = hidden.shape
        values = torch.empty(batch, seq_len, dtype=torch.float32, device=hidden.device)
        dims = torch.empty(batch, seq_len, dtype=torch.int32, device=hidden.device)
        if self.dim_max is None:
            self.dim_max = torch.zeros(width, dtype=torch.float32, device=hidden.device)
        ops.token_dim_absmax(hidden.reshape(-1, width), values.view(-1), dims.view(-1), self.dim_max)
        self.token_max.append(values)
        self.token_dim.append(dims)
        if self.profile is None:  # the first sequence: the layer's median and each token's largest dimensions
            self.median = ops.median_magnitude(hidden[0])
            first = hidden[0].abs().float()
            top = first.topk(min(PROFILE_DIMS, first.shape[-1]), dim=-1)
            self.profile = (top.indices.int(), top.values)

    def collect(self, layer: int) -> ResidualStats:
        """The statistics of every batch observed (the calibration has at least one)."""
        import torch

        dims, values = self.profile
        return ResidualStats(
            layer=layer,
            token_absmax=torch.cat(self.token_max).cpu().numpy(),
            token_argmax=torch.cat(self.token_dim).cpu().numpy(),
            dim_absmax=self.dim_max.cpu().numpy(),
            median_abs=self.median,
            profile_dims=dims.cpu().numpy(),
            profile_values=values.cpu().numpy(),
        )


class ResidualHooks:
    """Hooks on one decoder layer: the residual stream entering it, and, on the last layer, leaving it."""

    def __init__(self, block, index: int, last: bool) -> None:
        self.index, self.entering, self.leaving = index, _Running(), _Running() if last else None
        self.handles = [block.register_forward_pre_hook(self._before, with_kwargs=True)]
        if last:
            self.handles.append(block.register_forward_hook(self._after))

    def _before(self, module, args, kwargs) -> None:
        self.entering.observe(args[0] if args else kwargs["hidden_states"])

    def _after(self, module, args, output) -> None:
        self.leaving.observe(output[0] if isinstance(output, tuple) else output)

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def collect(self) -> list[ResidualStats]:
        """The layer's residual statistics: entering it, then (on the last layer) leaving it."""
        found = [self.entering.collect(self.index)]
        if self.leaving is not None:
            found.append(self.leaving.collect(self.index + 1))
        return found


def massive_activations(residual: list[ResidualStats], token_text: list[str], seq_len: int) -> list[dict[str, Any]]:
    """Every token of every layer whose largest |x| meets `MASSIVE_CRITERION`, largest first within a layer.

    Each entry: layer, sequence, position, token (its text), dim, value, ratio (to the layer's median |x|).
    A token is listed once per layer, with the dimension that holds its largest value.
    """
    found = []
    for stats in residual:
        if not stats.token_absmax.size or stats.median_abs <= 0:
            continue
        bound = max(MASSIVE_MIN_ABS, MASSIVE_MIN_RATIO * stats.median_abs)
        flat_values, flat_dims = stats.token_absmax.reshape(-1), stats.token_argmax.reshape(-1)
        hits = np.flatnonzero(flat_values > bound)
        for t in hits[np.argsort(-flat_values[hits], kind="stable")]:
            found.append(
                {
                    "layer": stats.layer,
                    "sequence": int(t // seq_len),
                    "position": int(t % seq_len),
                    "token": token_text[t] if t < len(token_text) else "",
                    "dim": int(flat_dims[t]),
                    "value": float(flat_values[t]),
                    "ratio": float(flat_values[t] / stats.median_abs),
                }
            )
    return found


def token_texts(tokenizer, batches: list) -> list[str]:
    """The text of every calibration token, one decode each, in the sequence-major order of the token axis."""
    return [tokenizer.decode([int(i)]) for batch in batches for i in batch.reshape(-1).tolist()]
