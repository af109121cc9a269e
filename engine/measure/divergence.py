"""How far a model's next-token predictions move from the floating-point model's, position by position.

The float model's predictions are kept as a `Reference`: per predicted position, its top-k
log-probabilities with their token ids, the log-probability of the token that comes next in the text,
and (implicitly) the remaining mass 1 - sum(top-k).

When the float model runs in the same evaluation as the models compared with it, the KL divergence
KL(float || model) is exact: both models' whole log-softmaxes of the same positions side by side
(`exact_kl`), one evaluation batch at a time, so the float model's logits are never all held. The
reference then needs only the top `SHOWN_TOP` for the token view, or the top `TOP_K` when it is saved.

Against a saved reference file (no float model loaded), the KL comes from the top k plus the remaining
mass of each, p_rest (log p_rest - log q_rest) (`top_k_kl`): a lower bound of the exact value
(log-sum inequality) that is within 1% of it at `TOP_K` on the default model (docs/divergence.md has
the measurement). The file needs k + 1 numbers per position instead of the vocabulary's.

A `Comparison` takes a model's log-softmax chunk by chunk in position order, in the same pass as its
perplexity, and summarises what llama.cpp's `--kl-divergence` reports: mean KL with its median,
99th, 99.9th percentile and maximum; how often the model's top token is the float model's; the RMS
change of the correct token's probability; the perplexity change with a 95% interval from the
per-token log-likelihood differences (paired, so far tighter than two separate intervals).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TOP_K = 4096  # log-probabilities per position in a saved reference (docs/divergence.md: KL within 1% of exact)
SHOWN_TOP = 5  # next-token candidates kept per position for the token view
REST_FLOOR = 1e-6  # below this, 1 - sum(top-k probabilities) is float32 rounding
Z_95 = 1.959964  # two-sided 95% quantile of the normal distribution


@dataclass
class Reference:
    """The float model's predictions on the evaluation tokens; `positions` rows, filled in position order."""

    token_ids: np.ndarray  # (windows, window) int64: the evaluation tokens
    top_ids: np.ndarray  # (positions, k) int32, most probable first
    top_logprobs: np.ndarray  # (positions, k) float32
    target_logprobs: np.ndarray  # (positions,) float32: log p(the token that comes next)
    tokenizer: dict  # engine.measure.reference.tokenizer_identity of the tokenizer that made the tokens
    model: str  # the model whose predictions these are
    corpus: str

    @classmethod
    def empty(cls, token_ids: np.ndarray, k: int, tokenizer: dict, model: str, corpus: str) -> Reference:
        positions = token_ids.shape[0] * (token_ids.shape[1] - 1)
        return cls(
            token_ids=np.asarray(token_ids, dtype=np.int64),
            top_ids=np.zeros((positions, k), dtype=np.int32),
            top_logprobs=np.zeros((positions, k), dtype=np.float32),
            target_logprobs=np.zeros(positions, dtype=np.float32),
            tokenizer=tokenizer,
            model=model,
            corpus=corpus,
        )

    @property
    def positions(self) -> int:
        return int(self.target_logprobs.shape[0])

    @property
    def k(self) -> int:
        return int(self.top_ids.shape[1])

    def fill(self, start: int, logprobs, targets) -> None:
        """Rows `start`.. from the float model's log-softmax (chunk, V) and the next tokens (chunk,)."""
        import torch

        values, ids = logprobs.topk(self.k, dim=-1)
        end = start + logprobs.shape[0]
        self.top_ids[start:end] = ids.to(torch.int32).cpu().numpy()
        self.top_logprobs[start:end] = values.cpu().numpy()
        self.target_logprobs[start:end] = logprobs.gather(1, targets[:, None])[:, 0].cpu().numpy()

    def perplexity(self) -> float:
        return math.exp(-float(self.target_logprobs.astype(np.float64).mean()))


def top_k_kl(logprobs, ref_ids, ref_logprobs):
    """KL(reference || model) per row from the reference's top k and remaining mass (see the module).

    Remaining masses below `REST_FLOOR` (float32 rounding of a sum of probabilities) count as the floor,
    so that with the whole vocabulary in the top k the result is the exact KL rather than rounding noise.
    """
    p = ref_logprobs.exp()
    q_log = logprobs.gather(1, ref_ids.long())
    head = (p * (ref_logprobs - q_log)).sum(-1)
    p_rest = (1.0 - p.sum(-1)).clamp_min(0.0)
    q_rest = 1.0 - q_log.exp().sum(-1)
    return head + p_rest * (p_rest.clamp_min(REST_FLOOR).log() - q_rest.clamp_min(REST_FLOOR).log())


