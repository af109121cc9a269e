"""The text that calibrates and evaluates a model.

The default text is Python's own `pydoc_data.topics` (English documentation
prose, shipped with every CPython, so nothing is downloaded). It is split
deterministically into a calibration part and an evaluation part that never
overlap: topics are sorted by key, and every fifth topic (keys 0, 5, 10, ...)
goes to calibration, the rest to evaluation. Interleaving keeps both parts
representative of the whole instead of taking the alphabet's first letters.

A user's UTF-8 text file serves instead: its first 20% of bytes (up to the next
whitespace) calibrate and the remaining 80% evaluate. A file is read only as
far as the tokens asked for, paragraph by paragraph: a corpus of any size costs
the memory of the text that is used.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from int8wb.engine.errors import BadInput

CALIBRATION_EVERY = 5
USER_CALIBRATION_FRACTION = 0.2
READ_CHUNK_BYTES = 1 << 20
PARAGRAPH_BREAK = "\n\n"


@dataclass(frozen=True)
class FileText:
    """Bytes [start, end) of a UTF-8 text file, read on demand."""

    path: Path
    start: int
    end: int

    def paragraphs(self) -> Iterator[str]:
        """The text split at blank lines, read a chunk at a time; `BadInput` where it is not UTF-8."""
        decoder = codecs.getincrementaldecoder("utf-8")()
        pending, position = "", self.start
        with open(self.path, "rb") as handle:
            handle.seek(self.start)
            while position < self.end:
                chunk = handle.read(min(READ_CHUNK_BYTES, self.end - position))
                if not chunk:
                    break
                try:
                    pending += decoder.decode(chunk, final=position + len(chunk) >= self.end)
                except UnicodeDecodeError as exc:
                    raise BadInput(
                        f"corpus file is not UTF-8 text: {self.path} ({exc.reason} at byte {position + exc.start})"
                    ) from exc
                position += len(chunk)
                *complete, pending = pending.split(PARAGRAPH_BREAK)
                yield from complete
        yield pending

    def read(self) -> str:
        return PARAGRAPH_BREAK.join(self.paragraphs())


@dataclass(frozen=True)
class CorpusSplit:
    """Two disjoint texts from one source."""

    source: str  # "pydoc_data.topics" or the file's path
    calibration: str | FileText
    evaluation: str | FileText


def default_split() -> CorpusSplit:
    """The pydoc topics, interleaved into calibration and evaluation parts."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    calibration = [topics[k] for i, k in enumerate(keys) if i % CALIBRATION_EVERY == 0]
    evaluation = [topics[k] for i, k in enumerate(keys) if i % CALIBRATION_EVERY != 0]
    return CorpusSplit("pydoc_data.topics", "\n\n".join(calibration), "\n\n".join(evaluation))


def file_split(path: str | Path) -> CorpusSplit:
    """A user's UTF-8 text file: the first 20% calibrates, the rest evaluates; only its start is read here."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"corpus file not found: {path}")
    size = path.stat().st_size
    head = FileText(path, 0, min(size, READ_CHUNK_BYTES))
    if size <= READ_CHUNK_BYTES and not head.read().strip():
        raise BadInput(f"corpus file is empty: {path}")
    next(head.paragraphs())  # a file that does not even start as UTF-8 is refused at once
    cut = _whitespace_at_or_after(path, int(size * USER_CALIBRATION_FRACTION), size)
    return CorpusSplit(str(path), FileText(path, 0, cut), FileText(path, cut, size))


def _whitespace_at_or_after(path: Path, offset: int, size: int) -> int:
    """The first byte offset >= `offset` holding ASCII whitespace (a character boundary in UTF-8), else `size`.

    Cutting there keeps every word on one side of the split.
    """
    with open(path, "rb") as handle:
        handle.seek(offset)
        while offset < size:
            chunk = handle.read(64 * 1024)
            if not chunk:
                break
            for i, byte in enumerate(chunk):
                if byte < 0x80 and chr(byte).isspace():
                    return offset + i
            offset += len(chunk)
    return size


def load_split(corpus: str | None) -> CorpusSplit:
    """`None` or "default" for the pydoc topics, otherwise a path to a text file."""
    if corpus in (None, "", "default"):
        return default_split()
    if not isinstance(corpus, (str, Path)):
        raise BadInput(f"corpus must be the path of a text file (or default), got {corpus!r}")
    return file_split(corpus)


def tokenize(tokenizer, text: str | FileText, max_tokens: int | None = None):
    """Token ids of `text` as a 1-D int64 tensor, cut to `max_tokens`.

    Long texts are tokenized in paragraphs so that the tokenizer never sees a
    string larger than it was built for, and a file is read no further than
    the paragraph that completes `max_tokens`; no special tokens are added.
    """
    import torch

    paragraphs = text.split(PARAGRAPH_BREAK) if isinstance(text, str) else text.paragraphs()
    ids: list[int] = []
    seen_text = False
    for paragraph in paragraphs:
        if max_tokens is not None and len(ids) >= max_tokens:
            break
        seen_text = seen_text or bool(paragraph.strip())
        ids.extend(tokenizer(paragraph + PARAGRAPH_BREAK, add_special_tokens=False)["input_ids"])
    if not seen_text:
        raise BadInput("the text to tokenize is empty")
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
