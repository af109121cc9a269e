"""Task accuracy through lm-evaluation-harness: the baseline and each quantized model, on the same examples.

People who ship quantized models judge them by task accuracy (the LLM.int8()
paper: WinoGrande, HellaSwag, PIQA, LAMBADA, zero-shot) and by "recovery",
the quantized model's accuracy over the floating-point model's. Each model
here runs in process through lm-eval's own Hugging Face model class
(engine.measure.task_adapter), so no export is needed and the scores are those
`lm_eval --model hf` gives a checkpoint.

Tasks are named as lm-eval names them (its registry; the data come from the
Hugging Face hub, so the network must allow it) or given as a local task YAML
whose data are local JSON/JSONL files (lm-eval's `dataset_path: json` with
`dataset_kwargs: {data_files: ...}`), which runs offline. Each task is loaded
once and every model is scored on the same documents (the first `limit` of
them when a limit is given), with lm-eval's fixed seeds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from int8wb.engine.errors import BadInput, DependencyError
from int8wb.engine.vocabulary import SUGGESTED_TASKS

METRIC_PREFERENCE = ("acc", "acc_norm", "exact_match")  # the first a task reports is the one compared
LOCAL_TASK_HINT = (
    "to run offline, write a task YAML whose data are local JSON/JSONL files "
    "(dataset_path: json, dataset_kwargs: {data_files: {test: FILE.jsonl}}, test_split: test) and pass its path"
)
WHOLE_MODEL_ONLY = "task accuracy runs each model whole, many times: load the model in memory (--offload none)"
INSTALL_HINT = "task accuracy needs lm-evaluation-harness: pip install 'int8-workbench[eval]' (or pip install lm-eval)"


@dataclass(frozen=True)
class TaskSettings:
    tasks: tuple[str, ...]  # lm-eval task names and paths of task YAML files
    limit: int | None = None  # the first `limit` documents of each task; None: all of them
    batch_size: int = 8  # sequences per forward call

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TaskSettings:
        tasks = parse_task_list(params.get("tasks"))
        limit = params.get("limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise BadInput(f"limit must be a positive integer (documents per task), got {limit!r}")
        batch_size = params.get("batch_size", cls.batch_size)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise BadInput(f"batch_size must be a positive integer, got {batch_size!r}")
        return cls(tasks, limit, batch_size)


def parse_task_list(value: Any) -> tuple[str, ...]:
    """Task names and YAML paths from a comma-separated string or a list; a YAML path must name a file."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise BadInput(f"tasks must be task names or task YAML paths, e.g. {','.join(SUGGESTED_TASKS)}")
    names = tuple(v for v in value if v)
    if not names:
        raise BadInput(f"name at least one task, e.g. {','.join(SUGGESTED_TASKS)}, or a task YAML file")
    for name in names:
        if is_task_file(name) and not Path(name).is_file():
            raise BadInput(f"task file {name} does not exist")
    return names


def is_task_file(name: str) -> bool:
    return name.lower().endswith((".yaml", ".yml"))


def require_lm_eval() -> None:
    """DependencyError with the install command when the `eval` extra is missing."""
    try:
        import lm_eval  # noqa: F401
    except ImportError as exc:
        raise DependencyError(f"{INSTALL_HINT} ({exc})") from None


@dataclass
class LoadedTasks:
    """lm-eval Task objects by task name, each with its documents read, and the TaskManager that indexed them."""

    manager: Any
    tasks: dict[str, Any]


def load_tasks(names: tuple[str, ...]) -> LoadedTasks:
    """The tasks `names` name, loaded once for every model; a task that cannot be had is BadInput.

    lm-eval's registry is indexed only when a name needs it (about 15 s for its
    thousands of YAML files); a list of local YAML files skips it.
    """
    from lm_eval.tasks import TaskManager

    registry_names = [name for name in names if not is_task_file(name)]
    with quiet_lm_eval():
        manager = TaskManager(include_defaults=bool(registry_names))
    loaded: dict[str, Any] = {}
    for name in names:
        if not is_task_file(name) and name not in manager.all_tasks:
            raise BadInput(
                f"unknown task {name!r}: lm-eval's registry has no task, group or tag of that name "
                f"(the LLM.int8() paper's: {', '.join(SUGGESTED_TASKS)}); {LOCAL_TASK_HINT}"
            )
        try:
            with quiet_lm_eval():
                loaded.update(manager.load([str(Path(name).resolve()) if is_task_file(name) else name])["tasks"])
        except Exception as exc:  # anything the task's loader or its dataset raises: the task cannot be had
            raise BadInput(unavailable_task_message(name, exc)) from None
    return LoadedTasks(manager, loaded)


def unavailable_task_message(name: str, exc: Exception) -> str:
    """Why the task's documents could not be read, and what to do: the cause's first line, never its traceback."""
    cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if is_task_file(name):
        return f"task file {name} could not be loaded: {cause} (check its dataset_path and data_files)"
    return (
        f"the data of task {name!r} could not be had: {cause}. Its documents come from the Hugging Face hub, "
        f"which needs the network (or a dataset cache, with HF_DATASETS_OFFLINE=1); {LOCAL_TASK_HINT}"
    )


