"""The text that calibrates and evaluates a model.

The default text is Python's own `pydoc_data.topics` (English documentation
prose, shipped with every CPython, so nothing is downloaded). It is split
deterministically into a calibration part and an evaluation part that never
overlap: topics are sorted by key, and every fifth topic (keys 0, 5, 10, ...)
goes to calibration, the rest to evaluation. Interleaving keeps both parts
representative of the whole instead of taking the alphabet's first letters.

A user's UTF-8 text file serves instead: its first 20% of bytes (up to the next
whitespace) calibrate and the remaining 80% evaluate. A file is read only as
far as the tokens asked for, in pieces of at most PIECE_CHARS characters cut at
blank lines or whitespace: a corpus of any size, with or without line breaks,
costs the memory and time of the text that is used.
"""

from __future__ import annotations

import codecs
import errno
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from int8wb.engine.errors import BadInput

CALIBRATION_EVERY = 5
USER_CALIBRATION_FRACTION = 0.2
READ_CHUNK_BYTES = 1 << 20
PARAGRAPH_BREAK = "\n\n"
# The most text the tokenizer is handed at once: a paragraph longer than this (a file without blank
# lines) is cut at its last whitespace before the limit, or at the limit where it has none.
PIECE_CHARS = 1 << 14
# How far past the 20% mark the cut between calibration and evaluation looks for whitespace.
WHITESPACE_SEARCH_BYTES = 1 << 20
ASCII_WHITESPACE = re.compile(rb"[\t-\r\x1c-\x20]")  # the bytes < 0x80 that str.isspace() calls whitespace


@dataclass(frozen=True)
class FileText:
    """Bytes [start, end) of a UTF-8 text file, read on demand."""

    path: Path
    start: int
    end: int

    def pieces(self, task=None) -> Iterator[str]:
        """The text in pieces (`text_pieces`), read a chunk at a time; `BadInput` where it is not UTF-8.

        Reading stops when the caller stops asking, so only the text used is read; `task` (an
        engine.task.Task) is asked for cancellation before each chunk.
        """
        return text_pieces(self._chunks(task))

    def _chunks(self, task) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")()
        position = self.start
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.start)
                while position < self.end:
                    if task is not None:
                        task.check_cancelled()
                    chunk = handle.read(min(READ_CHUNK_BYTES, self.end - position))
                    if not chunk:
                        break
                    try:
                        yield decoder.decode(chunk, final=position + len(chunk) >= self.end)
                    except UnicodeDecodeError as exc:
                        raise BadInput(
                            f"corpus file is not UTF-8 text: {self.path} ({exc.reason} at byte {position + exc.start})"
                        ) from exc
                    position += len(chunk)
        except OSError as exc:
            raise BadInput(f"cannot read the corpus file {self.path}: {exc.strerror}") from exc

    def read(self) -> str:
        return "".join(self.pieces())


def text_pieces(chunks: Iterable[str]) -> Iterator[str]:
    """The text that `chunks` spell, in consecutive pieces that join back into it, none over PIECE_CHARS.

    A piece ends just after a blank line (a paragraph) where one comes within PIECE_CHARS, else
    just before the last whitespace within PIECE_CHARS (so that a word starts the next piece with
    the space the tokenizer attaches to it), else at PIECE_CHARS. Each piece is found in a window
    of PIECE_CHARS, so the time is linear and the memory bounded whatever the line breaks.
    """
    pending = ""
    for chunk in chunks:
        pending += chunk
        start = 0
        while len(pending) - start > 0:
            brk = pending.find(PARAGRAPH_BREAK, start, start + PIECE_CHARS)
            if brk >= 0:
                end = brk + len(PARAGRAPH_BREAK)
            elif len(pending) - start > PIECE_CHARS:
                space = max(pending.rfind(c, start + 1, start + PIECE_CHARS) for c in " \n\t\r")
                end = space if space > start else start + PIECE_CHARS
            else:
                break  # too short to cut yet: wait for more text
            yield pending[start:end]
            start = end
        pending = pending[start:]
    if pending:
        yield pending


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
    size = _regular_file_size(path)
    whole = FileText(path, 0, size)
    if size <= READ_CHUNK_BYTES:
        if not whole.read().strip():
            raise BadInput(f"corpus file is empty: {path}")
    else:
        next(whole.pieces())  # decodes the first chunk: a file that does not start as UTF-8 is refused at once
    cut = _cut_near(path, int(size * USER_CALIBRATION_FRACTION), size)
    return CorpusSplit(str(path), FileText(path, 0, cut), FileText(path, cut, size))


def _regular_file_size(path: Path) -> int:
    """The size of `path`; `BadInput` that says what it is when it is not a regular file that exists."""
    try:
        info = path.stat()
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise BadInput(f"corpus path is too long for the file system ({len(str(path)):,} characters)") from exc
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise BadInput(f"corpus file not found: {path}") from exc
        raise BadInput(f"cannot read the corpus file {path}: {exc.strerror}") from exc
    if stat.S_ISDIR(info.st_mode):
        raise BadInput(f"corpus {path} is a directory: give a UTF-8 text file")
    if not stat.S_ISREG(info.st_mode):
        raise BadInput(f"corpus {path} is not a regular file (a device, pipe or socket): give a UTF-8 text file")
    return info.st_size


def _cut_near(path: Path, offset: int, size: int) -> int:
    """Where calibration ends: the first ASCII whitespace at or after `offset` (a character boundary in UTF-8,
    which keeps every word on one side), looked for within WHITESPACE_SEARCH_BYTES; the end of the file if it
    comes first; else the first character boundary at or after `offset`, since text that long without
    whitespace has no words to keep whole.
    """
    with open(path, "rb") as handle:
        handle.seek(offset)
        window = handle.read(min(WHITESPACE_SEARCH_BYTES, size - offset))
    match = ASCII_WHITESPACE.search(window)
    if match:
        return offset + match.start()
    if offset + len(window) >= size:
        return size
    continuation = next((i for i, byte in enumerate(window[:4]) if byte & 0xC0 != 0x80), 0)
    return offset + continuation


def load_split(corpus: str | None) -> CorpusSplit:
    """`None` or "default" for the pydoc topics, otherwise a path to a text file."""
    if corpus in (None, "", "default"):
        return default_split()
    if not isinstance(corpus, (str, Path)):
        raise BadInput(f"corpus must be the path of a text file (or default), got {corpus!r}")
    return file_split(corpus)


def tokenize(tokenizer, text: str | FileText, max_tokens: int | None = None, task=None):
    """Token ids of `text` as a 1-D int64 tensor, cut to `max_tokens`.

    The text is tokenized in pieces of at most PIECE_CHARS (`text_pieces`), so that the tokenizer never
    sees a string larger than it was built for, and a file is read no further than the piece that
    completes `max_tokens`, whatever its line breaks; `task` (an engine.task.Task) is asked for
    cancellation between pieces. No special tokens are added.
    """
    import torch

    pieces = text.pieces(task) if isinstance(text, FileText) else text_pieces([text])
    ids: list[int] = []
    seen_text = False
    for piece in pieces:
        if max_tokens is not None and len(ids) >= max_tokens:
            break
        if task is not None:
            task.check_cancelled()
        seen_text = seen_text or bool(piece.strip())
        ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
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
