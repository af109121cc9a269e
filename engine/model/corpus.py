"""The text that calibrates and evaluates a model.

The default text is Python's own `pydoc_data.topics` (English documentation
prose, shipped with every CPython, so nothing is downloaded). It is split
deterministically into a calibration part and an evaluation part that never
overlap: topics are sorted by key, and every fifth topic (keys 0, 5, 10, ...)
goes to calibration, the rest to evaluation. Interleaving keeps both parts
representative of the whole instead of taking the alphabet's first letters.

A user's UTF-8 text file serves instead: its first 20% of characters calibrate
and the remaining 80% evaluate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.errors import BadInput

CALIBRATION_EVERY = 5
USER_CALIBRATION_FRACTION = 0.2


@dataclass(frozen=True)
class CorpusSplit:
    """Two disjoint texts from one source."""

    source: str  # "pydoc_data.topics" or the file's path
    calibration: str
    evaluation: str


def default_split() -> CorpusSplit:
    """The pydoc topics, interleaved into calibration and evaluation parts."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    calibration = [topics[k] for i, k in enumerate(keys) if i % CALIBRATION_EVERY == 0]
    evaluation = [topics[k] for i, k in enumerate(keys) if i % CALIBRATION_EVERY != 0]
    return CorpusSplit("pydoc_data.topics", "\n\n".join(calibration), "\n\n".join(evaluation))


def file_split(path: str | Path) -> CorpusSplit:
    """A user's UTF-8 text file: the first 20% calibrates, the rest evaluates."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"corpus file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"corpus file is not UTF-8 text: {path} ({exc.reason} at byte {exc.start})") from exc
    if not text.strip():
        raise BadInput(f"corpus file is empty: {path}")
    cut = int(len(text) * USER_CALIBRATION_FRACTION)
    # Cut at a whitespace so no word is split between the two parts.
    while 0 < cut < len(text) and not text[cut].isspace():
        cut += 1
    return CorpusSplit(str(path), text[:cut], text[cut:])


def load_split(corpus: str | None) -> CorpusSplit:
    """`None` or "default" for the pydoc topics, otherwise a path to a text file."""
    if corpus in (None, "", "default"):
        return default_split()
    return file_split(corpus)


def tokenize(tokenizer, text: str, max_tokens: int | None = None):
    """Token ids of `text` as a 1-D int64 tensor, cut to `max_tokens`.

    Long texts are tokenized in paragraphs so that the tokenizer never sees a
    string larger than it was built for; no special tokens are added.
    """
    import torch

    if not text.strip():
        raise BadInput("the text to tokenize is empty")
    ids: list[int] = []
    for paragraph in text.split("\n\n"):
        if max_tokens is not None and len(ids) >= max_tokens:
            break
        ids.extend(tokenizer(paragraph + "\n\n", add_special_tokens=False)["input_ids"])
    if max_tokens is not None:
        ids = ids[:max_tokens]
    return torch.tensor(ids, dtype=torch.long)


def windows(token_ids, window: int, max_tokens: int):
    """Non-overlapping windows (n, window) from the first `max_tokens` tokens; drops a short tail."""
    if window <= 1:
        raise BadInput(f"window must be at least 2 tokens, got {window}")
    n = min(len(token_ids), max_tokens) // window
    if n == 0:
        raise BadInput(
            f"not enough tokens for one window of {window}: the text has {len(token_ids)} tokens, "
            f"the budget is {max_tokens}"
        )
    return token_ids[: n * window].reshape(n, window)
