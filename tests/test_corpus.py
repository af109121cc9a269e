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
