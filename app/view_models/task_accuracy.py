"""Task accuracy of the last Run (the engine's `task_accuracy` job, engine.measure.tasks), ready for the results.

One row per model, one column pair per task: accuracy with its standard error,
and recovery (the accuracy over the baseline's on the same examples), the
numbers llm-compressor and the LLM.int8() paper report.
"""

from __future__ import annotations

from typing import Any

from int8wb.app.view_models.results import UNKNOWN

CAPTION = (
    "Task accuracy (lm-evaluation-harness, zero-shot): accuracy ± its standard error; recovery is the accuracy "
    "over the baseline's on the same examples."
)


class TaskAccuracy:
    """The `task_accuracy` result as a small table: `header()`, then `rows()` of text cells."""

    def __init__(self, result: dict[str, Any]) -> None:
        self.tasks: list[dict[str, Any]] = list(result.get("tasks", []))
        self.scores: dict[tuple[str, str], dict[str, Any]] = {
            (row["method"], row["task"]): row for row in result.get("rows", [])
        }
        self.methods: list[str] = list(dict.fromkeys(row["method"] for row in result.get("rows", [])))

    def header(self) -> list[str]:
        cells = ["method"]
        for task in self.tasks:
            cells += [f"{task['task']} {task['metric']} ({task['examples']:,})", "recovery"]
        return cells

    def rows(self) -> list[list[str]]:
        table = []
        for method in self.methods:
            cells = [method]
            for task in self.tasks:
                score = self.scores.get((method, task["task"]))
                cells += [accuracy_text(score), recovery_text(score)]
            table.append(cells)
        return table


def accuracy_text(score: dict[str, Any] | None) -> str:
    if score is None:
        return UNKNOWN
    stderr = "" if score.get("stderr") is None else f" ± {score['stderr']:.1%}"
    return f"{score['accuracy']:.1%}{stderr}"


def recovery_text(score: dict[str, Any] | None) -> str:
    return UNKNOWN if score is None or score.get("recovery") is None else f"{score['recovery']:.1%}"
