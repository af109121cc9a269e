"""Task accuracy through lm-evaluation-harness (engine.measure.tasks), offline, on a SMOKE TASK.

The smoke task (tests/support/smoke_task.py) is built from the default evaluation text and read from a local JSONL file
through a local task YAML: it checks that task accuracy runs end to end without the network; it is no benchmark.
Fast tests use a tiny random Llama; the slow ones the embedded default model, bitsandbytes and lm-eval's own
command line.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from int8wb.engine.cli import EXIT_USER_ERROR, main
from int8wb.engine.errors import BadInput, Cancelled, DependencyError
from int8wb.engine.measure import tasks
from int8wb.engine.process.session import Session
from int8wb.engine.task import Task
from tests.support import smoke_task
from tests.support.net_tools import no_network
from tests.support.tiny_models import save_tiny_llama

pytest.importorskip("lm_eval")

TWO_METHODS = ["absmax-tensor", "llm-int8-dynamic"]


@pytest.fixture(scope="module")
def tiny_session(tmp_path_factory) -> Session:
    directory = save_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", intermediate=128)
    session = Session()
    session.load_model({"model": str(directory), "device": "cpu"}, Task())
    session.quantize({"methods": TWO_METHODS}, Task())
    return session


@pytest.fixture(scope="module")
def smoke_yaml(tmp_path_factory) -> Path:
    return smoke_task.write(tmp_path_factory.mktemp("smoke"), count=24)


@pytest.fixture(scope="module")
def smoke_result(tiny_session, smoke_yaml) -> dict:
    """The smoke task scored for the baseline and two methods with the network shut: any connection fails it."""
    with no_network():
        return tiny_session.task_accuracy({"tasks": str(smoke_yaml), "methods": TWO_METHODS}, Task())


def chosen_by_hand(model, tokenizer, rows: list[dict]) -> float:
    """Accuracy from the model's own log-likelihood of each choice after its context (the byte tokenizer
    splits exactly at the boundary): what lm-eval's `acc` must equal for the model it was handed."""
    right = 0
    with torch.no_grad():
        for row in rows:
            context = tokenizer(row["context"], add_special_tokens=False)["input_ids"]
            scores = []
            for choice in row["choices"]:
                continuation = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([context + continuation])
                logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
                targets = ids[0, len(context) :]
                scores.append(float(logprobs[len(context) - 1 :].gather(1, targets[:, None]).sum()))
            right += max(range(len(scores)), key=scores.__getitem__) == row["label"]
    return right / len(rows)


def test_smoke_task_runs_offline_for_the_baseline_and_two_methods(tiny_session, smoke_yaml, smoke_result):
    result = smoke_result
    rows = {row["method"]: row for row in result["rows"]}
    assert list(rows) == ["baseline", *TWO_METHODS]
    assert result["tasks"] == [{"task": smoke_task.TASK_NAME, "metric": "acc", "examples": 24}]
    documents = [json.loads(line) for line in smoke_yaml.with_suffix(".jsonl").read_text().splitlines()]
    for name, row in rows.items():
        model = tiny_session.loaded.model if name == "baseline" else tiny_session.quantized[name].model
        assert row["accuracy"] == pytest.approx(chosen_by_hand(model, tiny_session.loaded.tokenizer, documents))
        n, p = row["examples"], row["accuracy"]
        assert row["stderr"] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))
        assert row["recovery"] == pytest.approx(p / rows["baseline"]["accuracy"])
    assert rows["baseline"]["recovery"] == 1.0


def test_the_limit_scores_the_same_first_examples_for_every_model(tiny_session, smoke_yaml):
    result = tiny_session.task_accuracy({"tasks": [str(smoke_yaml)], "limit": 5}, Task())
    assert {row["examples"] for row in result["rows"]} == {5}
    documents = [json.loads(line) for line in smoke_yaml.with_suffix(".jsonl").read_text().splitlines()][:5]
    expected = chosen_by_hand(tiny_session.quantized["absmax-tensor"].model, tiny_session.loaded.tokenizer, documents)
    (absmax,) = [row for row in result["rows"] if row["method"] == "absmax-tensor"]
    assert absmax["accuracy"] == pytest.approx(expected)


def test_a_cancelled_job_stops_before_its_next_forward_call(tiny_session, smoke_yaml):
    task = Task()
    task.cancel()
    with pytest.raises(Cancelled):
        tiny_session.task_accuracy({"tasks": str(smoke_yaml)}, task)


def test_the_table_shows_accuracy_stderr_and_recovery_side_by_side(smoke_result):
    table = tasks.format_table(smoke_result)
    assert len(smoke_result["rows"]) == 3
    for row in smoke_result["rows"]:
        line = next(line for line in table.splitlines() if line.startswith(row["method"] + " "))
        assert f"{row['accuracy']:.2%}" in line and f"{row['stderr']:.2%}" in line and f"{row['recovery']:.1%}" in line


