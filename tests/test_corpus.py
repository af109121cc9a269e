from __future__ import annotations

import pytest

from int8wb.engine.errors import BadInput
from int8wb.engine.model import corpus


def test_default_split_is_disjoint_and_deterministic():
    first, second = corpus.default_split(), corpus.default_split()
    assert first == second
    assert len(first.evaluation) > 4 * len(first.calibration) > 0
    from pydoc_data.topics import topics

    # Every topic goes to exactly one side (short topics can recur inside longer ones: skip those).
    for text in (t for t in topics.values() if len(t) > 2000):
        assert (text in first.calibration) != (text in first.evaluation)


def test_file_split_cuts_at_whitespace(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("alpha beta gamma delta epsilon zeta eta theta iota kappa")
    split = corpus.file_split(path)
    assert split.calibration.read() + split.evaluation.read() == path.read_text()
    assert split.evaluation.read()[0].isspace()


def test_windows_drop_the_short_tail_and_refuse_too_little():
    import torch

    ids = torch.arange(1030)
    assert corpus.windows(ids, 512, 2000).shape == (2, 512)
    with pytest.raises(BadInput, match="not enough tokens"):
        corpus.windows(ids, 512, 300)


TOKENIZER_TEXT_LIMIT = 1 << 16  # characters: what the tokenizer may be handed at once, for 128 tokens or 2 GB


class RecordingTokenizer:
    """The tests' byte-level tokenizer, noting the length of every text it is handed."""

    def __init__(self):
        from tests.support.tiny_models import byte_tokenizer

        self.tokenizer, self.lengths = byte_tokenizer(), []

    def __call__(self, text, **kwargs):
        self.lengths.append(len(text))
        return self.tokenizer(text, **kwargs)


def finishes_within(seconds: float, work):
    """`work()`'s result, or a test failure (not a hang) when it takes longer than `seconds`."""
    import threading

    outcome = {}

    def target():
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the test below
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_pieces_join_back_into_the_text_and_stay_small():
    import random

    rng = random.Random(0)
    words = ["alpha", "beta", " ", " ", "\n", "\n\n", "\n\n\n", "é", "x" * 5000, "\t"]
    text = "".join(rng.choice(words) for _ in range(20_000))
    for cuts in (1, 7, 1000):  # the same text arriving in chunks of different sizes
        bounds = sorted(rng.sample(range(1, len(text)), cuts))
        chunks = [text[a:b] for a, b in zip([0, *bounds], [*bounds, len(text)])]
        pieces = list(corpus.text_pieces(chunks))
        assert "".join(pieces) == text
        assert max(map(len, pieces)) <= corpus.PIECE_CHARS
    paragraphs = list(corpus.text_pieces(["one\n\ntwo\n\n\n\nthree"]))
    assert paragraphs == ["one\n\n", "two\n\n", "\n\n", "three"]


def test_a_file_without_blank_lines_is_read_only_as_far_as_the_tokens_asked_for(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("One sentence on its own line, and no blank line anywhere.\n" * 60_000)  # 3.5 MB
    split = corpus.file_split(path)
    tokenizer = RecordingTokenizer()
    ids = corpus.tokenize(tokenizer, split.evaluation, max_tokens=128)
    assert len(ids) == 128
    assert max(tokenizer.lengths) <= TOKENIZER_TEXT_LIMIT
    assert sum(tokenizer.lengths) <= 2 * TOKENIZER_TEXT_LIMIT  # not the 2.8 MB of the evaluation part
    assert split.calibration.read() + split.evaluation.read() == path.read_text()


def test_a_long_run_without_whitespace_is_cut_near_the_mark_and_read_no_further_than_needed(tmp_path):
    path = tmp_path / "run.txt"
    with open(path, "wb") as handle:
        handle.write(b"a few words, then none")
        handle.truncate(2 << 30)  # sparse: 2 GB of NUL bytes, no whitespace, nothing on disk
    split = finishes_within(10, lambda: corpus.file_split(path))
    mark = int((2 << 30) * corpus.USER_CALIBRATION_FRACTION)
    assert split.calibration.end == split.evaluation.start == mark
    tokenizer = RecordingTokenizer()
    ids = finishes_within(10, lambda: corpus.tokenize(tokenizer, split.evaluation, max_tokens=128))
    assert len(ids) == 128 and max(tokenizer.lengths) <= TOKENIZER_TEXT_LIMIT


def test_reading_a_corpus_stops_when_the_task_is_cancelled(tmp_path):
    from int8wb.engine.errors import Cancelled
    from int8wb.engine.task import Task

    path = tmp_path / "text.txt"
    path.write_text("some words " * 1000)
    task = Task()
    task.cancel()
    with pytest.raises(Cancelled):
        corpus.tokenize(RecordingTokenizer(), corpus.file_split(path).evaluation, max_tokens=128, task=task)


def test_a_character_across_the_first_chunk_boundary_is_utf8(tmp_path):
    path = tmp_path / "accents.txt"
    path.write_bytes(b"a" * (corpus.READ_CHUNK_BYTES - 1) + "é tail".encode())  # é straddles the first chunk
    split = corpus.file_split(path)
    assert (split.calibration.read() + split.evaluation.read()).endswith("é tail")
