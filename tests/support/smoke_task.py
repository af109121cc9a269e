"""A SMOKE TASK for lm-evaluation-harness, built from the workbench's default evaluation text: offline, in seconds.

It is not a benchmark: it checks that task accuracy runs end to end without
the network (a local task YAML over a local JSONL file, lm-eval's
`dataset_path: json`) and gives numbers that move when a model breaks. Each
example is the first words of a sentence of the evaluation text (Python's
pydoc topics); the four choices are how that sentence goes on and how three
other sentences go on at the same word. A model that reads English and Python
picks the right one well above chance (25%).

    python -m tests.support.smoke_task DIR [COUNT]   # writes DIR/smoke_mc.yaml and DIR/smoke_mc.jsonl
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

TASK_NAME = "smoke_mc"
CONTEXT_WORDS = 8  # the sentence's start, given
CHOICE_WORDS = 4  # then the words to pick
CHOICES = 4

TASK_YAML = """\
# A smoke task (tests/support/smoke_task.py): a check that task accuracy runs offline, not a benchmark.
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def sentences(text: str) -> list[list[str]]:
    """Prose sentences of `text` as word lists: long enough for a context and a choice, mostly letters."""
    found = []
    for sentence in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
        words = sentence.split()
        prose = sum(word.isalpha() for word in words) >= 0.7 * len(words)
        if CONTEXT_WORDS + CHOICE_WORDS + 2 <= len(words) <= 40 and prose:
            found.append(words)
    return found


def examples(text: str, count: int) -> list[dict]:
    """`count` examples spread evenly over the sentences; the right choice moves through the four places."""
    pool = sentences(text)
    if len(pool) < count + CHOICES:
        raise ValueError(f"the text has {len(pool)} usable sentences, fewer than {count + CHOICES}")
    stride = len(pool) // count
    built = []
    for i in range(count):
        own = pool[i * stride]
        others = [pool[(i * stride + stride // 2 + k * 7) % len(pool)] for k in range(CHOICES - 1)]
        span = slice(CONTEXT_WORDS, CONTEXT_WORDS + CHOICE_WORDS)
        wrong = [" ".join(words[span]) for words in others]
        label = i % CHOICES
        choices = wrong[:label] + [" ".join(own[span])] + wrong[label:]  # lm-eval puts a space before each
        built.append({"context": " ".join(own[:CONTEXT_WORDS]), "choices": choices, "label": label})
    return built


def write(directory: Path, count: int = 40, text: str | None = None) -> Path:
    """The task YAML and its JSONL in `directory` (default text: the evaluation split); returns the YAML's path."""
    from int8wb.engine.model.corpus import load_split

    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{TASK_NAME}.jsonl"
    rows = examples(text if text is not None else load_split(None).evaluation, count)
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    task_file = directory / f"{TASK_NAME}.yaml"
    task_file.write_text(TASK_YAML.format(name=TASK_NAME, data=json.dumps(str(data.resolve()))), encoding="utf-8")
    return task_file


if __name__ == "__main__":
    print(write(Path(sys.argv[1]), *(int(a) for a in sys.argv[2:3])))