@pytest.mark.parametrize(
    "params, message",
    [
        ({"tasks": ""}, "name at least one task"),
        ({"tasks": 3}, "task names or task YAML paths"),
        ({"tasks": "/no/such/task.yaml"}, "task file /no/such/task.yaml does not exist"),
        ({"tasks": "piqa", "limit": 0}, "limit must be a positive integer"),
    ],
)
def test_bad_task_params_are_bad_input(params, message):
    with pytest.raises(BadInput, match=message):
        tasks.TaskSettings.from_params(params)


def test_a_task_file_whose_data_are_missing_names_the_file(tmp_path, smoke_yaml):
    broken = tmp_path / "broken.yaml"
    broken.write_text(smoke_yaml.read_text().replace(str(smoke_yaml.with_suffix(".jsonl")), "/no/such/data.jsonl"))
    with pytest.raises(BadInput, match=r"task file .*broken.yaml could not be loaded: .*data_files"):
        tasks.load_tasks((str(broken),))


def test_without_lm_eval_the_message_says_what_to_install(monkeypatch, smoke_yaml):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(DependencyError, match=r"pip install 'int8-workbench\[eval\]'"):
        tasks.run({"tasks": str(smoke_yaml)}, Task(), None, {})


def test_the_cli_refuses_a_missing_task_file_before_loading_the_model(capsys):
    code = main(["eval", "--model", "/no/such/model", "--tasks", "/no/such/task.yaml", "--quiet"])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "Traceback" not in err
    assert "task file /no/such/task.yaml does not exist" in err


@pytest.mark.slow
def test_a_hub_task_offline_names_itself_and_the_local_file_way():
    """lm-eval's registry task with HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set: a BadInput, not a hub traceback."""
    code = (
        "from int8wb.engine.measure import tasks\n"
        "for name in ('piqa', 'no_such_task_anywhere'):\n"
        "    try:\n"
        "        tasks.load_tasks((name,))\n"
        "    except tasks.BadInput as exc:\n"
        "        print('BadInput:', exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    piqa, unknown = [line for line in done.stdout.splitlines() if line.startswith("BadInput:")]
    assert "Traceback" not in done.stdout + done.stderr
    assert "task 'piqa' could not be had" in piqa and "dataset_path: json" in piqa and "pass its path" in piqa
    assert "unknown task 'no_such_task_anywhere'" in unknown and "winogrande" in unknown


def lm_eval_command_line(export: Path, task_file: Path, out: Path) -> dict:
    """lm-eval's own command line (`lm_eval --model hf --model_args pretrained=EXPORT`) on an export, offline:
    the task's results entry from the JSON it writes."""
    command = [str(Path(sys.executable).with_name("lm_eval")), "--model", "hf", "--model_args"]
    command += [f"pretrained={export}", "--tasks", str(task_file), "--device", "cpu", "--batch_size", "8"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([*command, "--output_path", str(out)], capture_output=True, text=True, env=env, timeout=540)
    assert done.returncode == 0, done.stderr[-2000:]
    (written,) = out.rglob("results_*.json")
    return json.loads(written.read_text())["results"][smoke_task.TASK_NAME]


@pytest.mark.slow
def test_lm_eval_on_the_bitsandbytes_export_agrees_with_the_in_process_adapter(tmp_path):
    """The default model: the smoke task in process for the baseline and two methods, then lm-eval's command line
    on the bitsandbytes export of llm-int8-dynamic, which must score within one standard error of the same method."""
    session = Session()
    session.load_model({"device": "cpu"}, Task())
    session.quantize({"methods": TWO_METHODS}, Task())
    task_file = smoke_task.write(tmp_path / "smoke", count=60)
    result = session.task_accuracy({"tasks": str(task_file)}, Task())
    rows = {row["method"]: row for row in result["rows"]}
    print("\n" + tasks.format_table(result))
    assert list(rows) == ["baseline", *TWO_METHODS] and {row["examples"] for row in rows.values()} == {60}
    baseline = rows["baseline"]
    assert baseline["accuracy"] > 0.25 + 2 * baseline["stderr"]  # the model reads the text: well above chance
    export = tmp_path / "smollm2-llm-int8-dynamic"
    session.export({"method": "llm-int8-dynamic", "out": str(export)}, Task())
    theirs = lm_eval_command_line(export, task_file, tmp_path / "lm-eval")
    ours = rows["llm-int8-dynamic"]
    print(f"lm_eval on the bitsandbytes export: acc {theirs['acc,none']:.4f} ± {theirs['acc_stderr,none']:.4f}")
    assert abs(theirs["acc,none"] - ours["accuracy"]) <= ours["stderr"]
