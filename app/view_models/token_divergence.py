"""Where quantization hurts, token by token: the evaluation text with each method's KL divergence per token.

Built from the `token_detail` of the engine's `evaluate` reply (engine.measure.evaluate.token_view_data).
The text is the evaluation windows one after the other. The token at offset j > 0 of a window is the
one predicted at position (window, j - 1): its shade is the KL divergence of that prediction from the
float model's, and its hover text lists both models' top next tokens there. The first token of each
window is context only, with nothing predicted for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

WORST_SHOWN = 25  # tokens in the list of the worst
CONTEXT_TOKENS = 6  # tokens of text before a worst token, in the list
SATURATING_PERCENTILE = 99.0  # a KL at or above this percentile of the method's gets the full shade


@dataclass(frozen=True)
class Token:
    text: str
    position: int | None  # the prediction that produced this token; None for a window's first token


@dataclass(frozen=True)
class WorstToken:
    position: int
    index: int  # in `TokenDivergence.tokens()`
    kl: float
    label: str  # the token with some text before it


class TokenDivergence:
    """Per-token divergence of every evaluated model, and the text to show it on."""

    def __init__(self, detail: dict[str, Any]) -> None:
        token_ids = np.asarray(detail["token_ids"])
        self.windows, self.window = int(token_ids.shape[0]), int(token_ids.shape[1])
        self.token_ids = token_ids.reshape(-1)
        self.pieces = {int(i): str(text) for i, text in zip(np.asarray(detail["piece_ids"]), detail["pieces"])}
        self.reference_top = (np.asarray(detail["reference_top_ids"]), np.asarray(detail["reference_top_probs"]))
        self.methods = {
            name: {key: np.asarray(values) for key, values in arrays.items()}
            for name, arrays in detail["methods"].items()
        }

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> TokenDivergence | None:
        detail = result.get("token_detail")
        return None if not detail or not detail.get("methods") else cls(detail)

    def method_names(self) -> list[str]:
        """The compared models, the most divergent first (the float model itself, at 0, last)."""
        return sorted(self.methods, key=lambda name: -float(self.methods[name]["kl"].mean()))

    def piece(self, token_id: int) -> str:
        return self.pieces.get(int(token_id), f"<{int(token_id)}>")

    def tokens(self) -> list[Token]:
        """Every token of the evaluation text in order, with the position that predicted it."""
        tokens = []
        for index, token_id in enumerate(self.token_ids):
            window, offset = divmod(index, self.window)
            position = None if offset == 0 else window * (self.window - 1) + offset - 1
            tokens.append(Token(self.piece(token_id), position))
        return tokens

    def kl(self, method: str) -> np.ndarray:
        return self.methods[method]["kl"]

    def shades(self, method: str) -> list[float]:
        """Per token of `tokens()`, 0 (as the float model) to 1 (among the method's worst 1%); 0 for context."""
        kl = np.clip(self.kl(method), 0.0, None)
        scale = float(np.percentile(kl, SATURATING_PERCENTILE)) or float(kl.max()) or 1.0
        shade = np.clip(kl / scale, 0.0, 1.0)
        return [0.0 if token.position is None else float(shade[token.position]) for token in self.tokens()]

    def hover(self, method: str, position: int) -> str:
        """The KL at `position`, and the float model's and the method's top next tokens with probabilities."""
        arrays = self.methods[method]
        ids, probs = self.reference_top
        return "\n".join(
            [
                f"KL divergence {float(arrays['kl'][position]):.4f} nats; next token {self._quoted(self._next(position))}",
                "floating-point model: " + self._candidates(ids[position], probs[position]),
                f"{method}: " + self._candidates(arrays["top_ids"][position], arrays["top_probs"][position]),
            ]
        )

    def worst(self, method: str, count: int = WORST_SHOWN) -> list[WorstToken]:
        """The `count` tokens with the largest KL, largest first, each with the text just before it."""
        kl = self.kl(method)
        worst = []
        for position in np.argsort(-kl, kind="stable")[:count]:
            index = self._token_index(int(position))
            start = max(index - CONTEXT_TOKENS, index - index % self.window)
            before = "".join(self.piece(i) for i in self.token_ids[start:index])
            label = f"{float(kl[position]):.3f}  …{self._flat(before)}[{self._flat(self.piece(self.token_ids[index]))}]"
            worst.append(WorstToken(int(position), index, float(kl[position]), label))
        return worst

    def _token_index(self, position: int) -> int:
        window, offset = divmod(position, self.window - 1)
        return window * self.window + offset + 1

    def _next(self, position: int) -> int:
        return int(self.token_ids[self._token_index(position)])

    def _candidates(self, ids: np.ndarray, probs: np.ndarray) -> str:
        return ", ".join(f"{self._quoted(int(i))} {float(p):.1%}" for i, p in zip(ids, probs))

    def _quoted(self, token_id: int) -> str:
        return "“" + self._flat(self.piece(token_id)) + "”"

    @staticmethod
    def _flat(text: str) -> str:
        """A piece on one line: line breaks and tabs as visible marks."""
        return text.replace("\n", "⏎").replace("\t", "⇥")
