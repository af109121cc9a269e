"""Measured decoding (the engine's `bench_decode` result) as the results table and the text tab show it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RUN_DECODE_PARAMS = {"new_tokens": 17, "repeats": 1}
"""What a Run measures after the evaluation: the 16 tokens shown after the first, each a timed decode step,
once per model (seconds on a CPU); `int8wb bench-decode` takes more tokens and the median of several runs."""


@dataclass(frozen=True)
class Generated:
    """One model's measured decoding: its speed, its bound, and the first tokens it wrote."""

    method: str
    tokens_per_s: float
    bound_tokens_per_s: float
    text: str
    diverges_at: int | None  # first generated token that is not the first row's; None when all agree

    @property
    def differs_text(self) -> str:
        return "same as the first row" if self.diverges_at is None else f"from token {self.diverges_at + 1}"


@dataclass(frozen=True)
class DecodeRun:
    """A whole `bench_decode` result: a caption, the prompt, one `Generated` per model (first row first)."""

    caption: str
    prompt: str
    rows: tuple[Generated, ...]

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> DecodeRun:
        settings, copy = result.get("settings", {}), result.get("copy_bandwidth", {})
        caption = (
            f"Greedy decoding with the KV cache: {settings.get('new_tokens')} tokens after a "
            f"{settings.get('prompt_tokens')}-token prompt, batch {settings.get('batch')}, "
            f"{settings.get('device')} {settings.get('dtype')}. A {copy.get('bytes', 0) / 2**20:,.0f} MiB copy "
            f"moved {copy.get('bytes_per_s', 0) / 1e9:,.1f} GB/s (read + write) in the same run; a method's bound "
            "is that bandwidth over the bytes it reads per token, as planned. "
            f"Below: the first {settings.get('shown_tokens')} generated tokens."
        )
        rows = tuple(
            Generated(
                str(row["method"]),
                float(row["tokens_per_s"]),
                float(row["bound_tokens_per_s"]),
                str(row.get("text", "")),
                row.get("diverges_at"),
            )
            for row in result.get("rows", [])
        )
        return cls(caption, str(result.get("prompt", "")), rows)