def exact_kl(reference_logprobs, logprobs):
    """KL(reference || model) per row from both full log-softmaxes (chunk, V): what `top_k_kl` approximates."""
    return (reference_logprobs.exp() * (reference_logprobs - logprobs)).sum(-1)


class Comparison:
    """One model's predictions against a `Reference`, fed chunk by chunk in position order.

    `exact`: every chunk comes with the float model's whole log-softmax at the same positions, and the KL
    is `exact_kl`; otherwise it is `top_k_kl` from the reference's top k (a reference file).
    """

    def __init__(self, reference: Reference, exact: bool = False) -> None:
        n = reference.positions
        self.reference, self.exact = reference, exact
        self.kl = np.zeros(n, dtype=np.float32)
        self.same_top = np.zeros(n, dtype=bool)
        self.target_logprobs = np.zeros(n, dtype=np.float32)
        self.top_ids = np.zeros((n, SHOWN_TOP), dtype=np.int32)
        self.top_probs = np.zeros((n, SHOWN_TOP), dtype=np.float32)
        self.filled = 0

    def add(self, logprobs, targets, reference_logprobs=None) -> None:
        """The model's log-softmax (chunk, V) at the next positions and the tokens that come next (chunk,);
        for an exact comparison, the float model's log-softmax (chunk, V) at the same positions."""
        import torch

        start, end = self.filled, self.filled + logprobs.shape[0]
        if end > self.reference.positions:
            raise ValueError(f"{end} positions compared, the reference has {self.reference.positions}")
        if self.exact != (reference_logprobs is not None):
            raise ValueError("an exact comparison takes the float model's log-softmax with every chunk, no other does")
        ref_ids = torch.from_numpy(self.reference.top_ids[start:end]).to(logprobs.device)
        if self.exact:
            kl = exact_kl(reference_logprobs, logprobs)
        else:
            ref_logprobs = torch.from_numpy(self.reference.top_logprobs[start:end]).to(logprobs.device)
            kl = top_k_kl(logprobs, ref_ids, ref_logprobs)
        self.kl[start:end] = kl.cpu().numpy()
        values, ids = logprobs.topk(SHOWN_TOP, dim=-1)
        self.same_top[start:end] = (ids[:, 0] == ref_ids[:, 0]).cpu().numpy()
        self.top_ids[start:end] = ids.to(torch.int32).cpu().numpy()
        self.top_probs[start:end] = values.exp().cpu().numpy()
        self.target_logprobs[start:end] = logprobs.gather(1, targets[:, None])[:, 0].cpu().numpy()
        self.filled = end

    def add_itself(self, count: int) -> None:
        """The next `count` positions of the model that filled the reference: no divergence from itself, its top
        tokens those the reference just kept. Nothing as wide as the vocabulary is computed again."""
        start, end = self.filled, self.filled + count
        if end > self.reference.positions:
            raise ValueError(f"{end} positions compared, the reference has {self.reference.positions}")
        self.kl[start:end] = 0.0
        self.same_top[start:end] = True
        self.top_ids[start:end] = self.reference.top_ids[start:end, :SHOWN_TOP]
        self.top_probs[start:end] = np.exp(self.reference.top_logprobs[start:end, :SHOWN_TOP])
        self.target_logprobs[start:end] = self.reference.target_logprobs[start:end]
        self.filled = end

    def summary(self) -> dict[str, float]:
        """The row's divergence numbers (see the module docstring); `change` is the perplexity's relative change."""
        n = self.filled
        kl = self.kl[:n].astype(np.float64)
        # Per-token NLL differences (model - reference): their mean is log(ppl / reference ppl).
        diff = self.reference.target_logprobs[:n].astype(np.float64) - self.target_logprobs[:n]
        mean = float(diff.mean())
        half = Z_95 * float(diff.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
        dp = np.exp(self.target_logprobs[:n].astype(np.float64)) - np.exp(self.reference.target_logprobs[:n])
        return {
            "kl_mean": float(kl.mean()),
            "kl_median": float(np.percentile(kl, 50)),
            "kl_p99": float(np.percentile(kl, 99)),
            "kl_p999": float(np.percentile(kl, 99.9)),
            "kl_max": float(kl.max()),
            "same_top": float(self.same_top[:n].mean()),
            "rms_dp": float(np.sqrt((dp**2).mean())),
            "relative_change": _expm1(mean),
            "change_low": _expm1(mean - half),
            "change_high": _expm1(mean + half),
        }

    def detail(self) -> dict[str, np.ndarray]:
        """Per position, for the token view: KL, and the model's top next tokens with their probabilities."""
        return {"kl": self.kl, "top_ids": self.top_ids, "top_probs": self.top_probs}


def _expm1(x: float) -> float:
    return math.expm1(x) if x < 700 else float("inf")