class quiet_lm_eval:
    """lm-eval's INFO and WARNING logging (per task and per model) off while a block runs; errors still show."""

    def __enter__(self) -> None:
        self.logger = logging.getLogger("lm_eval")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc_info) -> None:
        self.logger.setLevel(self.level)


def score(model, tokenizer, loaded: LoadedTasks, settings: TaskSettings, task) -> dict[str, dict[str, Any]]:
    """{task name: {"metric", "accuracy", "stderr", "examples"}} of one model on the `loaded` tasks."""
    from lm_eval import evaluator

    from int8wb.engine.measure.task_adapter import WorkbenchLM

    with quiet_lm_eval():
        lm = WorkbenchLM(model, tokenizer, settings.batch_size, task)
        output = evaluator.simple_evaluate(
            model=lm,
            tasks=list(loaded.tasks.values()),
            task_manager=loaded.manager,  # without it lm-eval indexes its whole registry again, for each model
            limit=settings.limit,
            log_samples=False,
        )
    scores = {}
    for name in loaded.tasks:
        measured = output["results"][name]
        metric = primary_metric(name, measured)
        scores[name] = {
            "metric": metric,
            "accuracy": float(measured[f"{metric},none"]),
            "stderr": stderr_of(measured.get(f"{metric}_stderr,none")),
            "examples": int(output["n-samples"][name]["effective"]),
        }
    return scores


def primary_metric(task_name: str, measured: dict[str, Any]) -> str:
    """The metric compared across models: the first of METRIC_PREFERENCE the task reports."""
    for metric in METRIC_PREFERENCE:
        if f"{metric},none" in measured:
            return metric
    reported = sorted(key.split(",")[0] for key in measured if key.endswith(",none") and "_stderr" not in key)
    raise BadInput(
        f"task {task_name!r} reports {', '.join(reported) or 'no metric'}: the workbench compares "
        f"{', '.join(METRIC_PREFERENCE)}; add one of them to its metric_list"
    )


def stderr_of(value: Any) -> float | None:
    """lm-eval writes "N/A" where it computed no standard error."""
    return float(value) if isinstance(value, (int, float)) else None


def run(params: dict[str, Any], task, loaded, quantized: dict[str, Any]) -> dict[str, Any]:
    """Task accuracy of the baseline and of every model in `quantized` (name -> QuantizedModel).

    Returns {"tasks": [{"task", "metric", "examples"}], "limit", "rows": [{"method", "task", "metric",
    "accuracy", "stderr", "examples", "recovery"}]}: recovery is the accuracy over the first row's on the
    same task (the baseline, or a re-opened export's own model), None where that is 0.
    """
    settings = TaskSettings.from_params(params)
    require_lm_eval()
    task.log(f"loading the tasks {', '.join(settings.tasks)}")
    tasks = load_tasks(settings.tasks)
    reopened = getattr(loaded, "quantized", None)
    first = (f"{reopened.method} (exported)", loaded.model) if reopened else ("baseline", loaded.model)
    models = [first] + [(name, variant.model) for name, variant in quantized.items()]
    rows: list[dict[str, Any]] = []
    reference: dict[str, float] = {}
    for i, (name, model) in enumerate(models):
        step = task.slice(i / len(models), (i + 1) / len(models))
        step.log(f"scoring {name} on {', '.join(tasks.tasks)}")
        for task_name, measured in score(model, loaded.tokenizer, tasks, settings, step).items():
            reference.setdefault(task_name, measured["accuracy"])
            base = reference[task_name]
            rows.append(
                {
                    "method": name,
                    "task": task_name,
                    **measured,
                    "recovery": measured["accuracy"] / base if base else None,
                }
            )
    described = {
        row["task"]: {"task": row["task"], "metric": row["metric"], "examples": row["examples"]} for row in rows
    }
    return {"tasks": list(described.values()), "limit": settings.limit, "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    """One block per task: each model's accuracy with its standard error, and its recovery against the first."""
    lines = []
    for described in result["tasks"]:
        lines += [
            f"task {described['task']}: {described['metric']} on {described['examples']:,} examples "
            f"(lm-evaluation-harness, zero-shot)",
            f"{'method':<22}{'accuracy':>10}{'± stderr':>10}{'recovery':>10}",
        ]
        for row in (r for r in result["rows"] if r["task"] == described["task"]):
            stderr = "" if row["stderr"] is None else f"{row['stderr']:.2%}"
            recovery = "—" if row["recovery"] is None else f"{row['recovery']:.1%}"
            lines.append(f"{row['method']:<22}{row['accuracy']:>10.2%}{stderr:>10}{recovery:>10}")
        lines.append("")
    lines.append("recovery: the accuracy over the first row's on the same examples")
    return "\n".join(lines)
